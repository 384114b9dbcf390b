"""Helpers for tests that talk to the local environment's servers."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from kcmail.devenv.clients import KeycloakAdminAPI
from kcmail.devenv.environment import Environment

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def kubectl(devenv: Environment) -> Kubectl:
    """Run the environment's own kubectl against its API server; never raises on a non-zero exit."""

    def run(*args: str, stdin: str | None = None, kubeconfig: Path | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd: Sequence[str] = [str(devenv.kubectl), f"--kubeconfig={kubeconfig or devenv.kubeconfig}", *args]
        return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)

    return run


@pytest.fixture(scope="session")
def keycloak_admin(devenv: Environment) -> KeycloakAdminAPI:
    return KeycloakAdminAPI(devenv)
