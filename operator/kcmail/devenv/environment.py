"""One definition of the local environment, shared by ``kcmail dev``, the pytest fixtures and the demo.

``up`` builds or reuses the components, starts every server on loopback, seeds Keycloak and writes an
env file; ``Environment.load`` reads that file back, so a second shell, a test session or the demo can
use an environment that is already running. ``up(node=True)`` adds a one-node cluster (node.py) and then
serves everything on the node's host-only bridge address instead, because pods cannot reach loopback.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shlex
import shutil
import sys
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from kcmail.devenv import components, google_oauth, image, node, postfix_server, versions
from kcmail.devenv.certs import CertificateAuthority, serving_names
from kcmail.devenv.keycloak_server import MAILBOX_CLAIM, Seeded, seed, start_keycloak
from kcmail.devenv.kube import start_control_plane
from kcmail.devenv.processes import ProcessRegistry, free_port, port_open, wait_until
from kcmail.devenv.smtp_server import ListenerConfig, SmtpServerConfig

ENV_FILE = "dev.env"
_PREFIX = "KCMAIL_DEV_"

# Which mailboxes each issuer client may send as: what an Exchange Online mailbox permission grants.
SENDER_MAILBOXES = {
    "smtp-app": ("no-reply@acme.example", "no-reply@globex.example"),
    "other-app": ("other@acme.example",),
    "rotation-app": ("no-reply@acme.example",),
}
TARGET_REALMS = ("acme", "globex")
REFUSED_DOMAIN = "refused.test"


class AlreadyRunning(RuntimeError):
    """``up`` found servers of a previous ``up`` in the same directory still running."""


def default_state_dir() -> Path:
    """``$KCMAIL_DEV_DIR``, else ``$XDG_STATE_HOME/kcmail/dev``, else ``~/.local/state/kcmail/dev``."""
    explicit = os.environ.get("KCMAIL_DEV_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "kcmail" / "dev"


@dataclass(frozen=True)
class MailServer:
    """One of the environment's SMTP servers, as a client and a test see it.

    ``aiosmtpd`` is the project's own server, which reads each token itself and records the OAuth2 client
    it came from; ``postfix`` is Postfix with Dovecot's oauth2 passdb, which knows only the mailbox that
    Dovecot logged in (``records_client`` False).
    """

    name: str
    host: str
    starttls_port: int
    tls_port: int
    spool: Path
    records_client: bool


MAIL_SERVERS = ("aiosmtpd", "postfix")


@dataclass(frozen=True)
class Environment:
    """Everything a client needs to use the running environment. Values are plain strings or paths."""

    state_dir: Path
    ca_file: Path
    kubeconfig: Path
    kube_api_url: str
    kubectl: Path
    kubernetes_version: str
    keycloak_url: str
    keycloak_version: str
    keycloak_admin_user: str
    keycloak_admin_password: str = field(repr=False)
    keycloak_admin_email: str
    issuer_realm: str
    issuer_token_url: str
    issuer_jwks_url: str
    issuer: str
    issuer_client_id: str
    issuer_client_secret: str = field(repr=False)
    issuer_other_client_id: str
    issuer_other_client_secret: str = field(repr=False)
    issuer_scope: str
    target_realms: str
    smtp_host: str
    smtp_starttls_port: int
    smtp_tls_port: int
    smtp_spool: Path
    smtp_basic_user: str
    smtp_basic_password: str = field(repr=False)
    # Newer fields have defaults, so that an env file written before they existed still loads. Only the
    # rotation tests use this client; they regenerate its secret, so none is kept here.
    issuer_rotation_client_id: str = ""
    # The helm binary of the components; empty (``Path()``) in an env file written before it existed.
    helm: Path = Path()
    # Keycloak's management interface (/health, /metrics); empty in an env file written before it existed.
    keycloak_management_url: str = ""
    # Postfix with Dovecot's oauth2 passdb (``postfix_server``); 0 and empty in an older env file. The
    # short-line port keeps Postfix's default line_length_limit, which cuts Keycloak's AUTH line.
    postfix_starttls_port: int = 0
    postfix_tls_port: int = 0
    postfix_short_line_port: int = 0
    postfix_spool: Path = Path()
    # The one-node cluster (``up(node=True)``): its name and the bridge address every server binds; empty
    # when the environment has no node.
    node_name: str = ""
    node_address: str = ""
    # The stand-in for Google's token endpoint and tokeninfo (google_oauth.py), and the service-account key
    # files made for it (``google/keys.json``: delegated, disabled, undelegated; the Workspace's mailboxes).
    google_token_url: str = ""
    google_tokeninfo_url: str = ""
    google_keys: Path = Path()

    @property
    def realms(self) -> tuple[str, ...]:
        return tuple(self.target_realms.split(","))

    def mail_server(self, name: str) -> MailServer:
        """``aiosmtpd`` or ``postfix`` (see ``MAIL_SERVERS``)."""
        if name == "aiosmtpd":
            return MailServer(name, self.smtp_host, self.smtp_starttls_port, self.smtp_tls_port, self.smtp_spool,
                              records_client=True)
        if name == "postfix" and self.postfix_starttls_port:
            return MailServer(name, self.smtp_host, self.postfix_starttls_port, self.postfix_tls_port,
                              self.postfix_spool, records_client=False)
        raise LookupError(f"no SMTP server {name!r} in this environment (state {self.state_dir})")

    @property
    def keycloak_log(self) -> Path:
        """Keycloak's console log, its HTTP access log included (``ACCESS_LOG_PATTERN``)."""
        return self.state_dir / "logs" / "keycloak.log"

    @property
    def kube_cache(self) -> Path:
        """kubectl's discovery cache. Without ``--cache-dir`` kubectl writes it under ``$HOME/.kube``, which
        put a cache into the repository when a run had the checkout as its home."""
        return self.state_dir / "kube-cache"

    def env_lines(self) -> list[str]:
        lines = [f"export KUBECONFIG={shlex.quote(str(self.kubeconfig))}"]
        for key, value in asdict(self).items():
            lines.append(f"export {_PREFIX}{key.upper()}={shlex.quote(str(value))}")
        return lines

    def write(self) -> Path:
        path = self.state_dir / ENV_FILE
        path.write_text("# Written by `kcmail dev up`; holds dev-only credentials.\n"
                        + "\n".join(self.env_lines()) + "\n")
        path.chmod(0o600)
        return path

    @classmethod
    def load(cls, path: Path) -> Environment:
        """Read an env file written by :meth:`write`."""
        values: dict[str, str] = {}
        for line in path.read_text().splitlines():
            if not line.startswith(f"export {_PREFIX}"):
                continue
            key, _, raw = line.removeprefix(f"export {_PREFIX}").partition("=")
            values[key.lower()] = shlex.split(raw)[0] if raw else ""
        kwargs: dict[str, object] = {}
        for spec in fields(cls):
            if spec.name not in values and spec.default is not MISSING:
                continue
            raw_value = values[spec.name]
            if spec.type in ("Path", Path):
                kwargs[spec.name] = Path(raw_value)
            elif spec.type in ("int", int):
                kwargs[spec.name] = int(raw_value)
            else:
                kwargs[spec.name] = raw_value
        return cls(**kwargs)  # type: ignore[arg-type]


