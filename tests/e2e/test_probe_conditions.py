"""What the operator reports from its probes, each outcome from a real cause on the real servers.

The settings reach Keycloak in every case (Applied=True): the probes say whether the mail Keycloak will
send gets through, and why not, in the token endpoint's or the SMTP server's own words.
"""

from __future__ import annotations

import contextlib
import email
import json
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from kcmail.devenv.environment import REFUSED_DOMAIN
from kcmail.devenv.mail_spool import wait_for_message
from kcmail.devenv.processes import free_port

pytestmark = pytest.mark.e2e

WRONG_SECRET = f"wrong-{uuid.uuid4().hex}"


def _conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}


def _wrong_secret(tenant) -> dict[str, Any]:
    return tenant.secret(**{"client-id": tenant.env.issuer_client_id, "client-secret": WRONG_SECRET})


def _probe_failed(tenant, reason: str, failed: str) -> dict[str, dict[str, Any]]:
    """Wait for Ready=False with ``reason``; check the settings were applied and ``failed`` is the step."""
    conditions = _conditions(tenant.wait_condition("False", reason))
    assert (conditions["Applied"]["status"], conditions["Applied"]["reason"]) == ("True", "InSync")
    assert (conditions[failed]["status"], conditions[failed]["reason"]) == ("False", reason)
    assert conditions["Ready"]["message"] == conditions[failed]["message"]
    # A probe failure can pass by itself (a provider outage): it is retried every interval, not Stalled.
    assert "Stalled" not in conditions
    return conditions


def _events(tenant) -> list[tuple[str, str]]:
    """(type, reason) of the MailConfig's Events in the order they were stored.

    Timestamps have one-second resolution; the resourceVersion of a new object grows with every write
    to the (one) etcd, so it orders Events posted within the same second.
    """
    events = sorted(tenant.events(), key=lambda e: int(e["metadata"]["resourceVersion"]))
    return [(e["type"], e["reason"]) for e in events]


def _wait_events(tenant, predicate, what: str, timeout: float = 20) -> list[tuple[str, str]]:
    deadline = time.monotonic() + timeout
    events = _events(tenant)
    while not predicate(events) and time.monotonic() < deadline:
        time.sleep(0.5)
        events = _events(tenant)
    assert predicate(events), f"{what}: events are {events}"
    return events


def test_a_wrong_client_secret_is_invalid_client_in_keycloaks_words_and_fixing_it_recovers(operator, tenant):
    tenant.apply(_wrong_secret(tenant), tenant.mailconfig())
    conditions = _probe_failed(tenant, "InvalidClient", "TokenAcquired")
    message = conditions["TokenAcquired"]["message"]
    # Keycloak's own answer: its error code (unauthorized_client for a wrong secret) and error_description.
    assert "HTTP 401: unauthorized_client: Invalid client or Invalid client credentials" in message
    # The SMTP server was reached, but AUTH needs the token: the step says it was skipped, and why.
    smtp = conditions["SMTPAuthenticated"]
    assert (smtp["status"], smtp["reason"]) == ("Unknown", "Skipped")
    assert "TokenAcquired: InvalidClient" in smtp["message"]
    _wait_events(tenant, lambda ev: ("Warning", "InvalidClient") in ev, "a Warning for the failure")
    obj = tenant.get("mailconfig", "mail")
    for text in (json.dumps(obj), json.dumps(tenant.events()), operator.log()):
        assert WRONG_SECRET not in text
        assert tenant.env.issuer_client_secret not in text

    # The right secret: the Secret change wakes the MailConfig, the new secret is written, the probe passes.
    tenant.apply(tenant.secret())
    ready = tenant.wait_condition("True", "Delivering", timeout=30)
    recovered = _conditions(ready)
    assert (recovered["TokenAcquired"]["status"], recovered["TokenAcquired"]["reason"]) == ("True", "TokenIssued")
    assert recovered["Ready"]["lastTransitionTime"] >= conditions["Ready"]["lastTransitionTime"]
    events = _wait_events(tenant, lambda ev: ("Normal", "Delivering") in ev, "a Normal Event for the recovery")
    assert events.index(("Warning", "InvalidClient")) < events.index(("Normal", "Delivering"))


