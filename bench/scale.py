"""Measures 3, 4 and 6, and memory at full size: many MailConfigs at once, then their steady state.

Scale creates every MailConfig at once against the floor of a bare concurrent script doing the same
GET+PUT pairs. Steady state restarts the operator over the applied MailConfigs and watches one full
interval: what Keycloak counted (reads, writes, token grants) and what the SMTP server saw (sessions,
how many at once, how they spread over the interval).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from typing import Any

from bench import cpu, stats, workload
from bench.cluster import LABEL, AppliedWatch
from bench.context import Bench, say
from bench.floor import concurrent_get_put
from bench.operator_proc import OperatorProcess

SCALE_GOAL = 1.5
MEMORY_GOAL_MIB = 150.0
# The densest tenth of the interval may hold at most twice its even share of the probes.
SPREAD_GOAL = 0.2
PHASE = "scale"


def realms(b: Bench) -> list[str]:
    return [workload.realm(i) for i in range(b.sizes.mailconfigs)]


def _tenants(b: Bench) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    secrets, mailconfigs = [], []
    for i in range(b.sizes.mailconfigs):
        namespace = workload.scale_namespace(i, b.sizes.per_namespace)
        secret, mailconfig = workload.tenant(b.env, namespace, f"mail-{i:04d}", workload.realm(i), PHASE,
                                             interval=b.sizes.interval)
        secrets.append(secret)
        mailconfigs.append(mailconfig)
    return secrets, mailconfigs


def namespaces(b: Bench) -> list[str]:
    return sorted({workload.scale_namespace(i, b.sizes.per_namespace) for i in range(b.sizes.mailconfigs)})


def scale(b: Bench) -> tuple[dict[str, Any], OperatorProcess]:
    n = b.sizes.mailconfigs
    secrets, mailconfigs = _tenants(b)
    b.cluster.create_all(workload.namespace(name) for name in namespaces(b))
    b.cluster.create_all(secrets)
    base = workload.desired(b.env, mailconfigs[0])
    floors: dict[str, float] = {}
    meter = cpu.CpuMeter(b.env.state_dir)
    floor_cpu: dict[str, dict[str, float]] = {}
    for concurrency in b.sizes.floor_concurrency:
        def floor_change(representation: dict[str, Any], tag: str = f"floor {concurrency}") -> None:
            representation["smtpServer"] = {**base, "fromDisplayName": tag}

        before_floor = meter.sample()
        floors[str(concurrency)] = asyncio.run(concurrent_get_put(b.env, realms(b), floor_change, concurrency))
        floor_cpu[str(concurrency)] = cpu.used(before_floor, meter.sample())
        say(f"scale floor: {n} GET+PUT pairs, {concurrency} at a time: {floors[str(concurrency)]:.1f} s")
    floor = min(floors.values())
    operator = b.start_operator()
    before = b.counts.scrape()
    before_cpu = meter.sample({"operator": operator.pid})
    with AppliedWatch(b.cluster, f"{LABEL}={PHASE}") as watch:
        started = time.perf_counter()
        sent = b.cluster.create_all(mailconfigs)
        created = time.perf_counter() - started
        watch.wait(n, timeout=max(300.0, 2.0 * n))
    total = max(watch.applied_at.values()) - started
    spent = cpu.used(before_cpu, meter.sample({"operator": operator.pid}))
    delta = b.counts.delta(before)
    latencies = [watch.applied_at[key] - sent[key] for key in sent]
    ratio = stats.ratio(total, floor)
    say(f"scale: {n} MailConfigs applied in {total:.1f} s (floor {floor:.1f} s)")
    return {
        "mailconfigs": n, "seconds": round(total, 3), "per_second": round(n / total, 2),
        "create_calls_seconds": round(created, 3), "per_mailconfig": stats.summary(latencies),
        "floor": {"seconds_by_concurrency": {k: round(v, 3) for k, v in floors.items()}, "seconds": round(floor, 3),
                  "per_second": round(n / floor, 2)},
        "ratio": ratio, "goal": f"within {SCALE_GOAL}x of the floor", "met": ratio is not None and ratio <= SCALE_GOAL,
        "keycloak": {"realm_reads": delta.realm_reads(), "admin_writes": delta.admin_writes(),
                     "admin_requests": delta.admin_requests_by_uri()},
        "operator_memory_mib": operator.memory_mib(), "operator_cpu_seconds": spent.get("operator"),
        "cpu_seconds": {"operator_run": spent, "floor_runs": floor_cpu,
                        "available_per_second": len(os.sched_getaffinity(0))},
        "timing": ("realms, namespaces and Secrets exist beforehand (realm creation is reported as setup). "
                   "The clock starts before the first MailConfig create call (16 client threads) and stops at the "
                   "watch event that shows the last one Applied for generation 1. Per-MailConfig: from its own "
                   "create call to its Applied event. Floor: the same realms' GET+PUT pairs by a bare asyncio "
                   "httpx script on one warm admin token, at each listed concurrency; the fastest counts. "
                   "cpu_seconds: user+system CPU of each server's process group (and the operator's) during "
                   "the operator's run and during each floor run, from /proc."),
    }, operator


def steady_state(b: Bench, operator: OperatorProcess) -> tuple[dict[str, Any], dict[str, Any], OperatorProcess]:
    """Restart over the applied MailConfigs and watch one interval from the old process's exit; measures 4 and 6."""
    n, interval = b.sizes.mailconfigs, float(b.sizes.interval_seconds)
    # The window opens once the old process has exited. Until then it may still finish passes that came due
    # while the scale burst held Keycloak, which are the scale's backlog, not the restart's cost.
    operator.stop()
    before = b.counts.scrape()
    smtp_offset = b.smtp.offset()
    restarted = time.time()
    operator = b.start_operator(settle=False)
    say("steady state: operator restarted; watching one interval")
    # Ready MailConfigs wait for their slots after a start, so the restart and the interval are one window.
    # A second shorter than the interval, so that a pass a little late at the window's start and on time
    # at its end is not counted twice.
    time.sleep(max(0.0, restarted + interval - 1 - time.time()))
    window_end = time.time()
    window = b.counts.delta(before)
    passes = operator.reconciles()
    reads, writes = window.realm_reads(), window.admin_writes()
    steady = {
        "mailconfigs": n, "interval_seconds": interval, "seconds": round(window_end - restarted, 1),
        "passes": passes, "realm_reads": reads, "admin_writes": writes,
        "reads_per_mailconfig": round(reads / n, 3), "admin_requests": window.admin_requests_by_uri(),
        "writes": writes,
        "goal": "zero writes across the restart and the interval; at most one realm read per MailConfig per interval",
        "met": writes == 0 and reads <= n,
        "timing": ("Keycloak's own request counters (http_server_requests_seconds_count by method and URI "
                   "template), read once the old operator has exited and one interval less a second later. The "
                   "new process's first pass of a Ready MailConfig waits for that MailConfig's slot in the "
                   "interval, so the window holds the restart and one full interval: each MailConfig's pass "
                   "once. Writes are every PUT, POST, DELETE or PATCH under /admin."),
    }
    probes = _probe_load(b, window, b.smtp.since(smtp_offset), restarted, restarted, window_end)
    say(f"steady state: {writes} writes, {reads / n:.2f} reads per MailConfig over the restart and one interval")
    return steady, probes, operator


