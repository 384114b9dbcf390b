"""The results table: JSON results → the Markdown of docs/benchmarks.md (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TITLES = {
    "change_latency": "1. Change latency",
    "rotation_latency": "2. Rotation latency",
    "scale": "3. Scale",
    "steady_state": "4. Steady state",
    "memory": "5. Memory",
    "probe_load": "6. Probe load",
    "failover": "7. Two replicas, failover",
}


def seconds(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _met(value: object) -> str:
    return {True: "met", False: "**missed**"}.get(value, "—")  # type: ignore[call-overload]


def _p(summary: Mapping[str, Any]) -> str:
    if not summary.get("n"):
        return "no samples"
    return f"p50 {seconds(summary['p50'])}, p95 {seconds(summary['p95'])} (n={summary['n']})"


def _change_floor(m: Mapping[str, Any]) -> str:
    """Measure 1's floor: the bare operator, with the lone GET+PUT (the floor before it) beside it."""
    if "floor_is" not in m:  # results from before the bare operator: the floor was the lone GET+PUT
        return _p(m["floor"])
    cell = f"{m['floor_is']}: {_p(m['floor'])}"
    lone = m.get("lone_get_put") or {}
    if lone.get("n"):
        cell += f"; lone GET+PUT: p50 {seconds(lone['p50'])} ({_ratio(m.get('ratio_p50_lone_get_put'))})"
    return cell