def up(state_dir: Path | None = None, *, keycloak_version: str = versions.KEYCLOAK, with_node: bool = False,
       progress: components.Progress = components.print_progress) -> Environment:
    """Start every server of the environment and return its description (also written to ``dev.env``).

    ``with_node`` adds the one-node cluster, and every server then binds its host-only bridge address.
    """
    state_dir = (state_dir or default_state_dir()).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    registry = ProcessRegistry(state_dir)
    running = [p.name for p in registry.load() if p.alive()]
    if running:
        raise AlreadyRunning(f"{', '.join(running)} already running from {state_dir}; "
                             "run `kcmail dev down` first")
    if with_node:
        node.check_machine()
    _stop(state_dir, registry)
    _clear_previous_run(state_dir)
    parts = components.ensure_all(keycloak_version, progress)
    try:
        if with_node:
            node.ensure_bridge()
        return _start(state_dir, registry, parts, keycloak_version, progress, with_node=with_node)
    except BaseException:
        _stop(state_dir, registry)
        raise


def _start(state_dir: Path, registry: ProcessRegistry, parts: components.Components, keycloak_version: str,
           progress: components.Progress, *, with_node: bool) -> Environment:
    host = node.NODE_ADDRESS if with_node else "127.0.0.1"
    ca = CertificateAuthority(state_dir / "pki")
    # Keycloak is by far the slowest to start: launch it first and wait for it last.
    progress(f"starting Keycloak {keycloak_version}")
    keycloak = start_keycloak(registry, parts.keycloak_home, parts.keycloak_java_home, ca, state_dir,
                              keycloak_version, host=host)
    progress(f"starting etcd and kube-apiserver v{versions.KUBERNETES}")
    plane, admin_cert = start_control_plane(registry, kube_apiserver=parts.kube_apiserver, etcd=parts.etcd,
                                            ca=ca, state_dir=state_dir, host=host, for_node=with_node)
    plane.wait_ready(admin_cert)
    progress("waiting for Keycloak to be ready (first start: about a minute)")
    keycloak.wait_ready(timeout=300)
    # Dovecot logs each app in as the mailbox its tokens name: the first one it may send as.
    seeded = seed(keycloak, ca.cert_path, target_realms=TARGET_REALMS,
                  mailboxes={client: mailboxes[0] for client, mailboxes in SENDER_MAILBOXES.items()})
    progress("starting the Google token endpoint stand-in")
    google = _start_google(state_dir, registry, ca, host)
    progress("starting the XOAUTH2 SMTP server")
    smtp = _smtp_config(state_dir, ca, seeded, host, google.tokeninfo_url)
    config_path = state_dir / "smtp" / "config.json"
    config_path.write_text(smtp.to_json())
    config_path.chmod(0o600)
    server = registry.start("smtp", [sys.executable, "-m", "kcmail.devenv.smtp_server",
                                     "--config", str(config_path)])
    for listener in smtp.listeners:
        wait_until(lambda port=listener.port: port_open(port, host), server=server, what=f"port {listener.port}",
                   timeout=30)
    starttls_port, tls_port = (listener.port for listener in smtp.listeners)
    progress("starting Postfix with Dovecot")
    postfix = _postfix_config(state_dir, ca, seeded, host, google.tokeninfo_url)
    postfix_server.start(registry, postfix)
    (basic_user, basic_password), = smtp.basic_users.items()
    env = Environment(
        state_dir=state_dir, ca_file=ca.cert_path, kubeconfig=plane.admin_kubeconfig,
        kube_api_url=plane.api_url, kubectl=parts.kubectl, kubernetes_version=versions.KUBERNETES,
        keycloak_url=keycloak.url, keycloak_version=keycloak_version,
        keycloak_admin_user=keycloak.admin_user, keycloak_admin_password=keycloak.admin_password,
        keycloak_admin_email=seeded.admin_email, issuer_realm=seeded.issuer_realm,
        issuer_token_url=seeded.token_url, issuer_jwks_url=seeded.jwks_url, issuer=seeded.issuer,
        issuer_client_id=seeded.client_id, issuer_client_secret=seeded.client_secret,
        issuer_other_client_id=seeded.other_client_id, issuer_other_client_secret=seeded.other_client_secret,
        issuer_scope=seeded.scope, target_realms=",".join(seeded.target_realms),
        smtp_host=host, smtp_starttls_port=starttls_port, smtp_tls_port=tls_port,
        smtp_spool=smtp.spool_dir, smtp_basic_user=basic_user, smtp_basic_password=basic_password,
        issuer_rotation_client_id=seeded.rotation_client_id, helm=parts.helm,
        keycloak_management_url=keycloak.management_url,
        postfix_starttls_port=postfix.starttls_port, postfix_tls_port=postfix.tls_port,
        postfix_short_line_port=postfix.short_line_port, postfix_spool=postfix.spool_dir,
        google_token_url=google.token_url, google_tokeninfo_url=google.tokeninfo_url, google_keys=google.keys,
    )
    if with_node:
        built = image.build(progress)
        started = node.start(registry, state_dir=state_dir, ca=ca, api_url=plane.api_url, kubectl=parts.kubectl,
                             admin_kubeconfig=plane.admin_kubeconfig, archives=[built.archive], progress=progress)
        env = dataclasses.replace(env, node_name=started.name, node_address=started.address)
    env.write()
    return env


