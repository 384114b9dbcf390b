"""What is wrong with a realm's stored mail settings: one realm's ``smtpServer`` map and the Keycloak
version in, findings out. Pure functions; each finding has a stable id that scripts may match on.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from kcmail.smtp_settings import MASK, SECRET_KEYS, TOKEN_AUTH_SINCE, Version


class Severity(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)


class Check(enum.StrEnum):
    """The stable ids of findings. Renaming one breaks the scripts that match on it."""

    SMTP_NOT_CONFIGURED = "smtp-not-configured"
    HOST_MISSING = "host-missing"
    BASIC_AUTH_RETIRED = "basic-auth-retired"
    GMAIL_APP_PASSWORD = "gmail-app-password"
    GMAIL_TOKEN_URL_UNUSABLE = "gmail-token-url-unusable"
    TOKEN_SCOPE_MISSING = "token-scope-missing"
    TOKEN_URL_NOT_HTTPS = "token-url-not-https"
    AUTH_INCOMPLETE = "auth-incomplete"
    CREDENTIALS_IN_CLEAR = "credentials-in-clear"
    DEBUG_ENABLED = "debug-enabled"
    FROM_MISSING = "from-missing"
    FROM_INVALID = "from-invalid"
    REPLY_TO_INVALID = "reply-to-invalid"
    ENVELOPE_FROM_INVALID = "envelope-from-invalid"
    KEYCLOAK_TOO_OLD = "keycloak-too-old-for-token-auth"
    REALM_UNREADABLE = "realm-unreadable"
    # Only with --probe.
    PROBE_TOKEN_FAILED = "probe-token-failed"
    PROBE_SMTP_FAILED = "probe-smtp-failed"
    PROBE_AUTH_NOT_TESTED = "probe-auth-not-tested"


# Each finding has one severity, whatever realm it is found in.
SEVERITY = {
    Check.SMTP_NOT_CONFIGURED: Severity.INFO,
    Check.HOST_MISSING: Severity.ERROR,
    Check.BASIC_AUTH_RETIRED: Severity.ERROR,
    Check.GMAIL_APP_PASSWORD: Severity.WARNING,
    Check.GMAIL_TOKEN_URL_UNUSABLE: Severity.ERROR,
    Check.TOKEN_SCOPE_MISSING: Severity.WARNING,
    Check.TOKEN_URL_NOT_HTTPS: Severity.ERROR,
    Check.AUTH_INCOMPLETE: Severity.ERROR,
    Check.CREDENTIALS_IN_CLEAR: Severity.WARNING,
    Check.DEBUG_ENABLED: Severity.WARNING,
    Check.FROM_MISSING: Severity.ERROR,
    Check.FROM_INVALID: Severity.ERROR,
    Check.REPLY_TO_INVALID: Severity.ERROR,
    Check.ENVELOPE_FROM_INVALID: Severity.ERROR,
    Check.KEYCLOAK_TOO_OLD: Severity.ERROR,
    Check.REALM_UNREADABLE: Severity.ERROR,
    Check.PROBE_TOKEN_FAILED: Severity.ERROR,
    Check.PROBE_SMTP_FAILED: Severity.ERROR,
    Check.PROBE_AUTH_NOT_TESTED: Severity.INFO,
}


@dataclass(frozen=True)
class Finding:
    check: Check
    severity: Severity
    realm: str
    message: str
    # The reason catalogue's word for a probe failure (e.g. AuthenticationRejected); "" otherwise.
    reason: str = ""

    @classmethod
    def of(cls, check: Check, realm: str, message: str, reason: str = "") -> Finding:
        """A finding with its check's one severity."""
        return cls(check, SEVERITY[check], realm, message, reason)


# How the checks below report a finding for the realm at hand.
_Add = Callable[[Check, str], None]

# Exchange Online's SMTP endpoints. Microsoft retires basic authentication for SMTP AUTH client
# submission there; *.mail.protection.outlook.com is the inbound (MX) endpoint, which takes no AUTH at all.
# Microsoft's plan as its Exchange Team announced it (MC786329, updated 2026-01-27); the guides cite it.
EXCHANGE_BASIC_AUTH_PLAN = (
    "Exchange Online disables basic authentication for SMTP AUTH by default for existing tenants at the end of "
    "December 2026 (an administrator can re-enable it until Microsoft removes it; the final date is to be "
    "announced in the second half of 2027), and then answers 535 5.7.139 or 550 5.7.30")