def _row(name: str, m: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """Result, floor, ratio, goal of one measure, as table cells."""
    if name == "change_latency":
        result = _p(m["operator"])
        immediate, probed = m.get("immediate") or {}, m.get("probed_first") or {}
        if immediate.get("n"):
            result += f"; changePolicy Immediate: p50 {seconds(immediate['p50'])}"
        if probed.get("n"):
            result += (f"; a change probed before it is written (connect timeout): p50 {seconds(probed['p50'])} "
                       f"({_ratio(m.get('ratio_p50_probed_first'))} of the bare operator; probing first adds "
                       f"{seconds(m['probe_first_added_p50'])} at p50)")
        return result, _change_floor(m), _ratio(m.get("ratio_p50")), m["goal"]
    if name == "rotation_latency":
        return _p(m["operator"]), "—", "—", m["goal"]
    if name == "scale":
        floor = m["floor"]
        return (f"{m['mailconfigs']} Applied in {seconds(m['seconds'])} ({m['per_second']}/s)",
                f"{seconds(floor['seconds'])} ({floor['per_second']}/s)", _ratio(m.get("ratio")), m["goal"])
    if name == "steady_state":
        return (f"{m['writes']} writes; {m['reads_per_mailconfig']} realm reads per MailConfig over the restart "
                "and one interval",
                "0 writes, 1 read per MailConfig per interval", "—", m["goal"])
    if name == "memory":
        levels = "; ".join(f"{level['label']}: {level['peak_rss']:.0f} MiB" for level in m["levels"])
        return f"peak RSS {levels}", "—", "—", m["goal"]
    if name == "probe_load":
        return (f"{m['token_grants']} token grants ({m['token_grants_per_credential_per_lifetime']} per credential "
                f"per lifetime); peak {m['smtp_peak_concurrent']} SMTP sessions (bound "
                f"{m['probe_concurrency_bound']}); densest tenth of the interval: {m['densest_tenth_share']:.0%} "
                "of the probes",
                f"{m['token_grants_floor']} token grants; 10 % per tenth",
                _ratio(m['token_grants'] / m['token_grants_floor']) if m["token_grants_floor"] else "—", m["goal"])
    if name == "failover":
        return (f"{m['writes_per_change']:.2f} writes per change ({m['writes']} for {m['changes']}); leader killed "
                f"→ change applied: {_p(m['failover'])}",
                "1 write per change", "—", m["goal"])
    return "—", "—", "—", str(m.get("goal", "—"))


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def _cpu_table(scale: Mapping[str, Any]) -> list[str]:
    """Where the CPU went while the operator applied every MailConfig, and during each floor run."""
    spent = scale.get("cpu_seconds")
    if not spent:
        return []
    runs = [(f"kcmail ({scale['seconds']:.1f} s)", spent["operator_run"])]
    runs += [(f"floor, {concurrency} at a time ({scale['floor']['seconds_by_concurrency'][concurrency]:.1f} s)", used)
             for concurrency, used in spent["floor_runs"].items()]
    names = [name for name in ("keycloak", "kube-apiserver", "etcd", "operator", "smtp", "total")
             if any(name in used for _, used in runs)]
    lines = ["", "### CPU seconds during scale", "",
             f"User + system CPU of each process group while the {scale['mailconfigs']} MailConfigs were applied, "
             f"and during the floor runs; the machine offers {spent['available_per_second']} CPU-seconds per second.",
             ""]
    return lines + _table(("Run", *names), [(label, *(f"{used.get(name, 0):.1f}" for name in names))
                                           for label, used in runs])


def render(results: Mapping[str, Any], findings: str = "") -> str:
    """The page; ``findings`` (Markdown, the investigation of the misses) goes after the table."""
    machine, versions = results["machine"], results["versions"]
    mode = results["mode"]
    lines = ["# Benchmarks", "",
             "Written by the benchmark harness (`bench/`); do not edit by hand. Reproduce with "
             f"`{results['command']}`.", ""]
    if mode == "quick":
        lines += ["**Quick mode**: the smoke test's small counts, not the sizes the goals are set for; read the "
                  "ratios, not the absolute numbers.", ""]
    start_load = machine["load_average"][0]
    if start_load > machine["cpus"]:
        lines += [f"**Contended machine**: the load average was {start_load} on {machine['cpus']} CPUs when the run "
                  f"began ({results['load_average_end'][0]} at its end): other work shared the CPUs. Each floor "
                  "was measured in the same run, so the ratios hold better than the absolute times.", ""]
    if results.get("environment", {}).get("reused"):
        lines += ["The run reused an environment that was already running (`KCMAIL_DEVENV_FILE`).", ""]
    lines += [f"Run {results['started']}, {results['duration_seconds'] / 60:.1f} min, mode `{mode}`, kcmail "
              f"{results['versions'].get('kcmail', '?')}.", ""]
    earlier = results.get("merged_from")
    if earlier:
        names = ", ".join(f"`{name}`" for name in earlier["measures"])
        lines += [f"Measures {names} are from an earlier run: {earlier['started']}, "
                  f"{(earlier.get('duration_seconds') or 0) / 60:.1f} min, kcmail {earlier.get('kcmail') or '?'}, "
                  f"`{earlier.get('command')}`. The others are from this run.", ""]
    lines += ["## Results", ""]
    rows = []
    measures: Mapping[str, Any] = results["measures"]
    for name, title in TITLES.items():
        if name in measures:
            result, floor, ratio, goal = _row(name, measures[name])
            rows.append((title, result, floor, ratio, goal, _met(measures[name].get("met"))))
        elif name in results.get("errors", {}):
            rows.append((title, f"failed: {results['errors'][name]}", "—", "—", "—", "**missed**"))
    lines += _table(("Measure", "Result", "Floor", "Ratio", "Goal", "Goal met"), rows)
    if findings.strip():
        lines += ["", findings.strip()]
    lines += _cpu_table(measures.get("scale") or {})
    lines += ["", "## Machine and versions", ""]
    lines += _table(("", ""), [
        ("CPUs", f"{machine['cpus']}, {machine['cpu_model']}"), ("Memory", f"{machine['memory_gib']} GiB"),
        ("Kernel", machine["kernel"]),
        ("Load average (1, 5, 15 min) at start", ", ".join(map(str, machine["load_average"]))),
        ("Load average at end", ", ".join(map(str, results["load_average_end"]))),
        *((name, version) for name, version in versions.items())])
    setup = results.get("setup") or {}
    if setup:
        lines += ["", "## Set-up, excluded from the numbers", ""]
        lines += [f"- {key.replace('_', ' ')}: {value}" for key, value in setup.items()]
    lines += ["", "## How each measure is taken", ""]
    for name, title in TITLES.items():
        if name in measures and measures[name].get("timing"):
            lines += [f"**{title}.** {measures[name]['timing']}", ""]
    lines += ["The full numbers of every measure (all samples, Keycloak's request counts by URI) are in "
              "`benchmarks.json` beside this page.", ""]
    return "\n".join(lines)