def test_an_unknown_scope_is_invalid_scope(operator, tenant):
    mailconfig = tenant.mailconfig()
    mailconfig["spec"]["auth"]["xoauth2"]["scope"] = "no.such.scope"
    tenant.apply(tenant.secret(), mailconfig)
    conditions = _probe_failed(tenant, "InvalidScope", "TokenAcquired")
    assert "invalid_scope" in conditions["TokenAcquired"]["message"]


def test_a_closed_smtp_port_is_smtp_unreachable(operator, tenant):
    port = free_port()
    tenant.apply(tenant.secret(), tenant.mailconfig(smtp={"host": "localhost", "port": port,
                                                          "security": "StartTLS"}))
    conditions = _probe_failed(tenant, "SMTPUnreachable", "SMTPAuthenticated")
    assert conditions["TokenAcquired"]["status"] == "True"
    assert f"localhost:{port}" in conditions["SMTPAuthenticated"]["message"]


def test_a_mailbox_the_client_may_not_send_as_is_authentication_rejected_with_the_reply(operator, tenant,
                                                                                        mail_server):
    smtp = {"host": "localhost", "port": mail_server.starttls_port, "security": "StartTLS"}
    tenant.apply(tenant.secret(), tenant.mailconfig(mailbox="ceo@acme.example", smtp=smtp))
    conditions = _probe_failed(tenant, "AuthenticationRejected", "SMTPAuthenticated")
    assert conditions["TokenAcquired"]["status"] == "True"
    message = conditions["SMTPAuthenticated"]["message"]
    assert "535" in message
    assert "ceo@acme.example" in message


def test_an_mta_that_cuts_the_auth_line_is_rejected_with_the_line_length_hint(operator, tenant):
    # Postfix with its default line_length_limit (2048): the probe fails as Keycloak's own login would.
    smtp = {"host": "localhost", "port": tenant.env.postfix_short_line_port, "security": "StartTLS"}
    tenant.apply(tenant.secret(), tenant.mailconfig(smtp=smtp))
    message = _probe_failed(tenant, "AuthenticationRejected", "SMTPAuthenticated")["SMTPAuthenticated"]["message"]
    assert "Invalid base64 data in initial response" in message
    assert "Postfix: line_length_limit" in message


def test_a_send_probe_delivers_a_labelled_message(operator, tenant, mail_server):
    recipient = f"mail-probe-{tenant.namespace}@acme.example"
    smtp = {"host": "localhost", "port": mail_server.starttls_port, "security": "StartTLS"}
    tenant.apply(tenant.secret(), tenant.mailconfig(probe={"smtp": "Send", "recipient": recipient}, smtp=smtp))
    status = tenant.wait_condition("True", "Delivering")["status"]
    mailconfig = f"{tenant.namespace}/mail"
    received = wait_for_message(mail_server.spool, lambda m: recipient in m.rcpt_tos, timeout=30)
    message = email.message_from_string(received.data)
    assert message["X-Kcmail-MailConfig"] == mailconfig
    assert message["X-Kcmail-Probe"]
    assert "kcmail" in message["Subject"]
    assert mailconfig in message["Subject"]
    assert message["X-Kcmail-Probe"] in message["Subject"]
    assert received.auth is not None
    assert (received.auth.mechanism, received.auth.user) == ("XOAUTH2", "no-reply@acme.example")
    if mail_server.records_client:
        assert received.auth.client_id == tenant.env.issuer_client_id
    for field in ("lastProbeTime", "lastSuccessfulProbeTime", "tokenExpiresAt"):
        assert status.get(field), field
    assert status["lastSuccessfulProbeTime"] == status["lastProbeTime"]
    assert status["tokenExpiresAt"] > status["lastProbeTime"]


