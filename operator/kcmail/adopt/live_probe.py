"""``kcmail audit --probe``: what each realm's *stored* settings meet when Keycloak sends mail.

Keycloak masks stored secrets, so on its own the probe stops short of authenticating, and sends no
credentials it does not have: it checks that the token endpoint answers over trusted TLS, and that the
SMTP server takes a connection, TLS and EHLO and advertises the mechanism Keycloak will use (XOAUTH2 for
token auth, PLAIN or LOGIN for basic). Given the secret (``--secrets-from DIR``: the files ``kcmail
export -o DIR`` wrote, their Secrets filled in) it runs the operator's whole probe: a token, then AUTH.
Either way the host, port, security, user, token URL, scope and client ID are the realm's, not the files'.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from kcmail.adopt.export import PLACEHOLDER
from kcmail.adopt.findings import AuthKind, Check, Finding, auth_kind, security
from kcmail.conditions import Failure, Reason
from kcmail.oauth import TokenClient, TokenFailure, TokenRequest
from kcmail.probe_cli import InputError, find_secret, read_manifests, secret_values
from kcmail.redact import redact
from kcmail.smtp_probe import SmtpCredentials, SmtpTarget, Step, no_auth_offered, probe_smtp
from kcmail.spec import AuthType, Security

_DEFAULT_TIMEOUT_MS = 10_000
# Stands in for a Secret's uid/resourceVersion in the token cache key: one audit run, one token per realm.
_AUDIT_SECRET_VERSION = "audit"
_MECHANISMS = {AuthKind.TOKEN: frozenset({"XOAUTH2"}), AuthKind.BASIC: frozenset({"PLAIN", "LOGIN"})}


@dataclass(frozen=True)
class ProvidedSecret:
    """A realm's secret found in ``--secrets-from``: the client secret (token auth) or password (basic)."""

    kind: AuthKind
    value: str = field(repr=False)
    source: str = ""  # file, Secret and key: where it came from, never what it is


@dataclass
class RealmProbe:
    oauth: str  # issued | reachable | failed | not needed | not probed
    smtp: str  # authenticated | connected | failed | not probed
    steps: list[Step] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


def load_secrets(directory: Path) -> dict[str, ProvidedSecret]:
    """Each realm's secret from the MailConfigs and Secrets in ``directory``'s YAML files, matched through the
    MailConfig's ``spec.realm`` and its Secret reference. Placeholders and empty values are left out."""
    if not directory.is_dir():
        raise InputError(f"--secrets-from {directory} is not a directory")
    objects: list[tuple[Path, Mapping[str, Any]]] = []
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        objects += [(path, obj) for obj in read_manifests(path)]
    everything = [obj for _, obj in objects]
    found: dict[str, ProvidedSecret] = {}
    for path, obj in objects:
        spec = obj.get("spec")
        if obj.get("kind") != "MailConfig" or not isinstance(spec, Mapping) or not spec.get("realm"):
            continue
        reference = _secret_reference(spec.get("auth") or {})
        if reference is None:
            continue
        kind, name, key = reference
        namespace = (obj.get("metadata") or {}).get("namespace")
        secret = find_secret(everything, name, namespace)
        if secret is None:
            continue
        value = secret_values(secret, str(path)).get(key, "")
        if value and value != PLACEHOLDER:
            found[str(spec["realm"])] = ProvidedSecret(kind, value, f"{path.name}: Secret {name} key {key}")
    return found


def _secret_reference(auth: Mapping[str, Any]) -> tuple[AuthKind, str, str] | None:
    """(kind, Secret name, key) of the secret a MailConfig's auth reads, with the CRD's default keys."""
    if auth.get("type", "XOAUTH2") == "XOAUTH2":
        ref = (auth.get("xoauth2") or {}).get("clientSecretRef") or {}
        return (AuthKind.TOKEN, ref["name"], ref.get("clientSecretKey", "client-secret")) if ref.get("name") else None
    if auth.get("type") == "Basic":
        ref = (auth.get("basic") or {}).get("passwordSecretRef") or {}
        return (AuthKind.BASIC, ref["name"], ref.get("key", "password")) if ref.get("name") else None
    return None


def _seconds(smtp: Mapping[str, str], key: str) -> float:
    # JavaMail reads 0 as "no timeout"; a probe must end, so it gets Keycloak's default instead.
    raw = smtp.get(key, "")
    return (int(raw) if raw.isdigit() and int(raw) > 0 else _DEFAULT_TIMEOUT_MS) / 1000


def stored_target(smtp: Mapping[str, str]) -> SmtpTarget:
    """The SMTP server as Keycloak's mailer meets it with these settings."""
    chosen = Security(security(smtp))
    port = smtp.get("port", "")
    return SmtpTarget(host=smtp.get("host", ""),
                      # JavaMail's defaults when mail.smtp.port is unset: 465 with SSL, 25 otherwise.
                      port=int(port) if port.isdigit() and 0 < int(port) < 65536
                      else (465 if chosen is Security.SSL else 25),
                      security=chosen, connect_timeout=_seconds(smtp, "connectionTimeout"),
                      timeout=max(_seconds(smtp, "timeout"), _seconds(smtp, "writeTimeout")))


