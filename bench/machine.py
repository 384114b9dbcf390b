"""The machine and the versions a run measured, so that a number can be read against where it came from."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from kcmail.devenv.environment import Environment

REPO = Path(__file__).resolve().parents[1]


def machine() -> dict[str, Any]:
    model = next((line.partition(":")[2].strip() for line in _read("/proc/cpuinfo").splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown")
    total_kib = next((int(line.split()[1]) for line in _read("/proc/meminfo").splitlines()
                      if line.startswith("MemTotal:")), 0)
    return {"cpus": len(os.sched_getaffinity(0)), "cpu_model": model, "memory_gib": round(total_kib / 1024 ** 2, 1),
            "kernel": platform.release(), "load_average": [round(x, 2) for x in os.getloadavg()]}


def versions(env: Environment) -> dict[str, str]:
    found = {"kubernetes": env.kubernetes_version, "keycloak": env.keycloak_version,
             "python": platform.python_version()}
    for package in ("kopf", "kubernetes", "python-keycloak", "httpx"):
        found[package if package != "kubernetes" else "kubernetes-client"] = importlib.metadata.version(package)
    found["kcmail"] = _git("rev-parse", "--short", "HEAD") + (" (with uncommitted changes)"
                                                              if _git("status", "--porcelain") else "")
    return found


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _git(*args: str) -> str:
    try:
        result = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30,
                                check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip()
