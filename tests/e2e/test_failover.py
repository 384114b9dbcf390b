"""Two `kcmail run` at once, as the chart's two replicas or a laptop run beside the Deployment: one leads
and writes each change to Keycloak exactly once, the other waits (answering its liveness probe), and when
the leader is killed mid-burst the follower takes over and every MailConfig converges to its latest spec.

Keycloak's admin events count the writes: every PUT of the realm is an UPDATE event of resource type
REALM, whoever sends it. The session's own operator is stopped meanwhile, so the two are the only writers.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from bench.smtp_log import SmtpLog

from kcmail.devenv import operator_env
from kcmail.devenv.processes import ProcessRegistry, ServerProcess, free_port, wait_until

pytestmark = pytest.mark.e2e

LEADING = "leading: holding Lease"
FOLLOWING = "following: Lease"
# A follower takes over once the killed leader's lease (15 s) has run out, within a jittered retry
# period (up to 4.4 s); then kopf starts and lists what it watches.
TAKEOVER_SECONDS = 60
MAILCONFIGS = 3


@dataclass
class Candidate:
    process: ServerProcess
    liveness: str

    def log(self) -> str:
        return self.process.log.read_text(errors="replace")


@pytest.fixture
def candidates(alone, tenant, tmp_path_factory) -> Iterator[tuple[Candidate, Candidate]]:
    """Two operators for the tenant's namespace electing on a Lease there: (leader, follower)."""
    registry = ProcessRegistry(tmp_path_factory.mktemp("candidates"))
    started = []
    for number in (1, 2):
        liveness = f"http://127.0.0.1:{free_port()}/healthz"
        process = operator_env.start_operator(
            tenant.env, registry, name=f"candidate-{number}", leader_election=True,
            args=["-n", tenant.namespace, "--leader-election-namespace", tenant.namespace, "--liveness", liveness])
        started.append(Candidate(process, liveness))
    try:
        for candidate in started:
            wait_until(lambda c=candidate: LEADING in c.log() or FOLLOWING in c.log(), server=candidate.process,
                       what="its place in the election", timeout=60)
        (leader,) = [c for c in started if LEADING in c.log()]
        (follower,) = [c for c in started if c is not leader]
        yield leader, follower
    finally:
        registry.stop_all()


def _writes(tenant, realm: str) -> int:
    return len(tenant.admin.admin_events(realm, operation="UPDATE", resource_type="REALM"))


def _mailconfig(tenant, name: str, realm: str, version: int) -> dict:
    return tenant.mailconfig(name, realm=realm, sender={"from": "no-reply@acme.example",
                                                         "fromDisplayName": f"{realm} v{version}"})


def test_two_operators_at_once_write_each_change_to_keycloak_once(tenant, candidates):
    leader, follower = candidates
    # The follower runs no kopf yet, and still answers the kubelet's liveness probe.
    assert httpx.get(follower.liveness, timeout=10).status_code == 200
    tenant.admin.record_admin_events(tenant.realm)
    before = _writes(tenant, tenant.realm)
    smtp = SmtpLog(tenant.env.state_dir / "logs" / "smtp.log")
    smtp_from = smtp.offset()
    tenant.apply(tenant.secret(), _mailconfig(tenant, "mail", tenant.realm, 0))
    tenant.wait_condition("True", "Delivering")
    changes = 3
    for version in range(1, changes + 1):
        tenant.apply(_mailconfig(tenant, "mail", tenant.realm, version))
        tenant.wait_condition("True", "Delivering")
        assert tenant.smtp_server()["fromDisplayName"] == f"{tenant.realm} v{version}"
    # The creation and each change: one write apiece, however many operators run, and one probe apiece (a
    # write makes the last probe stale), each an SMTP session of the test server's; nothing else sends there
    # while the session's operator is stopped.
    assert _writes(tenant, tenant.realm) == before + 1 + changes
    assert len(smtp.since(smtp_from)) == 1 + changes
    marker = f"MailConfig {tenant.namespace}/mail: reconciled"
    assert marker in leader.log()
    assert marker not in follower.log()
    assert "Starting the watch-stream" not in follower.log()
    assert "MailConfig watch" not in follower.log()


def test_when_the_leader_is_killed_mid_burst_the_follower_takes_over_and_nothing_is_lost(tenant, candidates):
    leader, follower = candidates
    realms = [tenant.realm] + [f"{tenant.realm}-{uuid.uuid4().hex[:4]}" for _ in range(MAILCONFIGS - 1)]
    for realm in realms[1:]:
        operator_env.create_realm(tenant.env, realm)
    names = [f"mail-{index}" for index in range(MAILCONFIGS)]
    try:
        tenant.apply(tenant.secret(), *(_mailconfig(tenant, n, r, 0) for n, r in zip(names, realms, strict=True)))
        for name in names:
            tenant.wait_condition("True", "Delivering", name=name)
        # A burst of changes, the leader killed in the middle of it, and more changes while nobody leads.
        tenant.apply(*(_mailconfig(tenant, n, r, 1) for n, r in zip(names, realms, strict=True)))
        os.killpg(leader.process.pid, signal.SIGKILL)
        tenant.apply(*(_mailconfig(tenant, n, r, 2) for n, r in zip(names, realms, strict=True)))
        wait_until(lambda: LEADING in follower.log(), server=follower.process, what="taking over the Lease",
                   timeout=TAKEOVER_SECONDS)
        for name, realm in zip(names, realms, strict=True):
            tenant.wait_condition("True", "Delivering", name=name, timeout=TAKEOVER_SECONDS)
            assert tenant.admin.realm(realm)["smtpServer"]["fromDisplayName"] == f"{realm} v2"
        assert not leader.process.alive()
    finally:
        operator_env.kubectl(tenant.env, "-n", tenant.namespace, "delete", "mailconfigs", "--all", "--wait=false")
        for realm in realms[1:]:
            tenant.admin.request("DELETE", f"/{realm}")
