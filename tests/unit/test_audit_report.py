"""The audit's table for people and JSON for scripts, and the options that say where Keycloak is."""

from __future__ import annotations

import argparse
import json

import pytest

from kcmail.adopt.audit import Audit, RealmAudit
from kcmail.adopt.findings import Check, Finding, Severity, audit_realm, shown_settings
from kcmail.adopt.live_probe import RealmProbe, stored_target
from kcmail.adopt.report import render_json, render_text
from kcmail.adopt.target import TargetError, add_arguments, connection_ref, target
from kcmail.smtp_probe import Step
from kcmail.spec import ConnectionKind, ConnectionRef, Security

pytestmark = pytest.mark.unit

CANARY = "canary-secret-value"
BASIC = {"host": "smtp.office365.com", "port": "587", "starttls": "true", "auth": "true", "user": "u@acme.example",
         "password": CANARY, "from": "u@acme.example", "debug": "true"}


def _audit(probe: RealmProbe | None = None) -> Audit:
    version = (26, 7, 3)
    realms = [RealmAudit("acme", shown_settings(BASIC), audit_realm("acme", BASIC, version), probe),
              RealmAudit("empty", {}, audit_realm("empty", {}, version))]
    return Audit(url="https://kc.example", version=version, realms=realms)


def test_the_json_document_lists_realms_findings_and_the_verdict():
    document = json.loads(render_json(_audit(), Severity.ERROR))
    assert document["keycloak"] == {"url": "https://kc.example", "version": "26.7.3"}
    assert document["failOn"] == "error"
    assert document["failed"] is True
    assert document["summary"] == {"realms": 2, "info": 1, "warning": 1, "error": 1}
    acme, empty = document["realms"]
    assert {(f["id"], f["severity"]) for f in acme["findings"]} == {("basic-auth-retired", "error"),
                                                                    ("debug-enabled", "warning")}
    assert acme["smtpServer"]["password"] == "**********"
    assert empty["findings"][0]["id"] == "smtp-not-configured"
    assert "probe" not in acme


def test_the_verdict_follows_the_threshold():
    assert json.loads(render_json(_audit(), Severity.ERROR))["failed"] is True
    clean = Audit(url="https://kc.example", version=(26, 7, 3), realms=[RealmAudit("empty", {}, audit_realm(
        "empty", {}, (26, 7, 3)))])
    assert json.loads(render_json(clean, Severity.WARNING))["failed"] is False
    assert render_text(clean, Severity.WARNING).endswith("PASSED: no finding at or above warning.\n")
    assert render_text(clean, Severity.INFO).endswith("FAILED: findings at or above info (exit 1).\n")


def test_the_table_has_a_row_per_realm_and_per_finding_most_severe_first():
    lines = render_text(_audit(), Severity.ERROR).splitlines()
    assert lines[0] == "Keycloak https://kc.example (26.7.3): 2 realm(s); findings: 1 error, 1 warning, 1 info"
    assert lines[2].split() == ["REALM", "SMTP", "SERVER", "SECURITY", "AUTH", "FROM"]
    assert lines[3].split() == ["acme", "smtp.office365.com:587", "StartTLS", "basic", "u@acme.example",
                                "u@acme.example"]
    assert lines[4].split() == ["empty", "-", "-", "-", "-"]
    assert lines[6].split() == ["SEVERITY", "REALM", "FINDING", "MESSAGE"]
    findings = [line.split()[:3] for line in lines[7:10]]
    assert findings == [["error", "acme", "basic-auth-retired"], ["warning", "acme", "debug-enabled"],
                        ["info", "empty", "smtp-not-configured"]]


