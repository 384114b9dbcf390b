"""The operator under test: `kcmail run` as its own process, its memory and its own metrics."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import httpx

from kcmail.defaults import KEYCLOAK_CONCURRENCY
from kcmail.devenv import operator_env
from kcmail.devenv.environment import Environment
from kcmail.devenv.processes import ProcessRegistry, ServerProcess, free_port

PROFILE_VARIABLE = "KCMAIL_BENCH_PROFILE"
_KIB_PER_MIB = 1024
_RECONCILES = re.compile(r"^kcmail_reconciles_total\{[^}]*\}\s+(\S+)$", re.MULTILINE)


def run_args(*, probe_concurrency: int, keycloak_concurrency: int) -> list[str]:
    """The options of `kcmail run` that a benchmark run chooses."""
    args = ["--probe-concurrency", str(probe_concurrency)]
    if keycloak_concurrency != KEYCLOAK_CONCURRENCY:
        # At its default the operator is started as a plain `kcmail run` is, without the flag.
        args += ["--keycloak-concurrency", str(keycloak_concurrency)]
    return args


class OperatorProcess:
    """One `kcmail run`; ``pid`` is the Python interpreter itself (the process group leader).

    With ``$KCMAIL_BENCH_PROFILE`` set to a directory, each operator runs under cProfile and writes
    ``NN.prof`` there (NN: its state directory's name) when it stops.
    """

    def __init__(self, env: Environment, state_dir: Path, *, probe_concurrency: int,
                 keycloak_concurrency: int, election_namespace: str | None = None) -> None:
        """With ``election_namespace`` the operator watches only that namespace and acts only while it holds
        the Lease there, as the chart's replicas do; otherwise it acts at once, cluster-wide."""
        self._registry = ProcessRegistry(state_dir)
        self.metrics_port = free_port()
        args = run_args(probe_concurrency=probe_concurrency, keycloak_concurrency=keycloak_concurrency)
        if election_namespace is not None:
            args += ["-n", election_namespace, "--leader-election-namespace", election_namespace]
        profile = os.environ.get(PROFILE_VARIABLE)
        if profile and election_namespace is None:
            self.process = self._profiled(env, state_dir, Path(profile), args)
        else:
            self.process = operator_env.start_operator(env, self._registry, metrics_port=self.metrics_port,
                                                       args=args, leader_election=election_namespace is not None)
        self._http = httpx.Client(base_url=f"http://127.0.0.1:{self.metrics_port}", timeout=10)

    def _profiled(self, env: Environment, state_dir: Path, profiles: Path, args: list[str]) -> ServerProcess:
        profiles.mkdir(parents=True, exist_ok=True)
        output = profiles / f"{state_dir.name}.prof"
        # The command of operator_env.start_operator, under cProfile (which writes when kopf exits on SIGTERM).
        return self._registry.start("operator", [
            sys.executable, "-m", "cProfile", "-o", str(output), "-m", "kcmail.cli", "run",
            "--ca-bundle", str(env.ca_file), "--metrics-address", f"127.0.0.1:{self.metrics_port}",
            "--no-leader-election", *args],
            env={"KUBECONFIG": str(env.kubeconfig), "PYTHONUNBUFFERED": "1"})

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        self._http.close()
        self._registry.stop_all()

    def memory_mib(self) -> dict[str, float]:
        """Resident memory now (VmRSS) and its peak since the process started (VmHWM), in MiB."""
        fields: dict[str, float] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) / _KIB_PER_MIB
        return {"rss": round(fields["VmRSS"], 1), "peak_rss": round(fields["VmHWM"], 1)}

    def reconciles(self) -> int:
        """Reconcile passes the operator has finished (kcmail_reconciles_total over all results)."""
        response = self._http.get("/metrics")
        response.raise_for_status()
        return int(sum(float(value) for value in _RECONCILES.findall(response.text)))

    def wait_started(self, timeout: float = 120) -> None:
        """Until its metrics answer, which happens before kopf starts watching."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.process.alive():
                raise RuntimeError(f"the operator exited; log {self.process.log}")
            try:
                self.reconciles()
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.2)

    def wait_passes(self, count: int, timeout: float) -> float:
        """Until ``count`` reconcile passes have finished; returns the ``perf_counter`` then."""
        deadline = time.monotonic() + timeout
        while self.reconciles() < count:
            if not self.process.alive():
                raise RuntimeError(f"the operator exited; log {self.process.log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.reconciles()} of {count} reconcile passes within {timeout:.0f} s")
            time.sleep(0.2)
        return time.perf_counter()
