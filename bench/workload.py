"""The objects the benchmarks create: realms, namespaces, Secrets and MailConfigs, named by index."""

from __future__ import annotations

import secrets
from typing import Any

from bench.cluster import LABEL
from kcmail.devenv import operator_env
from kcmail.devenv.environment import Environment
from kcmail.smtp_settings import desired_smtp_server, parse_version
from kcmail.spec import Credentials, MailConfigSpec

Object = dict[str, Any]


def realm(index: int) -> str:
    return f"bench-{index:04d}"


def scale_namespace(index: int, per_namespace: int) -> str:
    return f"bench-scale-{index // per_namespace:02d}"


def namespace(name: str) -> Object:
    return labelled(operator_env.namespace(name), "namespace")


def labelled(obj: Object, phase: str) -> Object:
    obj["metadata"].setdefault("labels", {})[LABEL] = phase
    return obj


def tenant(env: Environment, namespace: str, name: str, realm_name: str, phase: str, *, interval: str,
           secret: Object | None = None, **spec: Any) -> list[Object]:
    """A Secret with the issuer's client and a MailConfig for ``realm_name`` that uses it (``spec``: more
    top-level fields)."""
    secret_name = f"{name}-oauth"
    return [labelled(secret or operator_env.issuer_secret(env, namespace, secret_name), phase),
            labelled(operator_env.xoauth2_mailconfig(env, namespace, name, realm_name, secret_name=secret_name,
                                                     interval=interval, **spec), phase)]


def unrelated_secret(namespace: str, index: int) -> Object:
    """A Secret no MailConfig refers to, the size of a small TLS or API-key Secret."""
    return labelled(operator_env.secret(namespace, f"unrelated-{index:05d}", {"token": secrets.token_urlsafe(96)}),
                    "unrelated")


def desired(env: Environment, mailconfig: Object) -> dict[str, str]:
    """The smtpServer map the operator writes for ``mailconfig``: the floor writes the very same bytes."""
    credentials = Credentials(secret_version="", client_id=env.issuer_client_id,
                              client_secret=env.issuer_client_secret)
    return desired_smtp_server(MailConfigSpec.parse(mailconfig["spec"]), credentials,
                               parse_version(env.keycloak_version))
