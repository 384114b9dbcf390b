"""Typed values read from MailConfig and Connection objects, and the rules every name and value obeys.

The API server has already applied the CRD's defaults and CEL rules; parsing converts and checks the
same rules again, because an object stored under an older CRD was never held to them. A ``SpecError``
means the object bypassed validation (an older CRD, a direct etcd write) and names the field.
"""

from __future__ import annotations

import datetime
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import durationpy

_E = TypeVar("_E", bound=enum.StrEnum)

GROUP = "kcmail.io"
VERSION = "v1alpha1"


class SpecError(ValueError):
    """A field is missing or malformed; the message names its path."""


# Keycloak stores each smtpServer value in a database column of 255 characters: a longer one passes the
# admin API's checks and then fails in the database ("Database operation failed"), naming no field.
SMTP_VALUE_MAX = 255
REALM_NAME_MAX = 255
# The CRDs' control-character rule, character for character: C0, DEL, C1, and the Unicode line and
# paragraph separators. None of them belongs in a header, a SASL string or a status message.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# A realm name is one segment of an admin API path: no separator, nothing that ends a path (? #) or starts
# an escape or a matrix parameter (% ;). Keycloak allows % in a realm name; no name is worth a second
# decoding on the way.
REALM_NAME_FORBIDDEN = frozenset("/\\?#%;")


def realm_name_problem(name: str) -> str | None:
    """Why ``name`` is not a realm name kcmail addresses as one path segment, or None (the CRDs' rule)."""
    if not name:
        return "is empty"
    if len(name) > REALM_NAME_MAX:
        return f"has {len(name)} characters; a realm name has at most {REALM_NAME_MAX}"
    if name in (".", ".."):
        return f"is {name!r}, which a URL path reads as a directory, not a name"
    forbidden = sorted(REALM_NAME_FORBIDDEN.intersection(name))
    if forbidden:
        return f"contains {' '.join(forbidden)}, which cannot be part of one path segment"
    if CONTROL_CHARACTERS.search(name):
        return "contains control characters"
    if name != name.strip():
        return "starts or ends with a space"
    return None


def value_problem(value: str, limit: int = SMTP_VALUE_MAX) -> str | None:
    """Why ``value`` cannot be stored in a realm's smtpServer (or sent in a SASL string), or None."""
    if CONTROL_CHARACTERS.search(value):
        return "contains control characters (CR, LF, NUL and the like)"
    if len(value) > limit:
        return f"has {len(value)} characters; Keycloak stores at most {limit}"
    return None


class Security(enum.StrEnum):
    STARTTLS = "StartTLS"
    SSL = "SSL"
    NONE = "None"


class AuthType(enum.StrEnum):
    XOAUTH2 = "XOAUTH2"
    BASIC = "Basic"
    NONE = "None"


class ProbeMode(enum.StrEnum):
    AUTHENTICATE = "Authenticate"
    SEND = "Send"
    OFF = "Off"


class DeletionPolicy(enum.StrEnum):
    RETAIN = "Retain"
    CLEAR = "Clear"


class ChangePolicy(enum.StrEnum):
    # A change is probed before it is written, and held while it fails and the realm's settings work.
    PROBE_FIRST = "ProbeFirst"
    # A change is written at once and probed after, as kcmail did before change policies.
    IMMEDIATE = "Immediate"


class ConnectionKind(enum.StrEnum):
    NAMESPACED = "KeycloakConnection"
    CLUSTER = "ClusterKeycloakConnection"


@dataclass(frozen=True)
class Timeouts:
    connect: datetime.timedelta
    read: datetime.timedelta
    write: datetime.timedelta


@dataclass(frozen=True)
class SmtpSpec:
    host: str
    port: int
    security: Security
    timeouts: Timeouts
    allow_utf8: bool
    debug: bool


@dataclass(frozen=True)
class SenderSpec:
    from_address: str
    from_display_name: str = ""
    reply_to: str = ""
    reply_to_display_name: str = ""
    envelope_from: str = ""


@dataclass(frozen=True)
class ClientSecretRef:
    name: str
    client_id_key: str
    client_secret_key: str


@dataclass(frozen=True)
class SecretKeyRef:
    name: str
    key: str


# The one scope a Gmail SMTP token has (Google's OAuth 2.0 scopes for the Gmail API).
GOOGLE_MAIL_SCOPE = "https://mail.google.com/"


@dataclass(frozen=True)
class XOAuth2Spec:
    """Either a token endpoint and the client credentials Keycloak presents to it, or a Google service
    account's key, which kcmail's token bridge uses for Keycloak (``google_key_ref``; the token URL and the
    client credentials are then the bridge's, filled in by kcmail.bridge.enrolment)."""

    token_url: str
    scope: str
    client_secret_ref: ClientSecretRef | None
    google_key_ref: SecretKeyRef | None = None


