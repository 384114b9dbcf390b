"""When a MailConfig is probed."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kcmail.probes import probe_due

pytestmark = pytest.mark.unit

NOW = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)
TEN_MINUTES = datetime.timedelta(minutes=10)


def test_never_probed_is_due():
    assert probe_due(None, TEN_MINUTES, NOW, forced=False)


def test_due_once_an_interval_has_passed_since_the_last_probe():
    assert not probe_due("2026-11-28T11:55:00Z", TEN_MINUTES, NOW, forced=False)
    assert probe_due("2026-11-28T11:50:00Z", TEN_MINUTES, NOW, forced=False)


def test_forced_is_due_at_once():
    assert probe_due("2026-11-28T11:59:59Z", TEN_MINUTES, NOW, forced=True)


def test_an_unreadable_time_counts_as_never():
    assert probe_due("yesterday", TEN_MINUTES, NOW, forced=False)


@given(st.integers(min_value=0, max_value=100_000), st.integers(min_value=30, max_value=86_400))
def test_due_exactly_when_the_elapsed_time_reaches_the_interval(elapsed, interval):
    last = (NOW - datetime.timedelta(seconds=elapsed)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert probe_due(last, datetime.timedelta(seconds=interval), NOW, forced=False) == (elapsed >= interval)