def _probe_load(b: Bench, counted: Any, sessions: list[Any], restarted: float, window_start: float,
                window_end: float) -> dict[str, Any]:
    n, interval, bound = b.sizes.mailconfigs, float(b.sizes.interval_seconds), b.sizes.probe_concurrency
    lifetime = float(b.admin.realm(b.env.issuer_realm).get("accessTokenLifespan") or 300)
    elapsed = window_end - restarted
    # Every scale Secret holds the same client: one credential, whatever the number of Secrets.
    credentials = 1
    grants = counted.token_grants(b.env.issuer_realm, b.env.issuer_client_id)
    floor = credentials * math.ceil(elapsed / lifetime)
    in_window = [s.started for s in sessions if window_start <= s.started <= window_end]
    peak = max((s.open for s in sessions), default=0)
    densest = stats.densest(in_window, interval / 10)
    share = densest / n
    per_lifetime = grants / credentials / math.ceil(elapsed / lifetime)
    met = per_lifetime <= 1.0 and peak <= bound and share <= SPREAD_GOAL
    say(f"probe load: {grants} token grants (floor {floor}), peak {peak} SMTP sessions (bound {bound}), "
        f"densest tenth of the interval {share:.0%}")
    return {
        "mailconfigs": n, "interval_seconds": interval, "token_lifetime_seconds": lifetime,
        "seconds_observed": round(elapsed, 1), "credentials": credentials, "secrets": n,
        "token_grants": grants, "token_grants_floor": floor,
        "token_grants_per_credential_per_lifetime": round(per_lifetime, 3),
        "smtp_sessions": len(sessions), "smtp_sessions_in_interval": len(in_window),
        "smtp_peak_concurrent": peak, "probe_concurrency_bound": bound,
        "densest_tenth_of_interval": densest, "densest_tenth_share": round(share, 3),
        "goal": ("one token grant per credential per token lifetime; concurrent SMTP sessions never above the "
                 f"bound; no tenth of the interval holds more than {SPREAD_GOAL:.0%} of the MailConfigs' probes"),
        "met": met,
        "timing": ("from the old operator's exit before the restart to the end of the steady-state interval. Token "
                   "grants: Keycloak's keycloak_user_events_total{event=client_login} for the issuer realm and "
                   "the client every scale Secret holds. SMTP sessions: the test SMTP server logs each "
                   "connection with the number open at that moment. Spread: the most probe sessions that "
                   "began within any stretch of a tenth of the interval, over the number of MailConfigs "
                   "(10 % when perfectly spread, 100 % for one burst)."),
    }


def with_unrelated_secrets(b: Bench, operator: OperatorProcess, mailconfigs: int) -> tuple[dict[str, Any],
                                                                                        OperatorProcess]:
    """Peak memory of an operator that starts with ``unrelated_secrets`` Secrets nobody refers to."""
    count = b.sizes.unrelated_secrets
    spaces = namespaces(b)
    b.cluster.create_all(workload.namespace(name) for name in spaces)
    started = time.perf_counter()
    b.cluster.create_all(workload.unrelated_secret(spaces[i % len(spaces)], i) for i in range(count))
    say(f"memory: {count} unrelated Secrets created in {time.perf_counter() - started:.1f} s")
    operator.stop()
    operator = b.start_operator(settle=False)
    operator.wait_passes(mailconfigs, timeout=max(120.0, mailconfigs * 0.5))
    time.sleep(10)
    return {"mailconfigs": mailconfigs, "unrelated_secrets": count, "namespaces": len(spaces),
            **operator.memory_mib()}, operator
