"""When a MailConfig's periodic passes and probes happen: at its own slot in every interval.

Each MailConfig owns a fixed phase within its interval, derived from its uid, and its periodic passes
run when the wall clock reaches that phase. MailConfigs created together (an Argo CD sync of hundreds)
therefore spread evenly over the interval from their second pass on, and stay spread across operator
restarts: a new process computes the same slots, because they depend on the uid and the clock only.
A jittered sleep spreads them too, but only as far as the jitter reaches (±10 % put half of a
thousand MailConfigs' probes into one tenth of the interval after a restart), and not at all across a
restart. Prometheus spreads its scrapes over the interval the same way, by a hash of the target.
"""

from __future__ import annotations

import datetime
import hashlib

from kcmail.probes import parse_time

# A pass that ran a little early or late still counts as its slot's pass.
SLOT_TOLERANCE_SECONDS = 1.0
# The least time between a pass and the next slot: a pass that ends just before its slot must not run twice.
MIN_GAP_SECONDS = 1.0


def phase(uid: str) -> float:
    """Where in the interval this object's slots fall, as a fraction in [0, 1), uniform over uids."""
    digest = hashlib.blake2b(uid.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def next_slot(after: float, interval: float, offset: float) -> float:
    """The first slot strictly after ``after`` (seconds since the epoch): offset·interval + k·interval."""
    start = offset * interval
    periods = (after - start) // interval + 1
    return start + periods * interval


def seconds_to_next_pass(now: float, interval: datetime.timedelta, offset: float) -> float:
    """How long to sleep after a pass that ended at ``now`` until the next periodic pass."""
    seconds = interval.total_seconds()
    return next_slot(now + MIN_GAP_SECONDS, seconds, offset) - now


def probe_due(last_probe: object, interval: datetime.timedelta, offset: float, now: datetime.datetime, *,
              forced: bool) -> bool:
    """Probe when asked to, when never probed, or once this object's slot has come after the last probe.

    The slot that makes a probe due is the first one at least half an interval after the last probe:
    probes run every interval at the slot, and a probe run off the slot (on creation, after a change or
    an outage) is followed by the slot's within 0.5 to 1.5 intervals, after which they keep to the slot.
    After a restart only the MailConfigs whose slot passed while the operator was down probe at once.
    """
    if forced:
        return True
    last = parse_time(last_probe)
    if last is None:
        return True
    seconds = interval.total_seconds()
    due = next_slot(last.timestamp() + seconds / 2, seconds, offset)
    return now.timestamp() + SLOT_TOLERANCE_SECONDS >= due
