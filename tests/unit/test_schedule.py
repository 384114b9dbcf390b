"""When a MailConfig's periodic passes and probes happen: at its own slot in every interval."""

from __future__ import annotations

import datetime
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kcmail.schedule import MIN_GAP_SECONDS, next_slot, phase, probe_due, seconds_to_next_pass

pytestmark = pytest.mark.unit

NOW = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)
TEN_MINUTES = datetime.timedelta(minutes=10)
UID = "3f1c9a52-8d5e-4b7a-9c1e-2a6f0b8d4e11"


def _stamp(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _uids(count: int, seed: int = 7) -> list[str]:
    # Fixed uids, so that the spread measured is the same on every run.
    return [str(uuid.UUID(int=(seed * 1_000_003 + i) * 0x9E3779B97F4A7C15 % 2**128)) for i in range(count)]


def test_the_phase_is_a_fraction_fixed_by_the_uid():
    assert phase(UID) == phase(UID)
    assert 0.0 <= phase(UID) < 1.0
    assert phase(UID) != phase(UID.replace("1", "2"))


@given(st.floats(min_value=1.6e9, max_value=2.0e9), st.integers(min_value=30, max_value=86_400),
       st.floats(min_value=0.0, max_value=0.999999))
def test_the_next_slot_is_the_first_time_at_the_phase_after_the_given_one(after, interval, offset):
    slot = next_slot(after, interval, offset)
    assert after < slot <= after + interval + 1e-6
    periods = (slot - offset * interval) / interval
    assert periods == pytest.approx(round(periods), abs=1e-6)


@given(st.floats(min_value=1.6e9, max_value=2.0e9), st.integers(min_value=30, max_value=86_400))
def test_passes_repeat_exactly_one_interval_apart(now, interval):
    every = datetime.timedelta(seconds=interval)
    first = now + seconds_to_next_pass(now, every, phase(UID))
    second = first + seconds_to_next_pass(first, every, phase(UID))
    assert second - first == pytest.approx(interval, abs=1e-3)


def test_a_pass_just_before_its_slot_does_not_run_again_at_the_slot():
    interval = 600.0
    slot = next_slot(NOW.timestamp(), interval, phase(UID))
    delay = seconds_to_next_pass(slot - MIN_GAP_SECONDS / 2, TEN_MINUTES, phase(UID))
    assert delay == pytest.approx(interval + MIN_GAP_SECONDS / 2)


def test_never_probed_is_due():
    assert probe_due(None, TEN_MINUTES, phase(UID), NOW, forced=False)


def test_forced_is_due_at_once():
    assert probe_due(_stamp(NOW), TEN_MINUTES, phase(UID), NOW, forced=True)


def test_an_unreadable_time_counts_as_never():
    assert probe_due("yesterday", TEN_MINUTES, phase(UID), NOW, forced=False)


def test_a_probe_at_the_slot_makes_the_next_due_at_the_next_slot_and_not_before():
    offset = phase(UID)
    slot = next_slot(NOW.timestamp(), 600.0, offset)
    last = datetime.datetime.fromtimestamp(slot, datetime.UTC)
    just_before = datetime.datetime.fromtimestamp(slot + 600.0 - 5, datetime.UTC)
    at_the_slot = datetime.datetime.fromtimestamp(slot + 600.0, datetime.UTC)
    assert not probe_due(_stamp(last), TEN_MINUTES, offset, just_before, forced=False)
    assert probe_due(_stamp(last), TEN_MINUTES, offset, at_the_slot, forced=False)


@given(st.floats(min_value=0.0, max_value=0.999999), st.floats(min_value=0.0, max_value=1.0))
def test_a_probe_off_the_slot_is_followed_within_half_to_one_and_a_half_intervals(offset, where):
    interval = 600.0
    # Status times have whole seconds: the slot is reckoned from the last probe as the status records it.
    last = (NOW + datetime.timedelta(seconds=where * interval)).replace(microsecond=0)
    due = next_slot(last.timestamp() + interval / 2, interval, offset)
    assert interval / 2 <= due - last.timestamp() <= 1.5 * interval + 1
    before = datetime.datetime.fromtimestamp(due - 2, datetime.UTC)
    at = datetime.datetime.fromtimestamp(due, datetime.UTC)
    assert not probe_due(_stamp(last), TEN_MINUTES, offset, before, forced=False)
    assert probe_due(_stamp(last), TEN_MINUTES, offset, at, forced=False)


def _densest_tenth(moments: list[float], interval: float) -> float:
    moments = sorted(moments)
    width, best, start = interval / 10, 0, 0
    for end, moment in enumerate(moments):
        while moment - moments[start] > width:
            start += 1
        best = max(best, end - start + 1)
    return best / len(moments)


def test_a_thousand_mailconfigs_created_at_once_probe_evenly_from_their_second_probe_on():
    """The burst an Argo CD sync makes spreads out after one interval, as periodic passes find each probe due."""
    interval, uids = 300.0, _uids(1000)
    created = NOW.timestamp()
    second = []
    for uid in uids:
        # Each probe runs on the first periodic pass that finds it due.
        moment = created + seconds_to_next_pass(created, datetime.timedelta(seconds=interval), phase(uid))
        for _ in range(3):
            at = datetime.datetime.fromtimestamp(moment, datetime.UTC)
            if probe_due(_stamp(NOW), datetime.timedelta(seconds=interval), phase(uid), at, forced=False):
                break
            moment += interval
        second.append(moment)
    assert max(second) - created <= 1.5 * interval + 1
    assert _densest_tenth(second, interval) <= 0.13  # 0.10 if perfectly even


def test_after_a_restart_only_mailconfigs_whose_slot_passed_while_down_probe_at_once():
    interval, uids = datetime.timedelta(minutes=5), _uids(1000, seed=11)
    restart = NOW + datetime.timedelta(seconds=50)  # down for 50 s: a sixth of the interval
    due_at_restart = 0
    for uid in uids:
        last_slot = next_slot(NOW.timestamp() - 300.0, 300.0, phase(uid))  # each probed at its slot before NOW
        last = datetime.datetime.fromtimestamp(last_slot, datetime.UTC)
        due_at_restart += probe_due(_stamp(last), interval, phase(uid), restart, forced=False)
    assert 0.12 <= due_at_restart / len(uids) <= 0.22
