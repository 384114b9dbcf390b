"""One audit of a Keycloak: every realm's stored mail settings, the findings in them and, on request, a
live probe of them. The decisions are :mod:`kcmail.adopt.findings`' pure functions; this module reads.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import httpx

from kcmail.adopt.findings import Check, Finding, Severity, audit_realm, reaches, shown_settings, smtp_settings
from kcmail.adopt.live_probe import ProvidedSecret, RealmProbe, probe_realm
from kcmail.answers import TOKEN_ANSWER_LIMIT, limited_client
from kcmail.keycloak import KeycloakClient, KeycloakFailure
from kcmail.oauth import TokenClient
from kcmail.smtp_settings import Version

# Realms probed at once: an audit of a large Keycloak should not open hundreds of SMTP connections.
PROBE_CONCURRENCY = 4
_TOKEN_TIMEOUT = httpx.Timeout(15.0, connect=10.0)


@dataclass
class RealmAudit:
    realm: str
    settings: dict[str, str]  # as shown: secrets masked, vault references as they are
    findings: list[Finding] = field(default_factory=list)
    probe: RealmProbe | None = None


@dataclass
class Audit:
    url: str
    version: Version | None
    realms: list[RealmAudit]

    @property
    def findings(self) -> list[Finding]:
        return [f for realm in self.realms for f in realm.findings]

    def failed(self, threshold: Severity) -> bool:
        return reaches(self.findings, threshold)


async def read_realms(keycloak: KeycloakClient, only: Sequence[str] = ()) -> list[tuple[str, dict[str, str] | None,
                                                                                          str]]:
    """(realm, its ``smtpServer`` map or None, why it could not be read) for every realm, or only ``only``."""
    names = list(only) or sorted(await keycloak.list_realms())
    result: list[tuple[str, dict[str, str] | None, str]] = []
    for name in names:
        try:
            result.append((name, smtp_settings(await keycloak.read_realm(name)), ""))
        except KeycloakFailure as error:
            result.append((name, None, f"{error.failure.reason.value}: {error.failure.message}"))
    return result


async def run_audit(keycloak: KeycloakClient, *, only: Sequence[str] = (), probe: bool = False,
                    secrets: Mapping[str, ProvidedSecret] | None = None,
                    tls: ssl.SSLContext | None = None) -> Audit:
    """Read every realm, find what is wrong, and with ``probe`` meet each one's token endpoint and SMTP server.

    Raises :class:`KeycloakFailure` only when Keycloak itself cannot be read (version, realm list); a realm
    that cannot be read is a finding.
    """
    version = await keycloak.version(fresh=True)
    audits: list[RealmAudit] = []
    stored: dict[str, dict[str, str]] = {}
    for realm, smtp, unreadable in await read_realms(keycloak, only):
        if smtp is None:
            audits.append(RealmAudit(realm, {}, [Finding.of(Check.REALM_UNREADABLE, realm, unreadable)]))
            continue
        stored[realm] = smtp
        audits.append(RealmAudit(realm, shown_settings(smtp), audit_realm(realm, smtp, version)))
    if probe:
        await _probe_all(audits, stored, secrets or {}, tls or ssl.create_default_context())
    return Audit(url=keycloak.url.rstrip("/"), version=version, realms=audits)


async def _probe_all(audits: list[RealmAudit], stored: Mapping[str, Mapping[str, str]],
                     secrets: Mapping[str, ProvidedSecret], tls: ssl.SSLContext) -> None:
    slots = asyncio.Semaphore(PROBE_CONCURRENCY)
    async with limited_client(TOKEN_ANSWER_LIMIT, verify=tls, timeout=_TOKEN_TIMEOUT) as http:
        tokens = TokenClient(http)

        async def one(audit: RealmAudit) -> None:
            async with slots:
                audit.probe = await probe_realm(audit.realm, stored[audit.realm], secrets.get(audit.realm), tokens,
                                                http, tls)
            audit.findings += audit.probe.findings

        await asyncio.gather(*(one(a) for a in audits if a.realm in stored))