_EXCHANGE_ONLINE_HOSTS = frozenset({"smtp.office365.com", "outlook.office365.com"})
_EXCHANGE_ONLINE_SUFFIX = ".mail.protection.outlook.com"
# Gmail's SMTP servers for mailboxes (the relay, smtp-relay.gmail.com, authenticates by IP address instead).
_GMAIL_HOSTS = frozenset({"smtp.gmail.com", "smtp.googlemail.com"})
# Google's token endpoints, which issue no token for Keycloak's client-credentials request.
_GOOGLE_TOKEN_HOSTS = frozenset({"oauth2.googleapis.com", "accounts.google.com", "www.googleapis.com"})
GOOGLE_GUIDE = "docs/guides/google.md"
# The address rule of the MailConfig CRD (sender.from, replyTo, envelopeFrom), so that what passes the
# audit also passes `kubectl apply` of the exported MailConfig.
_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+$")
# Keycloak returns a vault reference as it is stored, unmasked (StripSecretsUtils' VAULT_VALUE).
_VAULT_REFERENCE = re.compile(r"^\$\{vault\.(.+?)\}$")


def smtp_settings(realm_representation: Mapping[str, object]) -> dict[str, str]:
    """A realm representation's ``smtpServer`` map, every value a string as Keycloak stores it."""
    raw = realm_representation.get("smtpServer") or {}
    return {str(key): str(value) for key, value in raw.items()} if isinstance(raw, Mapping) else {}


def is_vault_reference(value: str) -> bool:
    return bool(_VAULT_REFERENCE.match(value))


def shown_settings(smtp: Mapping[str, str]) -> dict[str, str]:
    """The map as it may be printed: a secret is the mask, whatever Keycloak returned, unless it is a
    vault reference (a name, not a secret)."""
    return {key: (MASK if key in SECRET_KEYS and value and not is_vault_reference(value) else value)
            for key, value in smtp.items()}


def is_exchange_online(host: str) -> bool:
    name = host.strip().rstrip(".").lower()
    return name in _EXCHANGE_ONLINE_HOSTS or name.endswith(_EXCHANGE_ONLINE_SUFFIX)


def is_gmail(host: str) -> bool:
    return host.strip().rstrip(".").lower() in _GMAIL_HOSTS


def is_loopback(host: str) -> bool:
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class AuthKind(enum.StrEnum):
    NONE = "none"
    BASIC = "basic"
    TOKEN = "token"


def auth_kind(smtp: Mapping[str, str]) -> AuthKind:
    """How Keycloak authenticates with these settings: no authenticator runs unless ``auth`` is "true";
    a missing ``authType`` means basic (the only kind before 26.2); the send path ignores its case."""
    if smtp.get("auth") != "true":
        return AuthKind.NONE
    return AuthKind.TOKEN if smtp.get("authType", "").lower() == "token" else AuthKind.BASIC


def security(smtp: Mapping[str, str]) -> str:
    if smtp.get("ssl") == "true":
        return "SSL"
    return "StartTLS" if smtp.get("starttls") == "true" else "None"


def audit_realm(realm: str, smtp: Mapping[str, str], version: Version | None) -> list[Finding]:
    """Every finding for one realm's stored settings on a Keycloak of ``version``."""
    if not any(smtp.values()):
        return [Finding.of(Check.SMTP_NOT_CONFIGURED, realm,
                           "no SMTP server configured: Keycloak cannot send password-reset, verification or "
                           "MFA mail for this realm")]
    found: list[Finding] = []

    def add(check: Check, message: str) -> None:
        found.append(Finding.of(check, realm, message))

    host = smtp.get("host", "")
    kind = auth_kind(smtp)
    if not host:
        add(Check.HOST_MISSING, "SMTP settings without a host: Keycloak has no server to send to")
    if kind is AuthKind.BASIC and is_exchange_online(host):
        add(Check.BASIC_AUTH_RETIRED,
            f"basic authentication to {host}: {EXCHANGE_BASIC_AUTH_PLAN}; move this realm to XOAUTH2 "
            "(docs/guides/migrate-from-basic.md)")
    if kind is AuthKind.BASIC and is_gmail(host):
        add(Check.GMAIL_APP_PASSWORD,
            f"basic authentication to {host}: Gmail takes only an app password here, which Google no longer "
            "offers to accounts that sign in with a password alone and which stops working when the "
            f"account's password changes; send with XOAUTH2 through kcmail's token bridge ({GOOGLE_GUIDE})")
    if kind is AuthKind.TOKEN:
        _check_token(smtp, add)
    if kind is not AuthKind.NONE:
        _check_credentials(smtp, kind, add)
    if smtp.get("debug") == "true":
        add(Check.DEBUG_ENABLED,
            "debug is on: Keycloak writes every SMTP dialogue, message contents (password-reset links) "
            "included, to its log")
    _check_addresses(smtp, add)
    # A hidden version is 26.2.10 or newer (smtp_settings.HIDDEN_VERSION_AT_LEAST): token auth is there.
    if version is not None and version < TOKEN_AUTH_SINCE and (
            kind is AuthKind.TOKEN or (kind is AuthKind.BASIC and is_exchange_online(host))):
        have, need = ".".join(map(str, version)), ".".join(map(str, TOKEN_AUTH_SINCE))
        what = ("token authentication is configured but this Keycloak ignores it and tries basic authentication"
                if kind is AuthKind.TOKEN else "Exchange Online needs token authentication (XOAUTH2)")
        add(Check.KEYCLOAK_TOO_OLD,
            f"{what}; token authentication needs Keycloak {need} or newer and this one is {have}")
    return found


