"""From a MailConfig spec and its credentials to Keycloak's ``smtpServer`` map, and the diff against a realm.

Pure functions: no I/O. Keycloak's key names live here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from kcmail.spec import (
    AuthSpec,
    AuthType,
    ClientSecretRef,
    Credentials,
    MailConfigSpec,
    Security,
    XOAuth2Spec,
)

# What GET /admin/realms/{realm} shows in place of a stored secret.
MASK = "**********"
SECRET_KEYS = frozenset({"password", "authTokenClientSecret"})
# The keys kcmail's probe exercises: where and how it connects, how it authenticates, its timeouts. A change
# of other keys alone (display names, reply-to, debug) leaves the probe's conversation as it was.
PROBED_KEYS = frozenset({"host", "port", "ssl", "starttls", "auth", "user", "authType", "authTokenUrl",
                         "authTokenScope", "authTokenClientId", "connectionTimeout", "timeout", "writeTimeout",
                         *SECRET_KEYS})
# In Send mode the probe also sends a message, from these addresses.
SENT_KEYS = frozenset({"from", "envelopeFrom"})

TOKEN_AUTH_SINCE = (26, 2, 0)
# allowutf8 came in 26.3.3 and was back-ported to 26.2.8 (keycloak#41957; the upgrading guide's "Migrating
# to 26.2.8"), so 26.3.0 to 26.3.2 lack it.
ALLOW_UTF8_SINCE = (26, 3, 3)
ALLOW_UTF8_BACKPORT = ((26, 2, 8), (26, 3, 0))
TIMEOUTS_SINCE = (26, 5, 0)

Version = tuple[int, int, int]

# From 26.4.0 (and 26.2.10, where the change was backported) /admin/serverinfo shows systemInfo, the
# version with it, only to admins of the master realm (keycloak#42859; 26.7.3 shows the version again).
# A Keycloak that hides it from an admin of another realm is therefore at least this one: token auth is
# there. Keys newer than that are written as to the newest Keycloak: an older one stores them in the
# realm's map and ignores them.
HIDDEN_VERSION_AT_LEAST: Version = (26, 2, 10)


def version_text(version: Version | None) -> str:
    """What status.keycloakVersion shows: the version, or what is known when Keycloak hides it."""
    if version is None:
        return f"{'.'.join(map(str, HIDDEN_VERSION_AT_LEAST))} or newer (hidden from non-master admins)"
    return ".".join(map(str, version))


class UnsupportedVersion(ValueError):
    """The Keycloak in front of us cannot hold what the MailConfig asks for."""


def parse_version(text: str) -> Version:
    """Keycloak's ``systemInfo.version`` ("26.7.3", "26.2.0.redhat-00001", "999.0.0-SNAPSHOT")."""
    match = re.match(r"^(\d+)\.(\d+)\.(\d+)", text.strip())
    if not match:
        raise ValueError(f"not a Keycloak version: {text!r}")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def _flag(value: bool) -> str:
    # Keycloak compares these with "true".equals(...); anything else means false.
    return "true" if value else "false"


def _millis(seconds: float) -> str:
    return str(round(seconds * 1000))


def desired_smtp_server(spec: MailConfigSpec, credentials: Credentials, version: Version | None) -> dict[str, str]:
    """The whole ``smtpServer`` map Keycloak should hold. Empty optional values are left out.

    ``version`` None: Keycloak hides it (``HIDDEN_VERSION_AT_LEAST``).
    """
    auth = spec.auth
    if auth.type is AuthType.XOAUTH2 and not _has(version, TOKEN_AUTH_SINCE):
        raise UnsupportedVersion(
            f"XOAUTH2 needs Keycloak 26.2.0 or newer; this one is {'.'.join(map(str, version))}")
    smtp, sender = spec.smtp, spec.sender
    settings = {
        "host": smtp.host,
        "port": str(smtp.port),
        "ssl": _flag(smtp.security is Security.SSL),
        "starttls": _flag(smtp.security is Security.STARTTLS),
        "auth": _flag(auth.type is not AuthType.NONE),
        "debug": _flag(smtp.debug),
        "from": sender.from_address,
        "fromDisplayName": sender.from_display_name,
        "replyTo": sender.reply_to,
        "replyToDisplayName": sender.reply_to_display_name,
        "envelopeFrom": sender.envelope_from,
    }
    if has_allow_utf8(version):
        settings["allowutf8"] = _flag(smtp.allow_utf8)
    if _has(version, TIMEOUTS_SINCE):
        settings["connectionTimeout"] = _millis(smtp.timeouts.connect.total_seconds())
        settings["timeout"] = _millis(smtp.timeouts.read.total_seconds())
        settings["writeTimeout"] = _millis(smtp.timeouts.write.total_seconds())
    if auth.type is AuthType.XOAUTH2 and auth.xoauth2 is not None:
        # Lowercase: Keycloak matches "token" case-sensitively when it stores a realm.
        settings |= {
            "user": auth.username,
            "authType": "token",
            "authTokenUrl": auth.xoauth2.token_url,
            "authTokenScope": auth.xoauth2.scope,
            "authTokenClientId": credentials.client_id,
            "authTokenClientSecret": credentials.client_secret,
        }
    elif auth.type is AuthType.BASIC:
        settings |= {"user": auth.username, "authType": "basic", "password": credentials.password}
    return {key: value for key, value in settings.items() if value != ""}


