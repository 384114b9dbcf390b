"""Where ``kcmail audit`` and ``kcmail export`` find Keycloak and how they log in: a Connection read from
the cluster (``--connection``, through ``$KUBECONFIG``), or a URL with admin credentials read from files
(``--url``). Credentials are never taken on the command line, where ``ps`` and shell history would see them.
"""

from __future__ import annotations

import argparse
import ssl
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kcmail.spec import ConnectionKind, ConnectionRef

if TYPE_CHECKING:
    from kcmail.keycloak import AdminCredentials, KeycloakClient

# Every kcmail command registers its options at start-up: the Keycloak and Kubernetes clients are
# imported by the functions that use them, so that `kcmail probe` and `kcmail --help` start without them.


class TargetError(Exception):
    """The options do not say how to reach Keycloak, or what they name cannot be read."""


@dataclass(frozen=True)
class Target:
    url: str
    admin_realm: str
    credentials: AdminCredentials = field(repr=False)
    verify: ssl.SSLContext | bool = True
    # The Connection the options named, if any: the natural connectionRef of exported MailConfigs.
    connection: ConnectionRef | None = None

    def client(self) -> KeycloakClient:
        from kcmail.keycloak import KeycloakClient

        return KeycloakClient(self.url, self.admin_realm, self.credentials, verify=self.verify)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "Keycloak", "Give --connection (read from the cluster) or --url with one pair of credentials.")
    group.add_argument("--connection", metavar="[KIND/]NAME", type=connection_ref,
                       help="read Keycloak's URL, admin credentials and CA from this ClusterKeycloakConnection "
                            "(or KeycloakConnection/NAME in --namespace) through $KUBECONFIG")
    group.add_argument("--url", help="Keycloak's base URL, e.g. https://keycloak.example:8443")
    group.add_argument("--admin-realm", default="master", help="realm the admin account logs in to (default master)")
    group.add_argument("--username", help="admin user name (with --password-file)")
    group.add_argument("--password-file", type=Path, metavar="PATH",
                       help="file holding the admin password; - reads stdin")
    group.add_argument("--client-id", help="service-account client ID (with --client-secret-file)")
    group.add_argument("--client-secret-file", type=Path, metavar="PATH",
                       help="file holding the service account's client secret; - reads stdin")
    group.add_argument("--ca-bundle", type=Path, metavar="FILE",
                       help="PEM file of extra CAs to trust for Keycloak (and, with --probe, token endpoints and "
                            "SMTP servers)")


def connection_ref(text: str) -> ConnectionRef:
    """``NAME`` (a ClusterKeycloakConnection) or ``KIND/NAME``."""
    kind, _, name = text.rpartition("/")
    try:
        parsed = ConnectionKind(kind) if kind else ConnectionKind.CLUSTER
    except ValueError:
        choices = " or ".join(k.value for k in ConnectionKind)
        raise argparse.ArgumentTypeError(f"{kind!r} is not {choices}") from None
    if not name:
        raise argparse.ArgumentTypeError("give the Connection's name, e.g. main or KeycloakConnection/kc")
    return ConnectionRef(kind=parsed, name=name)


def _read_secret(path: Path, flag: str) -> str:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise TargetError(f"cannot read {flag} {path}: {getattr(error, 'strerror', None) or type(error).__name__}"
                          ) from None
    # Editors and `echo` end files with a newline that is not part of the secret.
    value = text.rstrip("\r\n")
    if not value:
        raise TargetError(f"{flag} {path} is empty")
    return value


def trust(ca_bundle: Path | None, connection_ca_pem: str = "") -> ssl.SSLContext:
    """The system CAs, plus ``--ca-bundle``, plus a Connection's own CA: what the operator trusts."""
    from kcmail.connections import tls_context

    try:
        return tls_context(str(ca_bundle) if ca_bundle else None, connection_ca_pem)
    except (OSError, ssl.SSLError) as error:
        raise TargetError(f"cannot use --ca-bundle {ca_bundle}: {getattr(error, 'strerror', None) or error}"
                          ) from None


def from_url(args: argparse.Namespace) -> Target:
    from kcmail.keycloak import AdminCredentials

    if args.username and args.password_file:
        credentials = AdminCredentials(username=args.username, password=_read_secret(args.password_file,
                                                                                      "--password-file"))
    elif args.client_id and args.client_secret_file:
        credentials = AdminCredentials(client_id=args.client_id,
                                       client_secret=_read_secret(args.client_secret_file, "--client-secret-file"))
    else:
        raise TargetError("with --url give --username and --password-file, or --client-id and --client-secret-file")
    return Target(url=args.url, admin_realm=args.admin_realm, credentials=credentials, verify=trust(args.ca_bundle))


async def from_connection(ref: ConnectionRef, namespace: str | None, ca_bundle: Path | None) -> Target:
    import aiohttp
    import kopf

    from kcmail.apisession import logged_in_kube
    from kcmail.connections import ConnectionFailure, resolve
    from kcmail.kube import KubeError

    if ref.kind is ConnectionKind.NAMESPACED and not namespace:
        raise TargetError(f"{ref.kind.value} {ref.name} is namespaced: give its --namespace")
    try:
        async with logged_in_kube() as kube:
            resolved = await resolve(kube, ref.kind, ref.name, namespace or "")
    except kopf.LoginError as error:
        raise TargetError(f"no cluster to read {ref.kind.value} {ref.name} from: {error}") from None
    except ConnectionFailure as error:
        raise TargetError(f"{error.failure.reason.value}: {error.failure.message}") from None
    except KubeError as error:
        raise TargetError(f"the cluster refused to show {ref.kind.value} {ref.name} or its Secrets: "
                          f"{error}") from None
    except (aiohttp.ClientError, OSError) as error:
        raise TargetError(f"cannot reach the cluster: {error}") from None
    verify = False if resolved.insecure_skip_verify else trust(ca_bundle, resolved.ca_pem)
    return Target(url=resolved.url, admin_realm=resolved.admin_realm, credentials=resolved.credentials,
                  verify=verify, connection=ref)


async def target(args: argparse.Namespace) -> Target:
    """The Keycloak the options name; :class:`TargetError` says what is missing or wrong."""
    if args.connection and args.url:
        raise TargetError("give --connection or --url, not both")
    if args.connection:
        return await from_connection(args.connection, args.namespace, args.ca_bundle)
    if args.url:
        return from_url(args)
    raise TargetError("say which Keycloak: --connection NAME (a ClusterKeycloakConnection in the cluster of "
                      "$KUBECONFIG) or --url URL with admin credentials")