def test_probe_results_appear_with_their_reason_and_steps():
    failure = Finding(Check.PROBE_SMTP_FAILED, Severity.ERROR, "acme", "cannot connect", "SMTPUnreachable")
    probe = RealmProbe(oauth="not needed", smtp="failed", steps=[Step("connect", False, 0.0123, "cannot connect")],
                       findings=[failure])
    audit = _audit(probe)
    audit.realms[0].findings.append(failure)
    text = render_text(audit, Severity.ERROR, probed=True)
    assert "PROBE" in text.splitlines()[2]
    assert "SMTPUnreachable" in text.splitlines()[3]
    document = json.loads(render_json(audit, Severity.ERROR))
    assert document["realms"][0]["probe"] == {"token": "not needed", "smtp": "failed", "steps": [
        {"name": "connect", "ok": False, "seconds": 0.012, "detail": "cannot connect"}]}
    assert {"id": "probe-smtp-failed", "severity": "error", "message": "cannot connect",
            "reason": "SMTPUnreachable"} in document["realms"][0]["findings"]


def test_no_output_carries_a_secret_even_one_keycloak_returned_unmasked():
    for text in (render_json(_audit(), Severity.ERROR), render_text(_audit(), Severity.ERROR, probed=True)):
        assert CANARY not in text


@pytest.mark.parametrize(("smtp", "port", "security"), [
    ({"host": "h", "port": "2525", "starttls": "true"}, 2525, Security.STARTTLS),
    ({"host": "h", "ssl": "true"}, 465, Security.SSL),
    ({"host": "h"}, 25, Security.NONE),
])
def test_the_probe_meets_the_server_where_keycloaks_mailer_would(smtp, port, security):
    target = stored_target(smtp | {"connectionTimeout": "2500", "timeout": "4000", "writeTimeout": "7000"})
    assert (target.host, target.port, target.security) == ("h", port, security)
    assert (target.connect_timeout, target.timeout) == (2.5, 7.0)
    assert stored_target(smtp).connect_timeout == 10.0
    # JavaMail's 0 means "wait forever"; a probe must end.
    assert stored_target(smtp | {"connectionTimeout": "0"}).connect_timeout == 10.0
    assert stored_target(smtp | {"port": "99999"}).port == (465 if security is Security.SSL else 25)


@pytest.mark.parametrize(("text", "expected"), [
    ("main", ConnectionRef(ConnectionKind.CLUSTER, "main")),
    ("ClusterKeycloakConnection/main", ConnectionRef(ConnectionKind.CLUSTER, "main")),
    ("KeycloakConnection/kc", ConnectionRef(ConnectionKind.NAMESPACED, "kc")),
])
def test_a_connection_is_named_with_an_optional_kind(text, expected):
    assert connection_ref(text) == expected


@pytest.mark.parametrize("text", ["Connection/kc", "KeycloakConnection/", ""])
def test_a_wrong_connection_name_is_refused_with_the_choices(text):
    with pytest.raises(argparse.ArgumentTypeError):
        connection_ref(text)


def _options(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    parser.add_argument("--namespace")
    return parser.parse_args(argv)


@pytest.mark.parametrize(("argv", "message"), [
    ((), "say which Keycloak"),
    (("--connection", "main", "--url", "https://kc.example"), "not both"),
    (("--url", "https://kc.example", "--username", "admin"), "--password-file"),
    (("--connection", "KeycloakConnection/kc"), "give its --namespace"),
])
async def test_options_that_do_not_say_how_to_reach_keycloak_are_refused_before_any_call(argv, message):
    with pytest.raises(TargetError, match=message):
        await target(_options(*argv))


async def test_admin_secrets_come_from_files_without_their_trailing_newline(tmp_path):
    (tmp_path / "pw").write_text("s3cret\n")
    chosen = await target(_options("--url", "https://kc.example", "--username", "admin", "--password-file",
                                   str(tmp_path / "pw")))
    assert (chosen.credentials.username, chosen.credentials.password) == ("admin", "s3cret")
    assert "s3cret" not in repr(chosen)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(TargetError, match="is empty"):
        await target(_options("--url", "https://kc.example", "--client-id", "sa", "--client-secret-file",
                              str(tmp_path / "empty")))