def has_allow_utf8(version: Version | None) -> bool:
    """Whether a Keycloak of ``version`` knows the allowutf8 key (pure)."""
    backport_from, backport_to = ALLOW_UTF8_BACKPORT
    return _has(version, ALLOW_UTF8_SINCE) or (version is not None and backport_from <= version < backport_to)


def _has(version: Version | None, since: Version) -> bool:
    """Whether a Keycloak of ``version`` knows what came in ``since``; a hidden version counts as new."""
    return version is None or version >= since


def cleared_smtp_server() -> dict[str, str]:
    """What deletion with ``deletionPolicy: Clear`` leaves: no SMTP settings at all."""
    return {}


@dataclass(frozen=True)
class Drift:
    """Keys whose stored value differs from the desired one. Names only: values may be secret."""

    keys: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.keys)


def diff(desired: Mapping[str, str], actual: Mapping[str, str]) -> Drift:
    """Compare a realm's stored map with the desired one.

    Non-secret keys compare as strings, a missing key equal to an empty one. A stored secret is masked
    on read, so it can only be checked for presence: a secret that should be there and is not (or a
    secret that should not be there and is) counts as drift. Whether a present secret is the right
    one is decided by the Secret's version, not here.
    """
    differing = []
    for key in sorted(set(desired) | set(actual)):
        want, have = desired.get(key, ""), actual.get(key, "")
        if key in SECRET_KEYS:
            if bool(want) != bool(have):
                differing.append(key)
        elif want != have:
            differing.append(key)
    return Drift(keys=tuple(differing))


def needs_write(desired: Mapping[str, str], actual: Mapping[str, str] | None, *, secret_version: str,
                applied_secret_version: str | None) -> tuple[bool, Drift]:
    """Whether a reconcile must PUT the realm, and the drift that makes it so."""
    drift = diff(desired, actual or {})
    uses_secret = any(key in desired for key in SECRET_KEYS)
    rotated = uses_secret and secret_version != (applied_secret_version or "")
    return bool(drift) or rotated, drift


def settings_hash(settings: Mapping[str, str], secret_version: str) -> str:
    """A short hash that names one set of SMTP settings: the non-secret values, which secret keys are set,
    and the version of the Secret the secrets came from. Never a hash of a secret value (status shows it).

    A desired map and the realm's map that holds it (its secrets masked), with the Secret's version kcmail
    wrote, hash alike: so status can say which settings the last probe checked, and a later pass can tell
    whether the realm still holds them.
    """
    named = sorted((key, bool(value) if key in SECRET_KEYS else str(value))
                   for key, value in settings.items() if value not in ("", None))
    text = json.dumps([named, secret_version], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stored_as_spec(spec: MailConfigSpec, stored: Mapping[str, str],
                   credentials: Credentials | None) -> tuple[MailConfigSpec, Credentials] | None:
    """The settings a realm holds (``stored``, secrets masked) as a spec and credentials a probe can use, or
    None when kcmail cannot know what Keycloak would present.

    ``credentials``: the secret values the realm holds, which kcmail knows only when it wrote them from the
    Secret version it reads now (None otherwise). A secret Keycloak shows unmasked is a vault reference,
    which only Keycloak resolves. Everything else (host, port, TLS, user, token URL, scope, client ID,
    timeouts, sender) is read from the realm, over ``spec``'s values.
    """
    host, port = stored.get("host", ""), stored.get("port", "25")
    if not host or not port.isdigit():
        return None
    if stored.get("ssl") == "true":
        security = Security.SSL
    elif stored.get("starttls") == "true":
        security = Security.STARTTLS
    else:
        security = Security.NONE
    secret_key = {"token": "authTokenClientSecret", "basic": "password"}.get(stored.get("authType") or "basic")
    if stored.get("auth") != "true":
        auth, known = AuthSpec(AuthType.NONE), Credentials(secret_version="")
    elif secret_key is None or stored.get(secret_key) not in (MASK, "") or credentials is None:
        return None
    elif secret_key == "password":
        auth, known = AuthSpec(AuthType.BASIC, stored.get("user", "")), credentials
    else:
        reference = spec.auth.xoauth2.client_secret_ref if spec.auth.xoauth2 else ClientSecretRef("", "", "")
        auth = AuthSpec(AuthType.XOAUTH2, stored.get("user", ""), xoauth2=XOAuth2Spec(
            token_url=stored.get("authTokenUrl", ""), scope=stored.get("authTokenScope", ""),
            client_secret_ref=reference))
        known = dataclasses.replace(credentials, client_id=stored.get("authTokenClientId", ""))
    timeouts = spec.smtp.timeouts
    for key, field in (("connectionTimeout", "connect"), ("timeout", "read"), ("writeTimeout", "write")):
        if stored.get(key, "").isdigit():
            timeouts = dataclasses.replace(timeouts, **{field: datetime.timedelta(milliseconds=int(stored[key]))})
    smtp = dataclasses.replace(spec.smtp, host=host, port=int(port), security=security, timeouts=timeouts)
    sender = dataclasses.replace(spec.sender, from_address=stored.get("from") or spec.sender.from_address,
                                 envelope_from=stored.get("envelopeFrom", ""))
    return dataclasses.replace(spec, smtp=smtp, sender=sender, auth=auth), known
