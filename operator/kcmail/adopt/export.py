"""A realm's stored ``smtpServer`` map → the MailConfig and Secret template that reproduce it: the inverse
of :func:`kcmail.smtp_settings.desired_smtp_server`. Pure functions.

The Secret template never holds a secret: Keycloak masks them, and a secret the export could read would
not belong in a file anyway. Its secret keys say ``REPLACE-ME``; the OAuth2 client ID is not secret and is
carried over. Whatever the MailConfig cannot reproduce exactly is said in notes, which the YAML output
shows as comments, so that nobody adopts a realm without knowing what the first write changes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from kcmail.adopt.findings import AuthKind, auth_kind, is_vault_reference, security
from kcmail.smtp_settings import SECRET_KEYS, UnsupportedVersion, Version, desired_smtp_server
from kcmail.spec import GROUP, VERSION, ConnectionRef, Credentials, MailConfigSpec, SpecError

PLACEHOLDER = "REPLACE-ME"
CLIENT_ID_KEY, CLIENT_SECRET_KEY, PASSWORD_KEY = "client-id", "client-secret", "password"
# Keycloak's defaults for keys a realm may lack: the MailConfig writes them, which changes nothing.
# A missing authType means basic: the only kind before 26.2.
_KEYCLOAK_DEFAULTS = {"ssl": "false", "starttls": "false", "auth": "false", "debug": "false",
                      "allowutf8": "false", "connectionTimeout": "10000", "timeout": "10000",
                      "writeTimeout": "10000", "authType": "basic"}
_TIMEOUT_KEYS = (("connectionTimeout", "connect"), ("timeout", "read"), ("writeTimeout", "write"))
_DEFAULT_TIMEOUT_MS = 10_000
# The MailConfig CRD accepts timeouts between 1 s and 10 min.
_TIMEOUT_RANGE_MS = (1_000, 600_000)
_SENDER_KEYS = ("from", "fromDisplayName", "replyTo", "replyToDisplayName", "envelopeFrom")
_NAME_INVALID = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class Export:
    realm: str
    mailconfig: dict[str, Any]
    secret: dict[str, Any] | None
    notes: tuple[str, ...]

    @property
    def name(self) -> str:
        return str(self.mailconfig["metadata"]["name"])


def object_name(realm: str) -> str:
    """A Kubernetes object name for a realm: the realm's own name when it is one, else a cleaned-up name
    with a short hash of the realm's, so that two realms never share a name."""
    cleaned = _NAME_INVALID.sub("-", realm.lower())[:200].strip("-")
    if cleaned == realm:
        return cleaned
    digest = hashlib.sha256(realm.encode()).hexdigest()[:6]
    return f"{cleaned}-{digest}" if cleaned else f"realm-{digest}"


def duration_text(milliseconds: int) -> str:
    """Milliseconds as the shortest exact Kubernetes duration: 10000 → "10s", 90000 → "90s", 1500 → "1500ms"."""
    if milliseconds % 60_000 == 0 and milliseconds >= 60_000:
        return f"{milliseconds // 60_000}m"
    if milliseconds % 1000 == 0:
        return f"{milliseconds // 1000}s"
    return f"{milliseconds}ms"


def export_realm(realm: str, smtp: Mapping[str, str], version: Version | None, *, namespace: str,
                 connection_ref: ConnectionRef, name: str | None = None) -> Export:
    """The MailConfig and Secret template reproducing ``smtp`` (a realm's map as GET returns it)."""
    name = name or object_name(realm)
    notes: list[str] = []
    kind = auth_kind(smtp)
    secret_name = f"{name}-smtp-oauth" if kind is AuthKind.TOKEN else f"{name}-smtp"
    spec: dict[str, Any] = {
        "connectionRef": {"kind": connection_ref.kind.value, "name": connection_ref.name},
        "realm": realm,
        "smtp": _smtp(smtp, notes),
        "sender": {key: smtp[key] for key in _SENDER_KEYS if smtp.get(key)},
        "auth": {"type": {AuthKind.TOKEN: "XOAUTH2", AuthKind.BASIC: "Basic", AuthKind.NONE: "None"}[kind]},
    }
    secret_data: dict[str, str] | None = None
    if kind is not AuthKind.NONE:
        if smtp.get("user"):
            spec["auth"]["username"] = smtp["user"]
        else:
            notes.append("the realm has no SMTP user: set auth.username (the CRD requires it)")
    if kind is AuthKind.TOKEN:
        xoauth2: dict[str, Any] = {"tokenURL": smtp.get("authTokenUrl", "")}
        if smtp.get("authTokenScope"):
            xoauth2["scope"] = smtp["authTokenScope"]
        xoauth2["clientSecretRef"] = {"name": secret_name}
        spec["auth"]["xoauth2"] = xoauth2
        secret_data = {CLIENT_ID_KEY: smtp.get("authTokenClientId") or PLACEHOLDER,
                       CLIENT_SECRET_KEY: PLACEHOLDER}
        _vault_note(smtp, "authTokenClientSecret", secret_name, CLIENT_SECRET_KEY, notes)
    elif kind is AuthKind.BASIC:
        spec["auth"]["basic"] = {"passwordSecretRef": {"name": secret_name}}
        secret_data = {PASSWORD_KEY: PLACEHOLDER}
        _vault_note(smtp, "password", secret_name, PASSWORD_KEY, notes)
    if not smtp.get("from"):
        notes.append("the realm has no sender address: set sender.from (the CRD requires it)")
    notes += _first_write(smtp, spec, secret_data, version)
    mailconfig = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MailConfig",
                  "metadata": {"name": name, "namespace": namespace}, "spec": spec}
    secret = None
    if secret_data is not None:
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret_name, "namespace": namespace},
                  "type": "Opaque", "stringData": secret_data}
    return Export(realm=realm, mailconfig=mailconfig, secret=secret, notes=tuple(notes))


