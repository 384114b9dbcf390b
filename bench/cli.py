"""``python -m bench [--quick] [--only NAME]``: start an environment, run the measures, write the table."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import bare_operator, failover, latency, machine, memory, report, scale
from bench.cluster import LABEL, Cluster
from bench.context import FULL, QUICK, Bench, Sizes, say
from bench.floor import BareAdmin, create_realms
from bench.keycloak_counts import KeycloakCounts
from bench.smtp_log import SmtpLog
from kcmail.defaults import KEYCLOAK_CONCURRENCY
from kcmail.devenv import environment, operator_env
from kcmail.devenv.environment import Environment
from kcmail.devenv.keycloak_server import HEAP_VARIABLE

MEASURES = ("change", "rotation", "failover", "memory", "scale")
DEFAULT_OUTPUT = machine.REPO / "docs" / "benchmarks.md"
# What the numbers that missed their goals were traced to, and what changed: kept by hand, shown under the table.
FINDINGS = Path(__file__).with_name("findings.md")
# A thousand realms outgrow the environment's default Keycloak heap.
FULL_HEAP = "3g"
_REALM_WORKERS = 4


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts: the CI smoke test (a few minutes)")
    parser.add_argument("--only", action="append", choices=MEASURES,
                        help="run only this measure (repeat for several); scale includes steady state, probe "
                             "load and memory at full size")
    parser.add_argument("--mailconfigs", type=int, default=None,
                        help="how many MailConfigs (and realms) scale uses, instead of the mode's 20 or 1000: "
                             "for investigations; the goals are set for 1000")
    parser.add_argument("--probe-concurrency", type=int, default=None,
                        help="the operator's --probe-concurrency, instead of the mode's 4 or 10: for investigations")
    parser.add_argument("--keycloak-concurrency", type=int, default=None,
                        help="the operator's --keycloak-concurrency, instead of its default "
                             f"({KEYCLOAK_CONCURRENCY}): for investigations")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"the Markdown table; the JSON goes beside it (default {DEFAULT_OUTPUT})")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: write the Markdown again from the JSON beside --output "
                             "(after editing bench/findings.md)")
    parser.add_argument("--merge", type=Path, default=None,
                        help="a results JSON of an earlier run: the measures this run does not make are taken from "
                             "it, and the page says which came from which run (for a change that affects a few "
                             "measures only)")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="where the benchmark's environment and operators keep their state "
                             "(default: beside the `kcmail dev` state directory, in bench/)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.render:
        _write_page(args.output, json.loads(args.output.with_suffix(".json").read_text()))
        return 0
    sizes = chosen_sizes(args)
    state_dir = (args.state_dir or environment.default_state_dir().parent / "bench").resolve()
    started, clock = datetime.datetime.now(datetime.UTC), time.monotonic()
    at_start = machine.machine()
    reuse = os.environ.get("KCMAIL_DEVENV_FILE")
    if reuse:
        env = Environment.load(Path(reuse))
    else:
        if not args.quick:
            os.environ.setdefault(HEAP_VARIABLE, FULL_HEAP)
        say(f"starting the environment in {state_dir / 'env'}")
        env = environment.up(state_dir / "env")
    try:
        measures, errors, setup = run(env, sizes, state_dir, set(args.only or MEASURES), clean_up=bool(reuse))
    finally:
        if not reuse:
            environment.down(state_dir / "env")
    results = {
        "mode": sizes.mode, "command": _command(argv), "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "duration_seconds": round(time.monotonic() - clock, 1), "sizes": sizes.__dict__,
        "environment": {"reused": bool(reuse), "keycloak_max_heap": os.environ.get(HEAP_VARIABLE, "768m")},
        "machine": at_start, "load_average_end": machine.machine()["load_average"],
        "versions": machine.versions(env), "setup": setup, "measures": measures, "errors": errors,
    }
    if args.merge is not None:
        results = merged(results, json.loads(args.merge.read_text()))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    _write_page(args.output, results)
    return 1 if errors else 0


def merged(results: dict[str, Any], earlier: Mapping[str, Any]) -> dict[str, Any]:
    """``results`` with the measures it lacks taken from ``earlier``, and where they came from."""
    kept = [name for name in earlier.get("measures", {}) if name not in results["measures"]]
    if not kept:
        return results
    if earlier.get("mode") != results["mode"]:
        raise SystemExit(f"--merge: the earlier run is mode {earlier.get('mode')!r}, this one {results['mode']!r}")
    return {**results, "measures": {**{name: earlier["measures"][name] for name in kept}, **results["measures"]},
            "merged_from": {"started": earlier.get("started"), "command": earlier.get("command"),
                            "kcmail": (earlier.get("versions") or {}).get("kcmail"), "measures": kept,
                            "duration_seconds": earlier.get("duration_seconds")}}


def chosen_sizes(args: argparse.Namespace) -> Sizes:
    """The mode's sizes with the investigation's changes; the results record them as they are."""
    sizes = QUICK if args.quick else FULL
    if args.mailconfigs:
        sizes = dataclasses.replace(sizes, mailconfigs=args.mailconfigs, small=min(sizes.small, args.mailconfigs))
    if args.probe_concurrency:
        sizes = dataclasses.replace(sizes, probe_concurrency=args.probe_concurrency)
    if args.keycloak_concurrency:
        sizes = dataclasses.replace(sizes, keycloak_concurrency=args.keycloak_concurrency)
    return sizes


def _write_page(output: Path, results: dict[str, Any]) -> None:
    findings = FINDINGS.read_text() if FINDINGS.exists() else ""
    output.write_text(report.render(results, findings))
    say(f"wrote {output} and {output.with_suffix('.json').name}")


def _command(argv: Sequence[str] | None) -> str:
    """The command that reproduces the numbers: where the state and the page go changes none of them."""
    words, kept = list(sys.argv[1:] if argv is None else argv), []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word in ("--state-dir", "--output"):
            skip = True
        elif not word.startswith(("--state-dir=", "--output=")):
            kept.append(word)
    return shlex.join(["python", "-m", "bench", *kept])


def run(env: Environment, sizes: Sizes, state_dir: Path, chosen: set[str], *,
        clean_up: bool) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    """Every chosen measure, in an order that lets each reuse what the one before it left."""
    cluster = Cluster(env)
    admin = BareAdmin(env)
    counts = KeycloakCounts(env.keycloak_management_url, env.ca_file)
    b = Bench(env=env, sizes=sizes, state_dir=state_dir, cluster=cluster, admin=admin, counts=counts,
              smtp=SmtpLog(env.state_dir / "logs" / "smtp.log"))
    measures: dict[str, Any] = {}
    errors: dict[str, str] = {}

    def attempt(name: str, measure: Callable[[], Any]) -> Any:
        say(f"measuring {name}")
        try:
            return measure()
        except Exception as error:  # one failed measure must not cost the others their numbers
            traceback.print_exc()
            errors[name] = f"{type(error).__name__}: {error}"
            return None

    try:
        operator_env.install_crds(env)
        operator_env.install_connection(env)
        if "change" in chosen:
            # Before any operator starts, so that no kcmail ever meets the CRD appearing.
            bare_operator.install_crd(cluster)
        if cluster.mailconfigs(LABEL):
            raise RuntimeError("the environment holds MailConfigs of an earlier benchmark run; use a fresh one")
        # The latency measures first, on a Keycloak of a few realms: a GET+PUT on one holding a thousand costs
        # about a second for kcmail and floor alike, which would hide kcmail's own overhead in the ratio.
        setup = _realms(b, _early_realms(chosen))
        levels: list[dict[str, Any]] = []
        if "memory" in chosen:
            level = attempt("memory", lambda: memory.empty(b))
            if level:
                levels.append({"label": "0 MailConfigs", **level})
        if chosen & {"change", "rotation"}:
            _latency(b, chosen, measures, attempt)
        if "failover" in chosen:
            result = attempt("failover", lambda: failover.failover(b))
            if result:
                measures["failover"] = result
        later = _realms(b, _scale_realms(b, chosen))
        setup = {key: round(setup[key] + later[key], 1) if key != "realm_creation_concurrency" else setup[key]
                 for key in setup}
        if "memory" in chosen:
            level = attempt("memory", lambda: memory.small(b))
            if level:
                levels.append({"label": f"{sizes.small} MailConfigs", **level})
        operator = None
        if "scale" in chosen:
            outcome = attempt("scale", lambda: scale.scale(b))
            if outcome:
                measures["scale"], operator = outcome
                levels.append({"label": f"{sizes.mailconfigs} MailConfigs (creating them)",
                               "mailconfigs": sizes.mailconfigs, **measures["scale"]["operator_memory_mib"]})
                steady = attempt("steady_state", lambda: scale.steady_state(b, operator))
                if steady:
                    measures["steady_state"], measures["probe_load"], operator = steady
                    levels.append({"label": f"{sizes.mailconfigs} MailConfigs (restart and an interval)",
                                   "mailconfigs": sizes.mailconfigs, **operator.memory_mib()})
        if "memory" in chosen:
            applied = sizes.mailconfigs if "scale" in measures else 0
            level = attempt("memory", lambda: scale.with_unrelated_secrets(b, operator or b.start_operator(),
                                                                            applied))
            if level:
                levels.append({"label": f"{applied} MailConfigs + {sizes.unrelated_secrets} unrelated Secrets",
                               **level[0]})
            measures["memory"] = _memory(sizes, levels)
        return measures, errors, setup
    finally:
        if clean_up:
            _clean_up(b)
        b.stop_operators()
        for closing in (cluster.close, admin.close, counts.close):
            closing()


def _latency(b: Bench, chosen: set[str], measures: dict[str, Any],
             attempt: Callable[[str, Callable[[], Any]], Any]) -> None:
    operator = b.start_operator()
    try:
        for name, measure in (("change", latency.change_latency), ("rotation", latency.rotation_latency)):
            if name in chosen:
                result = attempt(f"{name}_latency", lambda measure=measure: measure(b))
                if result:
                    measures[f"{name}_latency"] = result
        # Their MailConfigs would add their own reads to the steady-state counts.
        b.cluster.delete_mailconfigs([latency.CHANGE_NAMESPACE, latency.ROTATION_NAMESPACE],
                                     f"{LABEL} in (change, rotation)", timeout=60)
    finally:
        operator.stop()


def _clean_up(b: Bench) -> None:
    """Remove the run's MailConfigs and Secrets from a reused environment, so that its next user (another run,
    a test session's operator) finds none of them. Namespaces and realms stay: the environment runs no
    namespace controller to empty a deleted namespace, and the next run reuses both. The bare operator's CRD
