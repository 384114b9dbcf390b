"""Measure 7: two replicas on a Lease. Writes per change while both run, and how long a change made the
moment the leader is killed (SIGKILL: no release) waits for the follower to apply it."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from bench import stats, workload
from bench.cluster import LABEL, applied, ready
from bench.context import Bench, say
from bench.keycloak_counts import REALM
from bench.operator_proc import OperatorProcess

NAMESPACE = REALM_NAME = "bench-failover"
NAME = "mail"
GOAL_SECONDS = 20.0
# What kcmail.leader logs once a process holds the Lease.
LEADING = "leading: holding Lease"
_TIMEOUT = 90.0
_POLL_SECONDS = 0.2


def extra_realms() -> list[str]:
    return [REALM_NAME]


def failover(b: Bench) -> dict[str, Any]:
    # Every other operator stopped: the two replicas' requests are the only admin writes Keycloak sees.
    b.stop_operators()
    b.cluster.create_all([workload.namespace(NAMESPACE)])
    b.cluster.create_all(workload.tenant(b.env, NAMESPACE, NAME, REALM_NAME, "failover", interval="10m"))
    replicas = [b.start_operator(settle=False, election_namespace=NAMESPACE) for _ in range(2)]
    try:
        b.cluster.wait_for(NAMESPACE, NAME, "0", ready, timeout=_TIMEOUT)
        before = b.counts.scrape()
        for i in range(b.sizes.replica_changes):
            _change(b, f"replicas {i}")
        writes = b.counts.delta(before).requests(method="PUT", uri=REALM)
        samples: list[float] = []
        for i in range(b.sizes.failovers):
            leader = _leader(replicas)
            os.killpg(leader.pid, signal.SIGKILL)
            samples.append(_change(b, f"failover {i}"))
            replicas.remove(leader)
            replicas.append(b.start_operator(settle=False, election_namespace=NAMESPACE))
    finally:
        # While a replica leads, so that the finalizer is released and later measures meet no such MailConfig.
        b.cluster.delete_mailconfigs([NAMESPACE], f"{LABEL}=failover", timeout=_TIMEOUT)
        for replica in replicas:
            replica.stop()
    took = stats.summary(samples)
    per_change = writes / b.sizes.replica_changes
    say(f"two replicas: {per_change:.2f} writes per change; leader killed → change applied: "
        f"{', '.join(f'{sample:.1f} s' for sample in took.get('samples', []))}")
    return {
        "writes": writes, "changes": b.sizes.replica_changes, "writes_per_change": per_change,
        "failover": took,
        "goal": f"exactly 1 write per change with two replicas; failover p50 under {GOAL_SECONDS:.0f} s",
        "met": writes == b.sizes.replica_changes and took.get("p50") is not None and took["p50"] < GOAL_SECONDS,
        "timing": ("two `kcmail run` watch the namespace and elect on a Lease there (client-go's timings: 15 s "
                   "lease, 10 s renew deadline, 2 s retry). Writes: Keycloak's count of PUTs to a realm over "
                   f"{b.sizes.replica_changes} spec changes, each waited for until Applied. Failover: the clock "
                   "starts when the leader is killed with SIGKILL (it cannot release the Lease) and a spec change "
                   "is patched at once; it stops when the status says Applied for the new generation. A new "
                   "replica is started after each sample, so that two run again."),
    }


def _change(b: Bench, value: str) -> float:
    """Patch the sender's display name; seconds until the status says the realm holds it."""
    started = time.perf_counter()
    patched = b.cluster.patch_mailconfig(NAMESPACE, NAME, {"spec": {"sender": {"fromDisplayName": value}}})
    generation = patched["metadata"]["generation"]
    _, seen = b.cluster.wait_for(NAMESPACE, NAME, patched["metadata"]["resourceVersion"],
                                 lambda o, g=generation: applied(o, g), timeout=_TIMEOUT)
    if (b.admin.realm(REALM_NAME).get("smtpServer") or {}).get("fromDisplayName") != value:
        raise RuntimeError(f"the status says Applied, the realm does not hold {value!r}")
    return seen - started


def _leader(replicas: list[OperatorProcess]) -> OperatorProcess:
    """The replica whose log says it leads; a replica started after the last failover may still be waiting."""
    deadline = time.monotonic() + _TIMEOUT
    while time.monotonic() < deadline:
        leading = [r for r in replicas if r.process.alive() and LEADING in r.process.log.read_text(errors="replace")]
        if len(leading) == 1:
            return leading[0]
        time.sleep(_POLL_SECONDS)
    raise TimeoutError(f"no single leader among {len(replicas)} replicas within {_TIMEOUT:.0f} s")