def _smtp_config(state_dir: Path, ca: CertificateAuthority, seeded: Seeded, host: str,
                 tokeninfo_url: str) -> SmtpServerConfig:
    serving = ca.issue("smtp", "smtp.kcmail.test", names=serving_names(host))
    return SmtpServerConfig(
        listeners=(ListenerConfig(name="starttls", port=free_port(), tls="starttls"),
                   ListenerConfig(name="implicit", port=free_port(), tls="implicit")),
        cert_file=serving.cert, key_file=serving.key, ca_file=ca.cert_path,
        jwks_url=seeded.jwks_url, issuer=seeded.issuer, spool_dir=state_dir / "smtp" / "spool",
        clients={seeded.client_id: SENDER_MAILBOXES["smtp-app"],
                 seeded.other_client_id: SENDER_MAILBOXES["other-app"],
                 seeded.rotation_client_id: SENDER_MAILBOXES["rotation-app"]},
        basic_users={"basic-user@acme.example": secrets.token_urlsafe(18)},
        refused_domains=(REFUSED_DOMAIN,), host=host, tokeninfo_url=tokeninfo_url,
    )


# The Google Workspace's mailboxes: service accounts with delegation may have tokens for these only.
WORKSPACE_MAILBOXES = ("no-reply@workspace.example", "alerts@workspace.example")