goes, and its objects with it."""
    say("removing the benchmark's MailConfigs and Secrets")
    b.stop_operators()
    operator = b.start_operator()  # to release its finalizers
    names = [ns.metadata.name for ns in b.cluster.core.list_namespace(label_selector=LABEL).items]
    b.cluster.delete_mailconfigs(names, LABEL, timeout=max(120.0, b.sizes.mailconfigs * 0.5))
    operator.stop()
    for name in names:
        b.cluster.core.delete_collection_namespaced_secret(name, label_selector=LABEL)
    bare_operator.delete_crd(b.cluster)


def _early_realms(chosen: set[str]) -> list[str]:
    """The realms of the latency and failover measures."""
    wanted = latency.extra_realms() if chosen & {"change", "rotation"} else []
    return wanted + (failover.extra_realms() if "failover" in chosen else [])


def _scale_realms(b: Bench, chosen: set[str]) -> list[str]:
    """The realms of the memory and scale measures."""
    if not chosen & {"scale", "memory"}:
        return []
    return scale.realms(b)[: b.sizes.mailconfigs if "scale" in chosen else b.sizes.small]


def _realms(b: Bench, wanted: list[str]) -> dict[str, Any]:
    say(f"creating {len(wanted)} realms in Keycloak (set-up, not measured against the operator)")
    started = time.perf_counter()
    created = asyncio.run(create_realms(b.env, wanted, _REALM_WORKERS))
    seconds = time.perf_counter() - started
    say(f"{created} realms created in {seconds:.0f} s")
    return {"realms_created": created, "realm_creation_seconds": round(seconds, 1),
            "realm_creation_concurrency": _REALM_WORKERS}


def _memory(sizes: Sizes, levels: list[dict[str, Any]]) -> dict[str, Any]:
    at_goal_size = [level["peak_rss"] for level in levels
                    if level["mailconfigs"] == 1000 and "unrelated" not in level["label"]]
    return {
        "levels": levels, "goal": f"peak RSS under {scale.MEMORY_GOAL_MIB:.0f} MiB with 1,000 MailConfigs",
        "met": max(at_goal_size) < scale.MEMORY_GOAL_MIB if at_goal_size else None,
        "timing": ("each level is a fresh `kcmail run` process; peak_rss is its VmHWM (the most resident memory "
                   "it ever held) read from /proc after its MailConfigs were applied and it settled for 10 s, rss "
                   "its VmRSS at that moment. The unrelated Secrets sit in the watched namespaces; no MailConfig "
                   "refers to them." + ("" if sizes.mode == "full" else " Quick mode has no level of 1,000.")),
    }


if __name__ == "__main__":
    sys.exit(main())