async def probe_realm(realm: str, smtp: Mapping[str, str], provided: ProvidedSecret | None,
                      tokens: TokenClient, http: httpx.AsyncClient, tls: ssl.SSLContext) -> RealmProbe:
    """Probe one realm's stored settings; failures become findings (error), never exceptions."""
    if not smtp.get("host"):
        return RealmProbe(oauth="not probed", smtp="not probed")
    kind = auth_kind(smtp)
    probe = RealmProbe(oauth="not needed" if kind is not AuthKind.TOKEN else "not probed",
                       smtp="not probed")
    secret = provided.value if provided is not None and provided.kind is kind else ""
    credentials = SmtpCredentials(AuthType.NONE)
    if kind is AuthKind.TOKEN and smtp.get("authTokenUrl"):
        credentials = await _token_step(realm, smtp, secret, provided, tokens, http, probe)
    elif kind is AuthKind.BASIC and secret:
        credentials = SmtpCredentials(AuthType.BASIC, smtp.get("user", ""), secret)
    result = await probe_smtp(stored_target(smtp), credentials, tls)
    probe.steps += result.steps
    if result.failure is not None:
        probe.smtp = "failed"
        probe.findings.append(Finding.of(Check.PROBE_SMTP_FAILED, realm, result.failure.message,
                                         result.failure.reason.value))
        return probe
    probe.smtp = "authenticated" if credentials.type is not AuthType.NONE else "connected"
    if kind is not AuthKind.NONE and credentials.type is AuthType.NONE:
        # Without a secret (or a token), the server is still asked whether it offers what Keycloak needs.
        _check_mechanism(realm, kind, smtp, result.offered_auth, provided, probe,
                         report_untested=probe.oauth != "failed")
    return probe


async def _token_step(realm: str, smtp: Mapping[str, str], secret: str, provided: ProvidedSecret | None,
                      tokens: TokenClient, http: httpx.AsyncClient, probe: RealmProbe) -> SmtpCredentials:
    """With the secret, a token as Keycloak asks for it; without, whether the endpoint answers at all.
    The credentials for the SMTP step: XOAUTH2 with the token, or none."""
    started = time.monotonic()
    failure: Failure | None = None
    credentials = SmtpCredentials(AuthType.NONE)
    if secret:
        request = TokenRequest(url=smtp["authTokenUrl"], client_id=smtp.get("authTokenClientId", ""),
                               client_secret=secret, scope=smtp.get("authTokenScope", ""),
                               secret_version=_AUDIT_SECRET_VERSION)
        try:
            token = await tokens.token(request)
        except TokenFailure as error:
            failure = error.failure
        else:
            source = f" (secret from {provided.source})" if provided else ""
            probe.oauth = "issued"
            probe.steps.append(Step("token", True, time.monotonic() - started,
                                    f"a token for client {request.client_id}{source}"))
            credentials = SmtpCredentials(AuthType.XOAUTH2, smtp.get("user", ""), token.access_token)
    else:
        reached = await _token_endpoint_answers(smtp["authTokenUrl"], http)
        if isinstance(reached, Failure):
            failure = reached
        else:
            probe.oauth = "reachable"
            probe.steps.append(Step("token endpoint", True, time.monotonic() - started, reached))
    if failure is not None:
        probe.oauth = "failed"
        probe.steps.append(Step("token" if secret else "token endpoint", False, time.monotonic() - started,
                                failure.message))
        probe.findings.append(Finding.of(Check.PROBE_TOKEN_FAILED, realm, failure.message, failure.reason.value))
    return credentials


def _check_mechanism(realm: str, kind: AuthKind, smtp: Mapping[str, str], offered: frozenset[str],
                     provided: ProvidedSecret | None, probe: RealmProbe, *, report_untested: bool) -> None:
    where = f"{smtp.get('host')}:{stored_target(smtp).port}"
    if not offered:
        failure = no_auth_offered(where)
        probe.smtp = "failed"
        probe.findings.append(Finding.of(Check.PROBE_SMTP_FAILED, realm, failure.message, failure.reason.value))
        return
    if not offered & _MECHANISMS[kind]:
        reason = Reason.XOAUTH2_NOT_OFFERED if kind is AuthKind.TOKEN else Reason.AUTHENTICATION_REJECTED
        wanted = " or ".join(sorted(_MECHANISMS[kind]))
        probe.smtp = "failed"
        probe.findings.append(Finding.of(
            Check.PROBE_SMTP_FAILED, realm,
            f"{where} does not advertise AUTH {wanted}, which Keycloak's {kind.value} authentication needs "
            f"(offers: {' '.join(sorted(offered))})", reason.value))
        return
    if not report_untested:
        return
    secret = "client secret" if kind is AuthKind.TOKEN else "password"
    mismatch = (f" (the Secret found for it, {provided.source}, is for {provided.kind.value} authentication)"
                if provided is not None else "")
    probe.findings.append(Finding.of(
        Check.PROBE_AUTH_NOT_TESTED, realm,
        f"authentication not tested: Keycloak masks the stored {secret}{mismatch}. Give it with --secrets-from "
        "DIR (the files `kcmail export -o DIR` wrote, the Secret filled in), or run `kcmail probe` on the "
        "exported file"))


async def _token_endpoint_answers(url: str, http: httpx.AsyncClient) -> str | Failure:
    """Whether the token endpoint answers at all over trusted TLS, without presenting any credentials.

    Any HTTP status counts: a token endpoint answers a GET with 400 or 405, which is enough to know that
    DNS, the network path and its certificate are in order.
    """
    try:
        response = await http.get(url)
    except (httpx.HTTPError, httpx.InvalidURL) as error:
        return Failure(Reason.TOKEN_ENDPOINT_UNREACHABLE,
                       f"cannot reach the token endpoint {url}: {redact(_cause(error))}")
    return f"{httpx.URL(url).host} answered HTTP {response.status_code} (no credentials sent)"


def _cause(error: BaseException) -> str:
    root: BaseException = error
    while root.__cause__ is not None or root.__context__ is not None:
        nested = root.__cause__ or root.__context__
        assert nested is not None
        root = nested
    verify_message = getattr(root, "verify_message", None)
    if verify_message:
        return f"TLS certificate not trusted: {verify_message}"
    return f"{type(root).__name__}: {root}"