@dataclass(frozen=True)
class BasicSpec:
    password_secret_ref: SecretKeyRef


@dataclass(frozen=True)
class AuthSpec:
    type: AuthType
    username: str = ""
    xoauth2: XOAuth2Spec | None = None
    basic: BasicSpec | None = None

    @property
    def secret_name(self) -> str | None:
        """The Secret this auth reads, if any."""
        if self.type is AuthType.XOAUTH2 and self.xoauth2:
            if self.xoauth2.google_key_ref is not None:
                return self.xoauth2.google_key_ref.name
            return self.xoauth2.client_secret_ref.name if self.xoauth2.client_secret_ref else None
        if self.type is AuthType.BASIC and self.basic:
            return self.basic.password_secret_ref.name
        return None


@dataclass(frozen=True)
class ProbeSpec:
    smtp: ProbeMode
    recipient: str = ""


@dataclass(frozen=True)
class ConnectionRef:
    kind: ConnectionKind
    name: str


@dataclass(frozen=True)
class MailConfigSpec:
    connection_ref: ConnectionRef
    realm: str
    smtp: SmtpSpec
    sender: SenderSpec
    auth: AuthSpec
    probe: ProbeSpec
    interval: datetime.timedelta
    suspend: bool
    deletion_policy: DeletionPolicy
    change_policy: ChangePolicy = ChangePolicy.PROBE_FIRST

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> MailConfigSpec:
        parsed = cls._convert(spec)
        parsed._check()
        return parsed

    def _check(self) -> None:
        """The rules of the CRD that keep names one path segment and values storable by Keycloak."""
        problem = realm_name_problem(self.realm)
        if problem:
            raise SpecError(f"realm {self.realm!r} {problem}")
        sender, auth = self.sender, self.auth
        stored = {"smtp.host": self.smtp.host, "sender.from": sender.from_address,
                  "sender.fromDisplayName": sender.from_display_name, "sender.replyTo": sender.reply_to,
                  "sender.replyToDisplayName": sender.reply_to_display_name,
                  "sender.envelopeFrom": sender.envelope_from, "auth.username": auth.username}
        if auth.xoauth2 is not None:
            stored |= {"auth.xoauth2.tokenURL": auth.xoauth2.token_url, "auth.xoauth2.scope": auth.xoauth2.scope}
        names = {"connectionRef.name": self.connection_ref.name, "probe.recipient": self.probe.recipient}
        if auth.xoauth2 is not None and auth.xoauth2.client_secret_ref is not None:
            names["auth.xoauth2.clientSecretRef.name"] = auth.xoauth2.client_secret_ref.name
        if auth.xoauth2 is not None and auth.xoauth2.google_key_ref is not None:
            google = auth.xoauth2.google_key_ref
            names |= {"auth.xoauth2.googleServiceAccount.keySecretRef.name": google.name,
                      "auth.xoauth2.googleServiceAccount.keySecretRef.key": google.key}
            if auth.username.count("@") != 1:
                raise SpecError("auth.username must be the Workspace mailbox (an address) with "
                                "auth.xoauth2.googleServiceAccount")
        if auth.basic is not None:
            names["auth.basic.passwordSecretRef.name"] = auth.basic.password_secret_ref.name
        for path, value in stored.items():
            problem = value_problem(value)
            if problem:
                raise SpecError(f"{path} {problem}")
        for path, value in names.items():
            if CONTROL_CHARACTERS.search(value):
                raise SpecError(f"{path} contains control characters")

    @classmethod
    def _convert(cls, spec: Mapping[str, Any]) -> MailConfigSpec:
        smtp = _mapping(spec, "smtp")
        timeouts = _mapping(smtp, "timeouts", "smtp.", required=False)
        sender = _mapping(spec, "sender")
        auth = _mapping(spec, "auth")
        probe = _mapping(spec, "probe", required=False)
        ref = _mapping(spec, "connectionRef")
        return cls(
            connection_ref=ConnectionRef(kind=_enum(ConnectionKind, ref.get("kind", "ClusterKeycloakConnection"),
                                                    "connectionRef.kind"),
                                         name=_str(ref, "name", "connectionRef.")),
            realm=_str(spec, "realm"),
            smtp=SmtpSpec(
                host=_str(smtp, "host", "smtp."),
                port=int(smtp.get("port", 587)),
                security=_enum(Security, smtp.get("security", "StartTLS"), "smtp.security"),
                timeouts=Timeouts(**{k: duration(timeouts.get(k, "10s"), f"smtp.timeouts.{k}")
                                     for k in ("connect", "read", "write")}),
                allow_utf8=bool(smtp.get("allowUTF8", False)),
                debug=bool(smtp.get("debug", False)),
            ),
            sender=SenderSpec(
                from_address=_str(sender, "from", "sender."),
                from_display_name=sender.get("fromDisplayName", ""),
                reply_to=sender.get("replyTo", ""),
                reply_to_display_name=sender.get("replyToDisplayName", ""),
                envelope_from=sender.get("envelopeFrom", ""),
            ),
            auth=_auth(auth),
            probe=ProbeSpec(smtp=_enum(ProbeMode, probe.get("smtp", "Authenticate"), "probe.smtp"),
                            recipient=probe.get("recipient", "")),
            interval=duration(spec.get("interval", "10m"), "interval"),
            suspend=bool(spec.get("suspend", False)),
            deletion_policy=_enum(DeletionPolicy, spec.get("deletionPolicy", "Retain"), "deletionPolicy"),
            change_policy=_enum(ChangePolicy, spec.get("changePolicy", "ProbeFirst"), "changePolicy"),
        )


