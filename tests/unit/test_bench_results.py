"""The benchmark harness's arithmetic and parsing: percentiles, Keycloak's counters, SMTP sessions, the table."""

from __future__ import annotations

import datetime

import pytest
from bench import cli, report, stats
from bench.keycloak_counts import Delta, parse
from bench.operator_proc import run_args
from bench.smtp_log import sessions
from hypothesis import given
from hypothesis import strategies as st

from kcmail.defaults import KEYCLOAK_CONCURRENCY

pytestmark = pytest.mark.unit

METRICS = """# HELP http_server_requests_seconds HTTP server request processing time
# TYPE http_server_requests_seconds summary
http_server_requests_seconds_count{method="GET",outcome="SUCCESS",status="200",uri="/admin/realms/{realm}"} 7.0
http_server_requests_seconds_count{method="PUT",outcome="SUCCESS",status="204",uri="/admin/realms/{realm}"} 2.0
http_server_requests_seconds_count{method="GET",outcome="SUCCESS",status="200",uri="/admin/serverinfo"} 1.0
http_server_requests_seconds_count{method="POST",outcome="SUCCESS",status="200",\
uri="/realms/{realm}/protocol/{protocol}/token"} 9.0
http_server_requests_seconds_sum{method="GET",outcome="SUCCESS",status="200",uri="/admin/realms/{realm}"} 0.5
keycloak_user_events_total{client_id="smtp-app",error="",event="client_login",realm="issuer"} 4.0
keycloak_user_events_total{client_id="smtp-app",error="invalid_client_credentials",event="client_login",\
realm="issuer"} 3.0
keycloak_user_events_total{client_id="admin-cli",error="",event="login",realm="master"} 5.0
"""


def test_percentiles_are_observed_values_by_nearest_rank():
    samples = [0.5, 0.1, 0.4, 0.2, 0.3]
    assert stats.percentile(samples, 0.5) == 0.3
    assert stats.percentile(samples, 0.95) == 0.5
    assert stats.percentile([0.7], 0.95) == 0.7
    summary = stats.summary(samples)
    assert (summary["n"], summary["p50"], summary["p95"], summary["min"], summary["max"]) == (5, 0.3, 0.5, 0.1, 0.5)


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=200))
def test_the_median_never_exceeds_the_p95_and_both_were_observed(samples):
    p50, p95 = stats.percentile(samples, 0.5), stats.percentile(samples, 0.95)
    assert p50 <= p95
    assert p50 in samples
    assert p95 in samples


def test_the_densest_stretch_counts_a_burst_and_not_an_even_spread():
    assert stats.densest([0.0, 0.1, 0.2, 0.3], width=1.0) == 4
    assert stats.densest([float(i) for i in range(10)], width=1.0) == 1
    assert stats.densest([], width=1.0) == 0


def test_keycloak_counts_reads_writes_and_grants_by_the_server_own_labels():
    # Before: only the first three lines of the exposition had been counted, at lower values.
    before = parse(METRICS.replace("} 7.0", "} 3.0").replace("} 2.0", "} 1.0"))
    before = {key: value for key, value in before.items() if "keycloak_user_events_total" not in key[0]}
    after = parse(METRICS)
    delta = Delta({key: after[key] - before.get(key, 0.0) for key in after})
    assert delta.realm_reads() == 4
    # PUT of a realm is a write; a POST to the token endpoint is not an admin write.
    assert delta.admin_writes() == 1
    # Failed grants (error set) are not tokens issued.
    assert delta.token_grants("issuer", "smtp-app") == 4
    assert delta.admin_logins() == 5
    assert delta.admin_requests_by_uri() == {"GET /admin/realms/{realm}": 4, "PUT /admin/realms/{realm}": 1}