def _check_token(smtp: Mapping[str, str], add: _Add) -> None:
    token_host = (urlsplit(smtp.get("authTokenUrl", "")).hostname or "").lower()
    if token_host in _GOOGLE_TOKEN_HOSTS:
        add(Check.GMAIL_TOKEN_URL_UNUSABLE,
            f"the token URL is Google's ({token_host}), which has no client-credentials grant with a secret: "
            "Keycloak gets no token there and sends no mail; point it at kcmail's token bridge, which makes "
            f"Google's service-account grant for the mailbox ({GOOGLE_GUIDE})")
    if not smtp.get("authTokenScope"):
        add(Check.TOKEN_SCOPE_MISSING,
            "token authentication without a scope: Keycloak caches a token only when a scope is set, so it "
            "asks the token endpoint for a new token for every mail")
    url = smtp.get("authTokenUrl", "")
    if url:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme != "https" and not (scheme == "http" and is_loopback(parts.hostname or "")):
            add(Check.TOKEN_URL_NOT_HTTPS,
                f"token URL {url} is not https://: the client secret and the token travel in clear text "
                "(http:// is acceptable only to a loopback host)")


def _check_credentials(smtp: Mapping[str, str], kind: AuthKind, add: _Add) -> None:
    needed = (("user", "authTokenUrl", "authTokenClientId", "authTokenClientSecret") if kind is AuthKind.TOKEN
              else ("user", "password"))
    missing = [key for key in needed if not smtp.get(key)]
    if missing:
        add(Check.AUTH_INCOMPLETE,
            f"{kind.value} authentication without {', '.join(missing)}: Keycloak cannot authenticate to the "
            "SMTP server")
    host = smtp.get("host", "")
    if security(smtp) == "None" and host and not is_loopback(host):
        secret = "token" if kind is AuthKind.TOKEN else "password"
        add(Check.CREDENTIALS_IN_CLEAR,
            f"neither SSL nor StartTLS: the {secret} crosses the network to {host} in clear text")


def _check_addresses(smtp: Mapping[str, str], add: _Add) -> None:
    sender = smtp.get("from", "")
    if not sender:
        add(Check.FROM_MISSING, "no sender address (from): Keycloak refuses to send")
    elif not _ADDRESS.match(sender):
        add(Check.FROM_INVALID,
            f"sender address (from) {sender!r} is not a plain address such as no-reply@acme.example (local@domain, "
            "no spaces): SMTP servers may refuse it, and a MailConfig cannot hold it")
    for key, check in (("replyTo", Check.REPLY_TO_INVALID), ("envelopeFrom", Check.ENVELOPE_FROM_INVALID)):
        value = smtp.get(key, "")
        if value and not _ADDRESS.match(value):
            add(check, f"{key} {value!r} is not a plain address such as support@acme.example "
                "(local@domain, no spaces): SMTP servers may refuse it, and a MailConfig cannot hold it")


def reaches(findings: Iterable[Finding], threshold: Severity) -> bool:
    """Whether any finding is at least as severe as ``threshold``: the audit's exit code."""
    return any(f.severity.rank >= threshold.rank for f in findings)