def _smtp(smtp: Mapping[str, str], notes: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {"host": smtp.get("host", "")}
    chosen = security(smtp)
    if not result["host"]:
        notes.append("the realm has no SMTP host: set smtp.host (the CRD requires it)")
    port = smtp.get("port", "")
    if port.isdigit() and 1 <= int(port) <= 65535:
        result["port"] = int(port)
    else:
        # JavaMail's own defaults when mail.smtp.port is unset: 465 with SSL, 25 otherwise.
        result["port"] = 465 if chosen == "SSL" else 25
        what = f"port {port!r} is not a port number" if port else "the realm names no port"
        notes.append(f"{what}: Keycloak's mailer then uses {result['port']}, which the MailConfig says "
                     "explicitly; check it")
    result["security"] = chosen
    if smtp.get("ssl") == "true" and smtp.get("starttls") == "true":
        notes.append("the realm enables both SSL and StartTLS; SSL (TLS from the first byte) is what Keycloak "
                     "uses, so the MailConfig says SSL and writes starttls \"false\"")
    timeouts = {}
    for key, field in _TIMEOUT_KEYS:
        raw = smtp.get(key, "")
        if not raw:
            continue
        if not raw.isdigit():
            notes.append(f"{key} {raw!r} is not a number of milliseconds; the MailConfig uses the default 10s")
            continue
        milliseconds = int(raw)
        if milliseconds != _DEFAULT_TIMEOUT_MS:
            timeouts[field] = duration_text(milliseconds)
        low, high = _TIMEOUT_RANGE_MS
        if not low <= milliseconds <= high:
            notes.append(f"{key} is {milliseconds} ms; the CRD accepts smtp.timeouts.{field} between 1s and 10m")
    if timeouts:
        result["timeouts"] = timeouts
    if smtp.get("allowutf8") == "true":
        result["allowUTF8"] = True
    if smtp.get("debug") == "true":
        result["debug"] = True
    return result


def _vault_note(smtp: Mapping[str, str], key: str, secret_name: str, secret_key: str, notes: list[str]) -> None:
    value = smtp.get(key, "")
    if is_vault_reference(value):
        notes.append(
            f"the realm reads {key} from Keycloak's vault ({value}): put the real secret in Secret {secret_name} "
            f"key {secret_key}, or the reference itself to keep using the vault (kcmail's probes cannot resolve "
            "a vault reference: then set probe.smtp: Off)")


def _first_write(smtp: Mapping[str, str], spec: Mapping[str, Any], secret_data: Mapping[str, str] | None,
                 version: Version | None) -> list[str]:
    """What the operator's first write changes in the realm, key by key (secrets only by presence)."""
    data = secret_data or {}
    # The template's placeholders stand for the secrets the person fills in: present, value unknown.
    credentials = Credentials(secret_version="", client_id=data.get(CLIENT_ID_KEY, ""),
                              client_secret=data.get(CLIENT_SECRET_KEY, ""), password=data.get(PASSWORD_KEY, ""))
    try:
        desired = desired_smtp_server(MailConfigSpec.parse(spec), credentials, version)
    except (SpecError, UnsupportedVersion) as error:
        return [f"the MailConfig cannot be applied as it is: {error}"]
    notes, defaults = [], []
    for key in sorted(set(desired) | set(smtp)):
        want, have = desired.get(key, ""), smtp.get(key, "")
        if key in SECRET_KEYS:
            if have and not want:
                notes.append(f"the first write removes {key}, which the MailConfig does not use")
            elif want and not have:
                notes.append(f"the realm holds no {key}; the first write stores the Secret's value")
            continue
        if want == have or (key == "port" and not have):  # a missing port has its own note
            continue
        if not have and _KEYCLOAK_DEFAULTS.get(key) == want:
            defaults.append(f"{key}={want}")
        elif not want:
            notes.append(f"the first write removes {key} ({have!r}), which a MailConfig cannot express")
        else:
            notes.append(f"the first write changes {key} from {have!r} to {want!r}")
    if defaults:
        notes.append(f"the realm lacks keys the first write stores with Keycloak's own defaults, which changes "
                     f"nothing Keycloak does: {', '.join(defaults)}")
    return notes


def render_yaml(exports: Iterable[Export], *, source: str) -> str:
    """One YAML stream: per realm, its notes as comments, the Secret template, then the MailConfig."""
    parts = []
    for export in exports:
        header = [f"# Realm {export.realm!r}, exported by `kcmail export` from {source}."]
        if export.secret is not None:
            header.append(f"# Fill in every {PLACEHOLDER} in Secret {export.secret['metadata']['name']} before "
                          "applying; never commit the filled-in Secret unencrypted.")
        header += [f"# NOTE: {note}" for note in export.notes]
        documents = [d for d in (export.secret, export.mailconfig) if d is not None]
        body = "---\n".join(yaml.safe_dump(d, sort_keys=False, default_flow_style=False) for d in documents)
        parts.append("\n".join(header) + "\n" + body)
    return "---\n".join(parts)

