"""CPU seconds used by each server of the environment and by the operator, read from /proc.

The scale floor and the operator share one machine with kube-apiserver, etcd and Keycloak; where the
CPU went during each of them says what the operator costs beyond the floor's GET and PUT.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from kcmail.devenv.processes import ProcessRegistry, group_members

_TICKS = os.sysconf("SC_CLK_TCK")


def group_seconds(pgid: int) -> float:
    """User + system CPU of every live process in the process group (each server is its own group)."""
    total = 0
    for pid in group_members(pgid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone since it was listed
        total += int(fields[11]) + int(fields[12])
    return total / _TICKS


class CpuMeter:
    """Samples the environment's servers (by name) and any extra process groups given."""

    def __init__(self, state_dir: Path) -> None:
        self._groups = {server.name: server.pid for server in ProcessRegistry(state_dir).load()}

    def sample(self, extra: Mapping[str, int] | None = None) -> dict[str, float]:
        groups = {**self._groups, **(extra or {})}
        return {name: group_seconds(pgid) for name, pgid in groups.items()}


def used(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """CPU seconds used between two samples, per process group present in both, and their total."""
    spent = {name: round(after[name] - before[name], 2) for name in after if name in before}
    spent["total"] = round(sum(spent.values()), 2)
    return spent
