"""Session-wide fixtures: one local environment of real servers for every test that needs it.

Set ``KCMAIL_DEVENV_FILE`` to the ``dev.env`` of an environment already started with ``kcmail dev up``
to reuse it (quick iterations); otherwise the session starts its own and stops it at the end.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from kcmail.devenv import environment
from kcmail.devenv.clients import KeycloakAdminAPI
from kcmail.devenv.environment import Environment


@pytest.fixture(scope="session")
def devenv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Environment]:
    reuse = os.environ.get("KCMAIL_DEVENV_FILE")
    if reuse:
        yield Environment.load(Path(reuse))
        return
    state_dir = tmp_path_factory.mktemp("devenv")
    env = environment.up(state_dir)
    try:
        yield env
    finally:
        environment.down(state_dir)


Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def kubectl(devenv: Environment) -> Kubectl:
    """Run the environment's own kubectl against its API server; never raises on a non-zero exit."""

    def run(*args: str, stdin: str | None = None, kubeconfig: Path | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd: Sequence[str] = [str(devenv.kubectl), f"--kubeconfig={kubeconfig or devenv.kubeconfig}",
                              f"--cache-dir={devenv.kube_cache}", *args]
        return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)

    return run


@pytest.fixture(scope="session")
def keycloak_admin(devenv: Environment) -> KeycloakAdminAPI:
    return KeycloakAdminAPI(devenv)


@pytest.fixture(params=environment.MAIL_SERVERS)
def mail_server(request: pytest.FixtureRequest, devenv: Environment) -> environment.MailServer:
    """Each of the environment's SMTP servers in turn: the project's own and Postfix with Dovecot."""
    return devenv.mail_server(request.param)
