"""The metrics module: its page in the docs, its address option, and how passes become series."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from kcmail import metrics
from kcmail.conditions import Reason

pytestmark = pytest.mark.unit

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def _documented() -> list[str]:
    return re.findall(r"^\| `(kcmail_[a-z_]+)` \|", DOCS.read_text(), flags=re.MULTILINE)


def test_the_docs_list_exactly_the_metrics_the_module_registers():
    documented = _documented()
    assert len(documented) == len(set(documented)), "a metric has two rows"
    assert sorted(documented) == metrics.exported_names()


def test_every_documented_metric_has_its_type_in_the_docs():
    types = dict(re.findall(r"^\| `(kcmail_[a-z_]+)` \| (\w+) \|", DOCS.read_text(), flags=re.MULTILINE))
    registered = {f"{f.name}_total" if f.type == "counter" else f.name: f.type
                  for f in metrics.REGISTRY.collect() if f.name.startswith("kcmail_")}
    assert types == registered


@pytest.mark.parametrize(("value", "expected"), [
    ("0.0.0.0:8080", ("0.0.0.0", 8080)),  # noqa: S104 (parsed, not bound)
    ("127.0.0.1:9090", ("127.0.0.1", 9090)),
    (":9090", ("0.0.0.0", 9090)),  # noqa: S104
    ("[::]:9090", ("::", 9090)),
    ("off", None),
    ("OFF", None),
])
def test_metrics_addresses_that_parse(value, expected):
    assert metrics.parse_address(value) == expected


@pytest.mark.parametrize("value", ["8080", "host:", "host:http", "host:0", "host:65536", ""])
def test_metrics_addresses_that_are_refused(value):
    with pytest.raises(ValueError, match="HOST:PORT"):
        metrics.parse_address(value)


@pytest.mark.parametrize(("ready", "wrote", "expected"), [
    ({"status": "True", "reason": "Delivering"}, False, ("in_sync", "Delivering")),
    ({"status": "True", "reason": "Delivering"}, True, ("applied", "Delivering")),
    ({"status": "True", "reason": "InSync"}, True, ("applied", "InSync")),
    ({"status": "False", "reason": "InvalidClient"}, True, ("failed", "InvalidClient")),
    ({"status": "False", "reason": "KeycloakUnreachable"}, False, ("failed", "KeycloakUnreachable")),
    ({"status": "False", "reason": "Suspended"}, False, ("suspended", "Suspended")),
    ({"status": "Unknown", "reason": "Progressing"}, False, ("in_sync", "Progressing")),
    (None, False, ("in_sync", "Progressing")),
])
def test_a_pass_is_labelled_by_its_ready_condition_and_whether_it_wrote(ready, wrote, expected):
    assert metrics.reconcile_result(ready, wrote=wrote) == expected


def _status(ready: str, reason: str, *, token: bool = True, expires: str | None = None) -> dict:
    conditions = [{"type": "Ready", "status": ready, "reason": reason}]
    if token:
        conditions.append({"type": "TokenAcquired", "status": "True", "reason": "TokenIssued"})
    status: dict = {"conditions": conditions}
    if expires:
        status["tokenExpiresAt"] = expires
    return status


def _ready_series(namespace: str) -> dict[tuple[str, str], float]:
    return {(s.labels["status"], s.labels["reason"]): s.value
            for family in metrics.REGISTRY.collect() if family.name == "kcmail_mailconfig_ready"
            for s in family.samples if s.labels["namespace"] == namespace}


def _expiry(namespace: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("kcmail_token_expiry_timestamp_seconds",
                                             {"namespace": namespace, "name": "mail"})


def test_a_mailconfig_has_one_ready_series_that_follows_its_condition_and_goes_with_it():
    namespace = f"ns-{uuid.uuid4().hex[:8]}"
    metrics.record_pass(namespace, "mail", _status("False", "InvalidClient"), {}, wrote=True, seconds=0.2)
    assert _ready_series(namespace) == {("False", "InvalidClient"): 1.0}
    metrics.record_pass(namespace, "mail", _status("True", "Delivering"), {}, wrote=False, seconds=0.1)
    assert _ready_series(namespace) == {("True", "Delivering"): 1.0}
    metrics.forget(namespace, "mail")
    assert _ready_series(namespace) == {}


def test_the_token_expiry_comes_from_this_pass_else_the_last_probe_and_goes_without_a_token():
    namespace = f"ns-{uuid.uuid4().hex[:8]}"
    metrics.record_pass(namespace, "mail", _status("True", "Delivering", expires="2030-01-01T00:00:00Z"), {},
                        wrote=True, seconds=0.1)
    assert _expiry(namespace) == 1893456000.0
    # A pass that carried the probe forward: the status it started from holds the expiry.
    metrics.record_pass(namespace, "mail", _status("True", "Delivering"),
                        {"tokenExpiresAt": "2030-01-01T00:01:00Z"}, wrote=False, seconds=0.1)
    assert _expiry(namespace) == 1893456060.0
    # Switched to Basic (no TokenAcquired condition): no token, no series.
    metrics.record_pass(namespace, "mail", _status("True", "Delivering", token=False),
                        {"tokenExpiresAt": "2030-01-01T00:01:00Z"}, wrote=True, seconds=0.1)
    assert _expiry(namespace) is None


def test_passes_count_by_result_and_reason():
    def count(result: str, reason: str) -> float:
        return metrics.REGISTRY.get_sample_value("kcmail_reconciles_total",
                                                 {"result": result, "reason": reason}) or 0.0

    before = (count("failed", "SMTPUnreachable"), count("failed", metrics.RECONCILE_ERROR))
    namespace = f"ns-{uuid.uuid4().hex[:8]}"
    metrics.record_pass(namespace, "mail", _status("False", "SMTPUnreachable"), {}, wrote=False, seconds=0.1)
    metrics.record_failed_pass(0.1)
    assert (count("failed", "SMTPUnreachable"), count("failed", metrics.RECONCILE_ERROR)) == (
        before[0] + 1, before[1] + 1)
    metrics.forget(namespace, "mail")


def test_probes_count_by_result_and_time_each_stage():
    def sample(name: str, labels: dict[str, str]) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    passed = sample("kcmail_probes_total", {"result": "passed", "reason": "Authenticated"})
    failed = sample("kcmail_probes_total", {"result": "failed", "reason": "InvalidScope"})
    auth = sample("kcmail_probe_duration_seconds_count", {"stage": "auth"})
    metrics.record_probe([("token", 0.05), ("connect", 0.01), ("auth", 0.02)], None)
    metrics.record_probe([("token", 0.04)], Reason.INVALID_SCOPE.value)
    assert sample("kcmail_probes_total", {"result": "passed", "reason": "Authenticated"}) == passed + 1
    assert sample("kcmail_probes_total", {"result": "failed", "reason": "InvalidScope"}) == failed + 1
    assert sample("kcmail_probe_duration_seconds_count", {"stage": "auth"}) == auth + 1


def test_run_stops_with_a_clear_message_when_the_metrics_port_is_taken():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run([sys.executable, "-m", "kcmail.cli", "run", "--metrics-address", f"127.0.0.1:{port}"],
                             capture_output=True, text=True, timeout=60, check=False,
                             env={**os.environ, "KUBECONFIG": "/nonexistent"})
    assert run.returncode == 2, run.stderr
    assert f"kcmail: cannot serve metrics on 127.0.0.1:{port}:" in run.stderr
    assert "Traceback" not in run.stderr
