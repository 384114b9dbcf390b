"""The choices ``kcmail run`` hands the operator, and the label that splits MailConfigs into shards."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

from kcmail.defaults import KEYCLOAK_CONCURRENCY, PROBE_CONCURRENCY, WORKERS

# A MailConfig labelled with it belongs to the shard of that name (`kcmail run --shard NAME`).
SHARD_LABEL = "kcmail.io/shard"
# RFC 1123 label, as Kubernetes requires of a namespace's name.
NAMESPACE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# RFC 1123 subdomain, as Kubernetes requires of a Lease's or a Secret's name.
OBJECT_NAME = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def namespaced_name(value: str) -> tuple[str, str]:
    """An object named NAMESPACE/NAME on the command line (an argparse type: kcmail run, kcmail bridge)."""
    namespace, _, name = value.partition("/")
    if not NAMESPACE_NAME.fullmatch(namespace) or not OBJECT_NAME.fullmatch(name):
        raise argparse.ArgumentTypeError(f"{value!r} is not NAMESPACE/NAME")
    return namespace, name


@dataclass(frozen=True)
class BridgeOptions:
    """Where the bridge answers Keycloak, and the registry Secret it reads."""

    url: str
    namespace: str
    secret: str


@dataclass(frozen=True)
class OperatorOptions:
    namespaces: tuple[str, ...] = ()
    ca_bundle: str | None = None
    liveness: str | None = None
    # SMTP connections open at once across all MailConfigs' probes.
    probe_concurrency: int = PROBE_CONCURRENCY
    # Admin calls in flight at a time through each Connection's Keycloak client.
    keycloak_concurrency: int = KEYCLOAK_CONCURRENCY
    # False: MailConfigs may not use namespaced KeycloakConnections, so tenants cannot pick a Keycloak
    # endpoint (and with it a host kcmail connects to and quotes in status).
    namespaced_connections: bool = True
    # Passes running at once: the work queue's workers.
    workers: int = WORKERS
    # The label selector of the MailConfig watch, asked of the API server: "" watches them all.
    mailconfig_selector: str = ""
    # MailConfigs with googleServiceAccount send through this token bridge; None: they fail, needing one.
    bridge: BridgeOptions | None = None


def shard_selector(shard: str | None, *, exclude_sharded: bool = False) -> str:
    """The MailConfig watch's label selector: one shard's, or those of no shard, or all (pure)."""
    if shard is not None:
        return f"{SHARD_LABEL}={shard}"
    return f"!{SHARD_LABEL}" if exclude_sharded else ""
