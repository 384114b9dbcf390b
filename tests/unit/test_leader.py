"""The leader election's decisions: who may claim the Lease, when a follower may take over, when a leader
must stop, and what a claim, a renewal and a release write."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kcmail import cli, leader, metrics
from kcmail.leader import (
    CLIENT_GO,
    Decision,
    LeaseRecord,
    Observation,
    Timings,
    claim,
    decide,
    must_stop,
    observe,
    released,
)

pytestmark = pytest.mark.unit

T0 = datetime.datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=datetime.UTC)


def held_by(holder: str, *, renewed: datetime.datetime = T0, transitions: int = 2) -> LeaseRecord:
    return LeaseRecord(holder=holder, duration_seconds=15, acquire_time=T0, renew_time=renewed,
                       transitions=transitions)


def test_client_go_timings_are_kcmails():
    assert (CLIENT_GO.lease_duration, CLIENT_GO.renew_deadline, CLIENT_GO.retry_period) == (15, 10.0, 2.0)


@pytest.mark.parametrize(("duration", "deadline", "retry"), [(10, 10.0, 2.0), (15, 2.0, 2.0), (15, 10.0, 0.0)])
def test_timings_where_a_leader_could_act_beside_its_successor_are_refused(duration, deadline, retry):
    with pytest.raises(ValueError, match="must"):
        Timings(lease_duration=duration, renew_deadline=deadline, retry_period=retry)


def test_a_lease_held_by_another_waits_until_its_record_went_unchanged_for_its_duration():
    seen = Observation(held_by("pod-a"), seen_at=100.0)
    assert decide(seen, "pod-b", 100.0, leading=False) is Decision.WAIT
    assert decide(seen, "pod-b", 114.9, leading=False) is Decision.WAIT
    assert decide(seen, "pod-b", 115.0, leading=False) is Decision.CLAIM


def test_a_lease_with_no_holder_or_our_own_name_is_ours_to_claim():
    assert decide(Observation(held_by(""), 100.0), "pod-b", 100.0, leading=False) is Decision.CLAIM
    assert decide(Observation(held_by("pod-b"), 100.0), "pod-b", 100.0, leading=True) is Decision.CLAIM


def test_a_leader_that_reads_another_holder_has_lost_at_once_however_fresh_its_lease():
    assert decide(Observation(held_by("pod-a"), 100.0), "pod-b", 100.0, leading=True) is Decision.LOST


def test_a_renewal_restarts_the_followers_count_and_an_unchanged_record_does_not():
    first = observe(None, held_by("pod-a"), 100.0)
    assert observe(first, held_by("pod-a"), 110.0) is first
    renewed = observe(first, held_by("pod-a", renewed=T0 + datetime.timedelta(seconds=2)), 110.0)
    assert renewed.seen_at == 110.0
    assert decide(renewed, "pod-b", 120.0, leading=False) is Decision.WAIT


def test_a_renewal_keeps_the_acquisition_and_a_takeover_counts_a_transition():
    later = T0 + datetime.timedelta(seconds=30)
    renewal = claim(held_by("pod-a"), "pod-a", 15, later)
    assert (renewal.holder, renewal.acquire_time, renewal.renew_time, renewal.transitions) == ("pod-a", T0, later, 2)
    takeover = claim(held_by("pod-a"), "pod-b", 15, later)
    assert (takeover.holder, takeover.acquire_time, takeover.renew_time, takeover.transitions) == (
        "pod-b", later, later, 3)
    assert claim(None, "pod-b", 15, later).transitions == 0


def test_a_released_lease_is_free_for_any_follower_at_once():
    free = released(held_by("pod-a"), T0)
    assert (free.holder, free.duration_seconds, free.transitions) == ("", 1, 2)
    assert decide(Observation(free, 100.0), "pod-b", 100.0, leading=False) is Decision.CLAIM


def test_a_leader_stops_when_its_renew_deadline_passes():
    assert not must_stop(100.0, 109.9, CLIENT_GO)
    assert must_stop(100.0, 110.0, CLIENT_GO)


@st.composite
def timings(draw: st.DrawFn) -> Timings:
    retry = draw(st.floats(min_value=0.01, max_value=30))
    deadline = draw(st.floats(min_value=retry * leader.JITTER_FACTOR, max_value=120, exclude_min=True))
    duration = draw(st.integers(min_value=int(deadline) + 1, max_value=300))
    return Timings(lease_duration=duration, renew_deadline=deadline, retry_period=retry)


@given(timings(), st.floats(min_value=0, max_value=1e6), st.floats(min_value=0, max_value=1e3),
       st.floats(min_value=0, max_value=60))
def test_no_follower_may_take_over_before_the_leader_stopped(timing, renewed_at, seen_after, margin):
    # The leader's last renewal started at renewed_at; the follower saw its record no earlier than that.
    record = LeaseRecord("leader", timing.lease_duration, T0, T0, 0)
    observation = Observation(record, seen_at=renewed_at + seen_after)
    takeover = observation.seen_at + timing.lease_duration + margin
    assert decide(observation, "follower", takeover, leading=False) is Decision.CLAIM
    assert must_stop(renewed_at, takeover, timing)
    assert decide(observation, "follower", takeover - margin - 1e-3, leading=False) is Decision.WAIT


@given(st.datetimes(min_value=datetime.datetime(1971, 1, 1), max_value=datetime.datetime(9000, 1, 1),
                    timezones=st.just(datetime.UTC)))
def test_lease_times_survive_the_round_trip_through_the_api(moment):
    record = LeaseRecord("a", 15, moment, moment, 1)
    assert LeaseRecord.from_lease({"spec": record.spec()}) == record


def test_a_lease_as_the_api_server_returns_it_is_read_whole():
    lease = {"metadata": {"resourceVersion": "7"},
             "spec": {"holderIdentity": "kcmail-7d9f_1a2b3c4d", "leaseDurationSeconds": 15,
                      "acquireTime": "2026-05-01T12:00:00.123456Z", "renewTime": "2026-05-01T12:00:00.123456Z",
                      "leaseTransitions": 2}}
    assert LeaseRecord.from_lease(lease) == held_by("kcmail-7d9f_1a2b3c4d")
    assert LeaseRecord.from_lease({"spec": {}}) == LeaseRecord("", 0, None, None, 0)


def test_identity_is_the_pod_and_a_suffix_in_a_cluster_and_host_and_process_outside():
    environ = {"HOSTNAME": "kcmail-7d9f-x2"}
    assert leader.identity(environ, in_cluster=True, hostname="node", pid=1, suffix="ab12") == "kcmail-7d9f-x2_ab12"
    assert leader.identity(environ, in_cluster=False, hostname="laptop", pid=4242, suffix="ab12") == "laptop_4242"


def test_the_lease_namespace_is_the_pods_own_else_the_documented_default(tmp_path: Path):
    namespace_file = tmp_path / "namespace"
    assert leader.default_namespace(namespace_file, "kcmail-system") == "kcmail-system"
    namespace_file.write_text("ops\n")
    assert leader.default_namespace(namespace_file, "kcmail-system") == "ops"


@pytest.mark.parametrize("name", ["Kcmail", "-kcmail", "kcmail_1", "a" * 254])
def test_a_lease_name_kubernetes_would_refuse_is_refused_at_once(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", f"--leader-election-id={name}"])
    assert exit_.value.code == 2
    assert f"{name!r} is not an object name" in capsys.readouterr().err


class _InstantElector:
    """Leads at once, keeps the Lease until cancelled, and records its release."""

    namespace, name = "kcmail-system", "kcmail-shard-blue"

    def __init__(self) -> None:
        self.released = False

    async def acquire(self) -> None:
        return None

    async def keep(self) -> None:
        await asyncio.Event().wait()

    async def release(self) -> None:
        self.released = True


async def test_the_leader_metric_is_1_while_this_process_acts_and_0_once_it_stopped():
    elector = _InstantElector()
    gauge = metrics.LEADER.labels("kcmail-system/kcmail-shard-blue")
    seen: list[float] = []

    async def operate(stop: asyncio.Event) -> None:
        seen.append(gauge._value.get())

    assert await leader.lead(elector, operate, liveness=None) is True  # type: ignore[arg-type]
    assert seen == [1.0]
    assert gauge._value.get() == 0.0
    assert elector.released


def test_kopf_is_given_the_lease_identity_so_it_never_looks_up_the_user():
    # A container's numeric user has no password-database entry: kopf's own default identity
    # (getpass.getuser) ended every pod of the chart at start-up before kcmail gave it one.
    import inspect

    import kopf

    options = cli.kopf_options(("team-a",), liveness="http://0.0.0.0:8081/healthz", identity="kcmail-abc_1234")
    assert options["identity"] == "kcmail-abc_1234"
    assert options["standalone"] is True
    assert options["clusterwide"] is False
    for entry in (kopf.run, kopf.operator):
        assert set(options) <= set(inspect.signature(entry).parameters), entry


async def test_the_operators_cleanup_steps_down_before_kopf_finishes_stopping():
    """The Lease is released from kopf's cleanup, with the renewals stopped first, not after kopf's final sweep
    of the tasks it started (which left a renewal's session unable to release on a loaded node)."""
    renewals: list[str] = []

    class Elector(_InstantElector):
        async def keep(self) -> None:
            while True:
                renewals.append("renewed")
                await asyncio.sleep(0.01)

        async def release(self) -> None:
            renewals.append("released")
            self.released = True

    elector = Elector()
    gauge = metrics.LEADER.labels("kcmail-system/kcmail-shard-blue")
    after_step_down: list[tuple[bool, float]] = []

    async def operate(stop: asyncio.Event) -> None:
        await asyncio.sleep(0.05)
        await leader.step_down()  # what kcmail's kopf cleanup handler does
        after_step_down.append((elector.released, gauge._value.get()))
        await asyncio.sleep(0.05)  # the rest of kopf's shutdown: no renewal may happen now

    assert await leader.lead(elector, operate, liveness=None) is True  # type: ignore[arg-type]
    assert after_step_down == [(True, 0.0)]
    assert renewals[-1] == "released"
    assert renewals.count("released") == 1
    assert "renewed" in renewals
    # Outside lead() (--no-leader-election) it does nothing.
    await leader.step_down()
    assert renewals.count("released") == 1
