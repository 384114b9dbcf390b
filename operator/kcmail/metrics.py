"""Every Prometheus metric the operator exports, in one place, and the HTTP server that serves them.

The controller's passes and the Prober record into these; observe, decide, act and the pure modules never import
this module: timings travel back to the edges in results (probe Steps carry their seconds).
``docs/metrics.md`` documents each metric; a test keeps the page and this module equal.

Per-MailConfig series (labels ``namespace`` and ``name``) exist for the token expiry and the Ready
condition only: one series each per MailConfig, removed when the MailConfig is deleted, so their number follows the
number of MailConfigs and nothing else. Other labels take values from fixed lists (results, the reason
catalogue, probe stages).
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)

from kcmail.conditions import ConditionType, Reason, Status

# `*_created` series double every counter for a value nobody alerts on.
disable_created_metrics()

REGISTRY = CollectorRegistry()
# The standard process_* and python_* families: memory, CPU, open files, garbage collection.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

DEFAULT_ADDRESS = "0.0.0.0:8080"
DISABLED = "off"
# A reconcile pass that raised (a Kubernetes API error, the unforeseen) has no Ready reason of its own.
RECONCILE_ERROR = "ReconcileError"

RECONCILES = Counter(
    "kcmail_reconciles", "Passes of the MailConfig reconcile, by result and Ready reason.",
    ["result", "reason"], registry=REGISTRY)
RECONCILE_DURATION = Histogram(
    "kcmail_reconcile_duration_seconds", "Time one reconcile pass took, probes and status write included.",
    registry=REGISTRY, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
PROBES = Counter(
    "kcmail_probes", "Probes run (SMTP, with the token at AUTH), by result and reason.", ["result", "reason"],
    registry=REGISTRY)
PROBE_DURATION = Histogram(
    "kcmail_probe_duration_seconds",
    "Time each probe stage took: token (a request to the token endpoint; cached tokens are not counted), "
    "connect, ehlo, starttls, auth, send.",
    ["stage"], registry=REGISTRY, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
CHANGE_HOLDS = Counter(
    "kcmail_change_holds", "Passes that held a change back: its probe failed while the realm's settings may "
    "still deliver (ChangeHeld).", registry=REGISTRY)
PROBES_IN_FLIGHT = Gauge(
    "kcmail_probes_in_flight", "Probes running now; never above --probe-concurrency.", registry=REGISTRY)
TOKEN_EXPIRY = Gauge(
    "kcmail_token_expiry_timestamp_seconds",
    "When the token the last probe of a MailConfig obtained expires (Unix time).", ["namespace", "name"],
    registry=REGISTRY)
LEADER = Gauge(
    "kcmail_leader", "1 while this process holds its election's Lease and acts, 0 while it follows.",
    ["lease"], registry=REGISTRY)
MAILCONFIG_READY = Gauge(
    "kcmail_mailconfig_ready",
    "1 for each MailConfig, labelled with its Ready condition's status and reason as the operator last set it.",
    ["namespace", "name", "status", "reason"], registry=REGISTRY)

# The Ready labels each MailConfig's series carries now, so that a change replaces the old series.
_ready_labels: dict[tuple[str, str], tuple[str, str]] = {}


def parse_address(value: str) -> tuple[str, int] | None:
    """``HOST:PORT``, ``:PORT`` (all interfaces), ``[::]:PORT`` → (host, port); ``off`` → None."""
    if value.strip().lower() == DISABLED:
        return None
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT with a port from 1 to 65535 (or {DISABLED!r})")
    # A Pod's metrics are scraped from outside it: all interfaces, as with the default address.
    host = host.removeprefix("[").removesuffix("]") or "0.0.0.0"  # noqa: S104
    return host, int(port_text)


def serve(host: str, port: int) -> None:
    """Serve ``/metrics`` from a thread of its own: scrapes never wait on the event loop, nor it on them."""
    start_http_server(port, host, registry=REGISTRY)


def reconcile_result(ready: Mapping[str, Any] | None, *, wrote: bool) -> tuple[str, str]:
    """A pass's ``result`` and ``reason`` labels, from the Ready condition it computed (pure).

    failed: Ready is False for a cause other than suspension; suspended: spec.suspend; applied: the pass
    wrote to Keycloak and nothing failed; in_sync: every other pass. The reason is Ready's.
    """
    status = (ready or {}).get("status")
    reason = str((ready or {}).get("reason") or Reason.PROGRESSING.value)
    if status == Status.FALSE.value:
        return ("suspended" if reason == Reason.SUSPENDED.value else "failed"), reason
    return ("applied" if wrote else "in_sync"), reason


def _condition(status: Mapping[str, Any], kind: ConditionType) -> Mapping[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind.value), None)


def _timestamp(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def record_pass(namespace: str, name: str, status: Mapping[str, Any], previous: Mapping[str, Any], *,
                wrote: bool, seconds: float) -> None:
    """One finished pass: ``status`` is what it wrote, ``previous`` the status it started from."""
    ready = _condition(status, ConditionType.READY)
    RECONCILES.labels(*reconcile_result(ready, wrote=wrote)).inc()
    RECONCILE_DURATION.observe(seconds)
    if ready is not None:
        _set_ready(namespace, name, str(ready.get("status")), str(ready.get("reason")))
    applied = _condition(status, ConditionType.APPLIED)
    if applied is not None and applied.get("reason") == Reason.CHANGE_HELD.value:
        CHANGE_HOLDS.inc()
    if _condition(status, ConditionType.TOKEN_ACQUIRED) is None:
        # Not XOAUTH2, probes off, or not reached: there is no token to speak of.
        _remove(TOKEN_EXPIRY, namespace, name)
        return
    # A pass that carried the last probe forward has no new expiry: the status it started from has it.
    expires = _timestamp(status.get("tokenExpiresAt") or previous.get("tokenExpiresAt"))
    if expires is not None:
        TOKEN_EXPIRY.labels(namespace, name).set(expires)


def record_failed_pass(seconds: float) -> None:
    """A pass that raised before it computed a status."""
    RECONCILES.labels("failed", RECONCILE_ERROR).inc()
    RECONCILE_DURATION.observe(seconds)


def forget(namespace: str, name: str) -> None:
    """The MailConfig is gone (deleted, or no longer this shard's): drop its series."""
    _remove(TOKEN_EXPIRY, namespace, name)
    old = _ready_labels.pop((namespace, name), None)
    if old is not None:
        _remove(MAILCONFIG_READY, namespace, name, *old)


def _set_ready(namespace: str, name: str, status: str, reason: str) -> None:
    old = _ready_labels.get((namespace, name))
    if old is not None and old != (status, reason):
        _remove(MAILCONFIG_READY, namespace, name, *old)
    _ready_labels[(namespace, name)] = (status, reason)
    MAILCONFIG_READY.labels(namespace, name, status, reason).set(1)


def _remove(metric: Gauge, *labels: str) -> None:
    # remove() raises KeyError for a series that was never set; absent is what we want either way.
    with contextlib.suppress(KeyError):
        metric.remove(*labels)


def record_probe(stages: list[tuple[str, float]], failure_reason: str | None) -> None:
    """One probe: each stage's seconds, and its result (``failure_reason`` None when it passed)."""
    for stage, seconds in stages:
        PROBE_DURATION.labels(stage).observe(seconds)
    if failure_reason is None:
        PROBES.labels("passed", Reason.AUTHENTICATED.value).inc()
    else:
        PROBES.labels("failed", failure_reason).inc()


def exported_names() -> list[str]:
    """The names of the kcmail_* metrics as they appear in the exposition (counters with ``_total``)."""
    names = []
    for family in REGISTRY.collect():
        if family.name.startswith("kcmail_"):
            names.append(f"{family.name}_total" if family.type == "counter" else family.name)
    return sorted(names)