def test_smtp_sessions_are_read_with_their_open_count_and_time():
    log = ("2026-11-28 01:36:52,988 INFO [starttls 127.0.0.1:38156] connected open=1\n"
           "2026-11-28 01:36:52,998 INFO [starttls 127.0.0.1:38156] tls started\n"
           "2026-11-28 01:36:53,049 INFO [implicit 127.0.0.1:38186] connected open=2\n")
    found = sessions(log)
    assert [s.open for s in found] == [1, 2]
    assert found[1].started - found[0].started == pytest.approx(0.061, abs=1e-3)
    assert found[0].started == datetime.datetime(2026, 11, 28, 1, 36, 52, 988000).timestamp()


def _results(mode: str, load: float) -> dict:
    latency = {"n": 5, "p50": 0.06, "p95": 0.08, "min": 0.05, "max": 0.08, "samples": []}
    return {
        "mode": mode, "command": "python -m bench --quick", "started": "2026-11-28 02:00 UTC",
        "duration_seconds": 300.0, "machine": {"cpus": 2, "cpu_model": "Xeon", "memory_gib": 23.5, "kernel": "6",
                                              "load_average": [load, 1.0, 1.0]},
        "load_average_end": [0.5, 1.0, 1.0], "versions": {"keycloak": "26.7.3"}, "setup": {},
        "measures": {"change_latency": {"operator": latency, "floor": latency, "ratio_p50": 1.0, "goal": "g",
                                        "met": True, "timing": "how"}},
        "errors": {"scale": "TimeoutError: too slow"},
    }


def test_the_table_has_a_row_per_measure_run_and_says_which_failed():
    page = report.render(_results("full", 0.3))
    rows = [line for line in page.splitlines() if line.startswith("| 1.") or line.startswith("| 3.")]
    assert rows[0].startswith("| 1. Change latency | p50 60 ms, p95 80 ms (n=5) |")
    assert rows[0].endswith("| met |")
    assert "failed: TimeoutError: too slow" in rows[1]
    assert "Quick mode" not in page
    assert "Contended" not in page


def test_quick_and_contended_runs_are_labelled_as_such():
    page = report.render(_results("quick", 9.5))
    assert "**Quick mode**" in page
    assert "**Contended machine**: the load average was 9.5 on 2 CPUs" in page


def test_the_cpu_table_puts_the_operator_run_beside_each_floor_run():
    results = _results("full", 0.3)
    results["measures"]["scale"] = {
        "mailconfigs": 1000, "seconds": 40.0, "per_second": 25.0, "ratio": 2.0, "goal": "within 1.5x", "met": False,
        "floor": {"seconds": 20.0, "per_second": 50.0, "seconds_by_concurrency": {"8": 21.5, "32": 20.0}},
        "cpu_seconds": {"available_per_second": 2,
                        "operator_run": {"keycloak": 30.0, "kube-apiserver": 25.0, "operator": 20.0, "total": 75.0},
                        "floor_runs": {"8": {"keycloak": 33.0, "kube-apiserver": 0.5, "total": 33.5},
                                       "32": {"keycloak": 31.0, "kube-apiserver": 0.4, "total": 31.4}}}}
    page = report.render(results)
    table = page[page.index("### CPU seconds during scale"):].splitlines()
    assert "| Run | keycloak | kube-apiserver | operator | total |" in table
    assert "| kcmail (40.0 s) | 30.0 | 25.0 | 20.0 | 75.0 |" in table
    assert "| floor, 32 at a time (20.0 s) | 31.0 | 0.4 | 0.0 | 31.4 |" in table


def test_a_keycloak_concurrency_investigation_reaches_the_operator_and_the_results():
    chosen = cli.chosen_sizes(cli._parser().parse_args(["--keycloak-concurrency", "48"]))
    # The results record the sizes as they are (results["sizes"]).
    assert chosen.__dict__["keycloak_concurrency"] == 48
    assert run_args(probe_concurrency=chosen.probe_concurrency, keycloak_concurrency=48)[-2:] == [
        "--keycloak-concurrency", "48"]
    default = cli.chosen_sizes(cli._parser().parse_args(["--quick"]))
    assert default.__dict__["keycloak_concurrency"] == KEYCLOAK_CONCURRENCY
    # At the operator's default the operator is started without the flag.
    assert run_args(probe_concurrency=4, keycloak_concurrency=KEYCLOAK_CONCURRENCY) == ["--probe-concurrency", "4"]