@dataclass(frozen=True)
class _Google:
    token_url: str
    tokeninfo_url: str
    keys: Path


def _start_google(state_dir: Path, registry: ProcessRegistry, ca: CertificateAuthority, host: str) -> _Google:
    directory = state_dir / "google"
    directory.mkdir(parents=True, exist_ok=True)
    serving = ca.issue("google", "oauth2.googleapis.test", names=serving_names(host))
    port = free_port()
    base = f"https://{host}:{port}"
    accounts = google_oauth.make_accounts(f"{base}/token")
    config = google_oauth.GoogleConfig(port=port, cert_file=serving.cert, key_file=serving.key,
                                       token_url=f"{base}/token", accounts=accounts.google,
                                       delegations=accounts.delegations, users=WORKSPACE_MAILBOXES, host=host)
    config_path = directory / "config.json"
    config_path.write_text(config.to_json())
    keys = directory / "keys.json"
    keys.write_text(json.dumps({"delegated": accounts.delegated, "disabled": accounts.disabled,
                                "undelegated": accounts.undelegated, "mailboxes": WORKSPACE_MAILBOXES}))
    keys.chmod(0o600)
    server = registry.start("google", [sys.executable, "-m", "kcmail.devenv.google_oauth", "--config",
                                       str(config_path)])
    wait_until(lambda: port_open(port, host), server=server, what=f"port {port}", timeout=30)
    return _Google(token_url=f"{base}/token", tokeninfo_url=f"{base}/tokeninfo", keys=keys)


def _postfix_config(state_dir: Path, ca: CertificateAuthority, seeded: Seeded, host: str,
                    tokeninfo_url: str) -> postfix_server.PostfixConfig:
    serving = ca.issue("postfix", "postfix.kcmail.test", names=serving_names(host))
    return postfix_server.PostfixConfig(
        root=state_dir / "postfix", cert_file=serving.cert, key_file=serving.key, ca_file=ca.cert_path,
        introspection_url=seeded.introspection_url, client_id=seeded.introspection_client_id,
        client_secret=seeded.introspection_client_secret, username_claim=MAILBOX_CLAIM,
        starttls_port=free_port(), tls_port=free_port(), short_line_port=free_port(), sasl_port=free_port(),
        refused_domains=(REFUSED_DOMAIN,), host=host, tokeninfo_url=tokeninfo_url)


def down(state_dir: Path | None = None) -> list[str]:
    """Stop every process ``up`` started in ``state_dir``; returns their names."""
    state_dir = (state_dir or default_state_dir()).resolve()
    return _stop(state_dir, ProcessRegistry(state_dir))


def _stop(state_dir: Path, registry: ProcessRegistry) -> list[str]:
    has_node = node.layout(state_dir).root.exists()
    # The node first: its pods outlive the processes the registry knows of.
    node.stop(registry, state_dir)
    stopped = registry.stop_all()
    postfix_server.remove_runtime(state_dir / "postfix")
    if has_node:
        node.remove_bridge()
    return stopped


def status(state_dir: Path | None = None) -> dict[str, bool]:
    """Each recorded server and whether it is alive."""
    state_dir = (state_dir or default_state_dir()).resolve()
    return {p.name: p.alive() for p in ProcessRegistry(state_dir).load()}


def _clear_previous_run(state_dir: Path) -> None:
    # Every run gets a fresh CA, etcd and spool: leftovers would mix two runs' certificates and mail.
    for name in ("pki", "kube", "smtp", "postfix", "keycloak", "logs", "node", "google", ENV_FILE):
        target = state_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    (state_dir / "smtp").mkdir()

