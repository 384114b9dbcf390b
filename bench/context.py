"""What every measure shares: the environment, its clients, the sizes of this run, and a log line."""

from __future__ import annotations

import datetime
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.cluster import Cluster
from bench.floor import BareAdmin
from bench.keycloak_counts import KeycloakCounts
from bench.operator_proc import OperatorProcess
from bench.smtp_log import SmtpLog
from kcmail.defaults import KEYCLOAK_CONCURRENCY
from kcmail.devenv.environment import Environment

# Long enough for a started operator to list the cluster (kopf's initial listings and the Connection check).
SETTLE_SECONDS = 5.0


@dataclass(frozen=True)
class Sizes:
    """How much each measure does; ``quick`` finishes in minutes, ``full`` is what the issue asks."""

    mode: str
    changes: int
    rotations: int
    mailconfigs: int
    per_namespace: int
    small: int  # the middle memory level
    unrelated_secrets: int
    interval_seconds: int
    probe_concurrency: int
    floor_concurrency: tuple[int, ...]
    # Two replicas on a Lease: changes counted for writes, then leaders killed, one at a time.
    replica_changes: int = 5
    failovers: int = 3
    # The operator's --keycloak-concurrency: its own default unless an investigation sets another.
    keycloak_concurrency: int = KEYCLOAK_CONCURRENCY

    @property
    def interval(self) -> str:
        return f"{self.interval_seconds}s"

    @property
    def namespaces(self) -> int:
        return -(-self.mailconfigs // self.per_namespace)


QUICK = Sizes(mode="quick", changes=5, rotations=3, mailconfigs=20, per_namespace=10, small=10,
              unrelated_secrets=200, interval_seconds=30, probe_concurrency=4, floor_concurrency=(8,),
              replica_changes=3, failovers=1)
FULL = Sizes(mode="full", changes=50, rotations=20, mailconfigs=1000, per_namespace=100, small=100,
             unrelated_secrets=10_000, interval_seconds=300, probe_concurrency=10, floor_concurrency=(8, 32),
             replica_changes=10, failovers=5)


@dataclass
class Bench:
    env: Environment
    sizes: Sizes
    state_dir: Path
    cluster: Cluster
    admin: BareAdmin
    counts: KeycloakCounts
    smtp: SmtpLog
    operators: list[OperatorProcess] = field(default_factory=list)

    def start_operator(self, *, settle: bool = True, election_namespace: str | None = None) -> OperatorProcess:
        """A fresh `kcmail run`, each in its own state directory (its log stays for a post-mortem).

        With ``settle`` it is given a few seconds to list the cluster, so that what follows meets a
        running operator, as in production, rather than one still starting. ``election_namespace``: see
        :class:`OperatorProcess`.
        """
        operator = OperatorProcess(self.env, self.state_dir / "operators" / f"{len(self.operators) + 1:02d}",
                                   probe_concurrency=self.sizes.probe_concurrency,
                                   keycloak_concurrency=self.sizes.keycloak_concurrency,
                                   election_namespace=election_namespace)
        self.operators.append(operator)
        operator.wait_started()
        if settle:
            time.sleep(SETTLE_SECONDS)
        return operator

    def stop_operators(self) -> None:
        """Stop every operator this run started (stopping one twice is harmless)."""
        for operator in self.operators:
            operator.stop()


def say(message: str) -> None:
    print(f"{datetime.datetime.now():%H:%M:%S} {message}", file=sys.stderr, flush=True)