def test_the_failover_row_gives_writes_per_change_and_the_takeover_time():
    results = _results("full", 0.3)
    took = {"n": 5, "p50": 17.2, "p95": 18.9, "min": 16.1, "max": 18.9, "samples": []}
    results["measures"]["failover"] = {"writes": 10, "changes": 10, "writes_per_change": 1.0, "failover": took,
                                       "goal": "g", "met": True, "timing": "how"}
    (row,) = [line for line in report.render(results).splitlines() if line.startswith("| 7.")]
    assert row.startswith("| 7. Two replicas, failover | 1.00 writes per change (10 for 10); leader killed → "
                          "change applied: p50 17.20 s, p95 18.90 s (n=5) | 1 write per change |")
    assert row.endswith("| met |")


def test_the_change_row_names_the_bare_operator_as_its_floor_with_the_lone_get_put_beside_it():
    results = _results("full", 0.3)
    bare = {"n": 5, "p50": 0.05, "p95": 0.07, "min": 0.04, "max": 0.07, "samples": []}
    lone = {"n": 5, "p50": 0.016, "p95": 0.02, "min": 0.01, "max": 0.02, "samples": []}
    results["measures"]["change_latency"].update(floor=bare, floor_is="bare operator", lone_get_put=lone,
                                                 ratio_p50=1.2, ratio_p50_lone_get_put=3.75)
    (row,) = [line for line in report.render(results).splitlines() if line.startswith("| 1.")]
    assert ("| bare operator: p50 50 ms, p95 70 ms (n=5); lone GET+PUT: p50 16 ms (3.75x) | 1.20x |") in row


def test_results_from_before_the_bare_operator_still_render_their_lone_get_put_floor():
    (row,) = [line for line in report.render(_results("full", 0.3)).splitlines() if line.startswith("| 1.")]
    assert "| p50 60 ms, p95 80 ms (n=5) | p50 60 ms, p95 80 ms (n=5) | 1.00x |" in row


def test_the_change_row_says_what_probing_first_adds_beside_immediate():
    results = _results("full", 0.3)
    immediate = {"n": 5, "p50": 0.045, "p95": 0.07, "min": 0.04, "max": 0.07, "samples": []}
    probed = {"n": 5, "p50": 0.06, "p95": 0.09, "min": 0.05, "max": 0.09, "samples": []}
    results["measures"]["change_latency"].update(immediate=immediate, probed_first=probed, ratio_p50_probed_first=1.2,
                                                 probe_first_added_p50=0.015)
    (row,) = [line for line in report.render(results).splitlines() if line.startswith("| 1.")]
    assert "changePolicy Immediate: p50 45 ms; a change probed before it is written (connect timeout): p50 60 ms " \
           "(1.20x of the bare operator; probing first adds 15 ms at p50)" in row


def test_a_merged_run_takes_the_measures_it_did_not_make_from_the_earlier_one_and_says_so():
    earlier = _results("full", 0.3)
    rotation = {"operator": earlier["measures"]["change_latency"]["operator"], "goal": "g", "met": True}
    earlier["measures"]["rotation_latency"] = rotation
    earlier["versions"]["kcmail"] = "aaaaaaa"
    now = _results("full", 0.3)
    now["versions"]["kcmail"] = "bbbbbbb"
    merged = cli.merged(now, earlier)
    assert merged["measures"]["change_latency"] is now["measures"]["change_latency"]
    assert merged["measures"]["rotation_latency"] is rotation
    assert merged["merged_from"]["measures"] == ["rotation_latency"]
    page = report.render(merged)
    assert "Measures `rotation_latency` are from an earlier run: 2026-11-28 02:00 UTC, 5.0 min, kcmail aaaaaaa" in page
    assert "mode `full`, kcmail bbbbbbb." in page
    with pytest.raises(SystemExit):
        cli.merged(_results("quick", 0.3), earlier)