def _auth(auth: Mapping[str, Any]) -> AuthSpec:
    kind = _enum(AuthType, auth.get("type", "XOAUTH2"), "auth.type")
    xoauth2 = basic = None
    if kind is AuthType.XOAUTH2:
        x = _mapping(auth, "xoauth2", "auth.")
        if "googleServiceAccount" in x:
            xoauth2 = _google(x)
            return AuthSpec(type=kind, username=auth.get("username", ""), xoauth2=xoauth2)
        ref = _mapping(x, "clientSecretRef", "auth.xoauth2.")
        xoauth2 = XOAuth2Spec(
            token_url=_str(x, "tokenURL", "auth.xoauth2."), scope=x.get("scope", ""),
            client_secret_ref=ClientSecretRef(name=_str(ref, "name", "auth.xoauth2.clientSecretRef."),
                                              client_id_key=ref.get("clientIDKey", "client-id"),
                                              client_secret_key=ref.get("clientSecretKey", "client-secret")))
    elif kind is AuthType.BASIC:
        b = _mapping(auth, "basic", "auth.")
        ref = _mapping(b, "passwordSecretRef", "auth.basic.")
        basic = BasicSpec(password_secret_ref=SecretKeyRef(
            name=_str(ref, "name", "auth.basic.passwordSecretRef."), key=ref.get("key", "password")))
    return AuthSpec(type=kind, username=auth.get("username", ""), xoauth2=xoauth2, basic=basic)


def _google(x: Mapping[str, Any]) -> XOAuth2Spec:
    prefix = "auth.xoauth2.googleServiceAccount."
    if "tokenURL" in x or "clientSecretRef" in x:
        raise SpecError("auth.xoauth2 takes either googleServiceAccount, or tokenURL and clientSecretRef")
    scope = x.get("scope", "") or GOOGLE_MAIL_SCOPE
    if scope != GOOGLE_MAIL_SCOPE:
        raise SpecError(f"auth.xoauth2.scope must be {GOOGLE_MAIL_SCOPE} (or left out) with googleServiceAccount")
    ref = _mapping(_mapping(x, "googleServiceAccount", "auth.xoauth2."), "keySecretRef", prefix)
    return XOAuth2Spec(token_url="", scope=scope, client_secret_ref=None, google_key_ref=SecretKeyRef(
        name=_str(ref, "name", f"{prefix}keySecretRef."), key=ref.get("key", "key.json")))


@dataclass(frozen=True)
class Credentials:
    """Secret values resolved for one MailConfig. ``repr`` never shows them."""

    secret_version: str
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    # A Google service account's key (the JSON Google issues), for the token bridge; never for Keycloak.
    service_account_key: str = field(default="", repr=False)


def duration(value: str, path: str) -> datetime.timedelta:
    """A Kubernetes-style duration ("10m", "1h30m", "500ms")."""
    try:
        parsed = durationpy.from_str(value)
    except (durationpy.DurationError, TypeError, ValueError) as error:
        raise SpecError(f"{path}: {value!r} is not a duration like 30s, 10m or 1h") from error
    if not isinstance(parsed, datetime.timedelta):
        raise SpecError(f"{path}: {value!r} is not a duration like 30s, 10m or 1h")
    return parsed


def _mapping(parent: Mapping[str, Any], key: str, prefix: str = "", *, required: bool = True) -> Mapping[str, Any]:
    value = parent.get(key)
    if value is None:
        if required:
            raise SpecError(f"{prefix}{key} is required")
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{prefix}{key} must be an object")
    return value


def _str(parent: Mapping[str, Any], key: str, prefix: str = "") -> str:
    value = parent.get(key)
    if not isinstance(value, str) or not value:
        raise SpecError(f"{prefix}{key} is required")
    return value


def _enum(kind: type[_E], value: Any, path: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        allowed = " | ".join(member.value for member in kind)
        raise SpecError(f"{path}: {value!r} is not one of {allowed}") from None
