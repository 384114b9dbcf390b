"""The benchmark harness's quick mode, as CI runs it: one command, its own environment, a well-formed table.

No timing is asserted (CI machines are noisy); what is asserted is that every measure ran on real
servers and produced the numbers the table reports, and that none of the run's secrets reached them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kcmail.devenv.environment import ENV_FILE, Environment

pytestmark = pytest.mark.e2e

MEASURES = ("change_latency", "rotation_latency", "scale", "steady_state", "memory", "probe_load", "failover")


@pytest.fixture(scope="module")
def quick_run(quick_bench) -> tuple[dict, str, Path]:
    # Started when collection ended (conftest.QuickBench), so that it ran beside the tests before this one.
    code, output = quick_bench.result(timeout=1800)
    assert code == 0, output
    out = quick_bench.out
    return json.loads((out / "benchmarks.json").read_text()), (out / "benchmarks.md").read_text(), out


@pytest.mark.timeout(1900)
def test_quick_mode_measures_everything_and_writes_the_table(quick_run):
    results, page, _ = quick_run
    assert results["mode"] == "quick"
    assert results["errors"] == {}
    measures = results["measures"]
    assert sorted(measures) == sorted(MEASURES)
    sizes = results["sizes"]
    assert measures["change_latency"]["operator"]["n"] == sizes["changes"]
    assert measures["change_latency"]["floor"]["n"] == sizes["changes"]
    assert measures["change_latency"]["lone_get_put"]["n"] == sizes["changes"]
    # The realm held every change the status reported, kcmail's and the bare operator's.
    assert measures["change_latency"]["realm_mismatches"] == 0
    assert measures["change_latency"]["floor_realm_mismatches"] == 0
    assert measures["rotation_latency"]["operator"]["n"] == sizes["rotations"]
    assert measures["scale"]["per_mailconfig"]["n"] == sizes["mailconfigs"]
    # Keycloak itself counted the operator's work: one write per MailConfig created, none in steady state.
    assert measures["scale"]["keycloak"]["admin_writes"] >= sizes["mailconfigs"]
    assert measures["steady_state"]["passes"] >= 1
    assert measures["steady_state"]["admin_writes"] == 0
    assert measures["probe_load"]["token_grants"] >= 1
    assert measures["probe_load"]["smtp_sessions"] >= 1
    assert [level["mailconfigs"] for level in measures["memory"]["levels"]][:2] == [0, sizes["small"]]
    # Two replicas on a Lease: the follower wrote nothing, and took over from a killed leader.
    assert measures["failover"]["writes"] == sizes["replica_changes"]
    assert measures["failover"]["failover"]["n"] == sizes["failovers"]
    assert all(level["peak_rss"] > 0 for level in measures["memory"]["levels"])
    for key in ("cpus", "cpu_model", "memory_gib", "load_average"):
        assert results["machine"][key]
    for key in ("kubernetes", "keycloak", "python", "kopf"):
        assert results["versions"][key]

    rows = [line for line in page.splitlines() if line.startswith("| ") and line[2:3].isdigit()]
    assert [row.split(" | ")[0] for row in rows] == ["| 1. Change latency", "| 2. Rotation latency", "| 3. Scale",
                                                      "| 4. Steady state", "| 5. Memory", "| 6. Probe load",
                                                      "| 7. Two replicas, failover"]
    assert all(row.count(" | ") == 5 for row in rows)
    assert "**Quick mode**" in page
    assert results["command"] in page


@pytest.mark.timeout(1900)
def test_no_secret_of_the_run_reaches_the_results(quick_run):
    results, page, out = quick_run
    env = Environment.load(out / "state" / "env" / ENV_FILE)
    written = json.dumps(results) + page
    secrets = {"admin password": env.keycloak_admin_password, "client secret": env.issuer_client_secret,
               "other client secret": env.issuer_other_client_secret, "basic password": env.smtp_basic_password}
    # Names, not values, in the assertion: a failure must not print the secrets.
    assert [name for name, value in secrets.items() if value in written] == []
