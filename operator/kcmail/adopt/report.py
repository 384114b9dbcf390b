"""An audit for people (tables) and for scripts (one JSON document). Pure functions.

Both are built only from the settings as shown (secrets masked, vault references as they are), the
findings' messages and the probe steps' details, none of which carries a secret or a token. What a realm
holds is its admins' text: the tables pass every cell through kcmail.redact (JSON escapes control
characters by itself).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from kcmail.adopt.audit import Audit, RealmAudit
from kcmail.adopt.findings import AuthKind, Severity, auth_kind, security
from kcmail.redact import redact
from kcmail.smtp_settings import version_text


def _version(audit: Audit) -> str:
    return version_text(audit.version)


def _counts(audit: Audit) -> dict[str, int]:
    return {severity.value: sum(1 for f in audit.findings if f.severity is severity) for severity in Severity}


def _auth(realm: RealmAudit) -> str:
    kind = auth_kind(realm.settings)
    if kind is AuthKind.NONE:
        return "none"
    user = realm.settings.get("user", "")
    return f"{kind.value} {user}".strip()


def _server(realm: RealmAudit) -> str:
    host = realm.settings.get("host", "")
    if not host:
        return "-"
    port = realm.settings.get("port", "")
    return f"{host}:{port}" if port else host


def _probe_summary(realm: RealmAudit) -> str:
    probe = realm.probe
    if probe is None or (probe.smtp == "not probed" and not probe.steps):
        return "-"
    failure = next((f for f in probe.findings if f.severity is Severity.ERROR), None)
    if failure is not None:
        return failure.reason or "failed"
    parts = [] if probe.oauth in ("not needed", "not probed") else [f"token {probe.oauth}"]
    parts.append(f"smtp {probe.smtp}")
    return ", ".join(parts)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    # Every cell is the realm's or a server's text: no control character reaches the terminal.
    rows = [[redact(cell) for cell in row] for row in rows]
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]
    lines = []
    for row in (headers, *rows):
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join(cells).rstrip())
    return lines


def render_text(audit: Audit, threshold: Severity, *, probed: bool = False) -> str:
    counts = _counts(audit)
    summary = ", ".join(f"{counts[s.value]} {s.value}" for s in reversed(Severity))
    lines = [f"Keycloak {audit.url} ({_version(audit)}): {len(audit.realms)} realm(s); findings: {summary}", ""]
    headers = ["REALM", "SMTP SERVER", "SECURITY", "AUTH", "FROM"] + (["PROBE"] if probed else [])
    rows = []
    for realm in audit.realms:
        configured = bool(realm.settings.get("host"))
        row = [realm.realm, _server(realm), security(realm.settings) if configured else "-",
               _auth(realm) if configured else "-", realm.settings.get("from", "") or "-"]
        rows.append(row + ([_probe_summary(realm)] if probed else []))
    lines += _table(headers, rows)
    findings = sorted(audit.findings, key=lambda f: (-f.severity.rank, f.realm, f.check.value))
    if findings:
        lines += ["", *_table(["SEVERITY", "REALM", "FINDING", "MESSAGE"],
                              [[f.severity.value, f.realm, f.check.value,
                                f"{f.reason}: {f.message}" if f.reason else f.message] for f in findings])]
    lines.append("")
    if audit.failed(threshold):
        lines.append(f"FAILED: findings at or above {threshold.value} (exit 1).")
    else:
        lines.append(f"PASSED: no finding at or above {threshold.value}.")
    return "\n".join(lines) + "\n"


def _realm_json(realm: RealmAudit) -> dict[str, Any]:
    document: dict[str, Any] = {
        "realm": realm.realm,
        "smtpServer": realm.settings,
        "findings": [{"id": f.check.value, "severity": f.severity.value, "message": f.message,
                      **({"reason": f.reason} if f.reason else {})} for f in realm.findings],
    }
    if realm.probe is not None:
        document["probe"] = {"token": realm.probe.oauth, "smtp": realm.probe.smtp,
                             "steps": [{"name": s.name, "ok": s.ok, "seconds": round(s.seconds, 3), "detail": s.detail}
                                       for s in realm.probe.steps]}
    return document


def render_json(audit: Audit, threshold: Severity) -> str:
    document = {
        "keycloak": {"url": audit.url, "version": _version(audit)},
        "failOn": threshold.value,
        "failed": audit.failed(threshold),
        "summary": {"realms": len(audit.realms), **_counts(audit)},
        "realms": [_realm_json(realm) for realm in audit.realms],
    }
    return json.dumps(document, indent=2) + "\n"
