"""Measure 5 at its small levels: a fresh operator's peak memory with no MailConfig and with a few.

The full level (and the one with unrelated Secrets) is taken in ``scale``, on the same MailConfigs.
Each level is its own `kcmail run`, so VmHWM (peak resident memory since the process started) covers
exactly that level's start-up, its MailConfigs' first passes and a settled moment after them.
"""

from __future__ import annotations

import time
from typing import Any

from bench import workload
from bench.cluster import LABEL, AppliedWatch
from bench.context import Bench

NAMESPACE = "bench-memory"
PHASE = "memory"
SETTLE_SECONDS = 10.0


def empty(b: Bench) -> dict[str, Any]:
    operator = b.start_operator()
    try:
        time.sleep(SETTLE_SECONDS)
        return {"mailconfigs": 0, **operator.memory_mib()}
    finally:
        operator.stop()


def small(b: Bench) -> dict[str, Any]:
    """``small`` MailConfigs on the first realms of the scale set; they are deleted again afterwards."""
    count = b.sizes.small
    operator = b.start_operator()
    try:
        b.cluster.create_all([workload.namespace(NAMESPACE)])
        objects = [obj for i in range(count)
                   for obj in workload.tenant(b.env, NAMESPACE, f"mem-{i:04d}", workload.realm(i), PHASE,
                                              interval=b.sizes.interval)]
        with AppliedWatch(b.cluster, f"{LABEL}={PHASE}") as watch:
            b.cluster.create_all(objects)
            watch.wait(count, timeout=max(120.0, 2.0 * count))
        time.sleep(SETTLE_SECONDS)
        measured = {"mailconfigs": count, **operator.memory_mib()}
        b.cluster.delete_mailconfigs([NAMESPACE], f"{LABEL}={PHASE}", timeout=max(120.0, count * 1.0))
        return measured
    finally:
        operator.stop()