def test_a_send_probe_to_a_refused_recipient_is_recipient_rejected(operator, tenant):
    recipient = f"nobody@{REFUSED_DOMAIN}"
    tenant.apply(tenant.secret(), tenant.mailconfig(probe={"smtp": "Send", "recipient": recipient}))
    conditions = _probe_failed(tenant, "RecipientRejected", "SMTPAuthenticated")
    assert recipient in conditions["SMTPAuthenticated"]["message"]
    assert "550" in conditions["SMTPAuthenticated"]["message"]
    status = tenant.get("mailconfig", "mail")["status"]
    assert status.get("lastProbeTime")
    assert "lastSuccessfulProbeTime" not in status


def test_probes_off_is_ready_in_sync_without_probing(operator, tenant):
    tenant.apply(_wrong_secret(tenant), tenant.mailconfig(probe={"smtp": "Off"}))
    ready = tenant.wait_condition("True", "InSync")
    conditions = _conditions(ready)
    smtp = conditions["SMTPAuthenticated"]
    assert (smtp["status"], smtp["reason"]) == ("Unknown", "ProbesDisabled")
    # The wrong secret would fail a token probe; none ran.
    assert "TokenAcquired" not in conditions
    assert "lastProbeTime" not in ready["status"]


@pytest.mark.parametrize(("secret_ok", "ready", "event"), [
    (True, ("True", "Delivering"), ("Normal", "Delivering")),
    (False, ("False", "InvalidClient"), ("Warning", "InvalidClient")),
], ids=["ready", "failing"])
def test_events_are_posted_on_transitions_only(operator, tenant, secret_ok, ready, event):
    tenant.apply(tenant.secret() if secret_ok else _wrong_secret(tenant), tenant.mailconfig())
    tenant.wait_condition(*ready)
    first = _wait_events(tenant, lambda ev: event in ev, f"the {event} Event for the transition")

    # A forced pass that probes again and finds everything as it was: a status write, no Event.
    requested = str(time.time())
    annotated = tenant.kubectl("annotate", "mailconfig", "mail", "--overwrite", f"kcmail.io/requested-at={requested}")
    assert annotated.returncode == 0, annotated.stderr
    probed = tenant.wait_for(lambda o: (o.get("status") or {}).get("lastHandledRequestedAt") == requested,
                             what="the requested pass")
    assert _conditions(probed)["Ready"]["reason"] == ready[1]
    # Events are posted right after the status; give a wrongly posted one time to show.
    time.sleep(3)
    assert _events(tenant) == first


@contextlib.contextmanager
def _silent_smtp_server() -> Iterator[int]:
    """A loopback port that accepts connections and never sends the SMTP greeting: a hung mail server.

    No real server hangs on demand; this one speaks exactly as much SMTP as a hung one, on a real socket.
    """
    with socket.create_server(("127.0.0.1", 0), backlog=16) as listener:
        yield listener.getsockname()[1]


def test_applied_is_reported_before_a_probe_that_waits_for_a_silent_smtp_server(operator, tenant):
    timeout = 20
    with _silent_smtp_server() as port:
        smtp = {"host": "127.0.0.1", "port": port, "security": "StartTLS",
                "timeouts": {"connect": f"{timeout}s", "read": f"{timeout}s", "write": f"{timeout}s"}}
        tenant.apply(tenant.secret(), tenant.mailconfig(smtp=smtp))
        started = time.monotonic()
        # The realm holds the settings long before the probe gives up on the server.
        applied = tenant.wait_condition("True", "InSync", kind="Applied", timeout=timeout - 5)
        assert time.monotonic() - started < timeout
        conditions = _conditions(applied)
        assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("Unknown", "Progressing")
        assert (conditions["SMTPAuthenticated"]["status"], conditions["SMTPAuthenticated"]["reason"]) == (
            "Unknown", "Progressing")
        assert conditions["Reconciling"]["status"] == "True"
        assert "lastProbeTime" not in applied["status"]
        assert tenant.smtp_server()["port"] == str(port)
        # Then the probe's verdict, in the same pass.
        failed = _conditions(tenant.wait_condition("False", name="mail", timeout=3 * timeout))
    assert failed["SMTPAuthenticated"]["status"] == "False"
    assert failed["Applied"]["status"] == "True"
    events = _events(tenant)
    assert ("Normal", "SettingsApplied") in events
    # The step under way is no news: no Event says Progressing.
    assert not [e for e in events if e[1] == "Progressing"]
