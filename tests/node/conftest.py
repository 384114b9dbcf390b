"""The one-node cluster's environment (``kcmail dev up --node``), for the tests that install the chart.

Set ``KCMAIL_NODE_DEVENV_FILE`` to the ``dev.env`` of a node environment already started with
``kcmail dev up --node`` to reuse it. Otherwise ``kcmail dev up --node`` starts when collection ends, in a
state directory of its own, and comes up beside the other tests (it spends its minute or so mostly waiting
for Keycloak), so the node's tests find it ready; the session stops it at the end (pods, mounts and kernel
settings included).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from kcmail.devenv.clients import KeycloakAdminAPI
from kcmail.devenv.environment import ENV_FILE, Environment

# Bounds the wait for a node environment started at collection: its cold builds included.
START_TIMEOUT = 1800


@dataclass
class NodeStart:
    process: subprocess.Popen[str]
    state_dir: Path

    @property
    def log(self) -> Path:
        return self.state_dir.parent / f"{self.state_dir.name}.log"

    @classmethod
    def start(cls) -> NodeStart:
        state_dir = Path(tempfile.mkdtemp(prefix="kcmail-node-devenv-"))
        log = state_dir.parent / f"{state_dir.name}.log"
        with log.open("w") as out:
            process = subprocess.Popen([sys.executable, "-m", "kcmail.cli", "dev", "--dir", str(state_dir), "up",
                                        "--node"], stdout=out, stderr=subprocess.STDOUT, text=True,
                                       start_new_session=True)
        return cls(process, state_dir)

    def environment(self) -> Environment:
        code = self.process.wait(timeout=START_TIMEOUT)
        if code != 0:
            pytest.fail(f"kcmail dev up --node failed (exit {code}):\n{self.log.read_text(errors='replace')[-4000:]}")
        return Environment.load(self.state_dir / ENV_FILE)

    def stop(self) -> None:
        if self.process.poll() is None:
            # SIGINT: `up` stops what it started before it exits.
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        down = subprocess.run([sys.executable, "-m", "kcmail.cli", "dev", "--dir", str(self.state_dir), "down"],
                              capture_output=True, text=True, timeout=300, check=False)
        if down.returncode == 0:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self.log.unlink(missing_ok=True)


_starting: NodeStart | None = None


def pytest_collection_finish(session: pytest.Session) -> None:
    global _starting
    wanted = any(item.get_closest_marker("node") for item in session.items)
    if wanted and not session.config.option.collectonly and not os.environ.get("KCMAIL_NODE_DEVENV_FILE"):
        _starting = NodeStart.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _starting is not None:
        _starting.stop()


@pytest.fixture(scope="session")
def node_env() -> Environment:
    reuse = os.environ.get("KCMAIL_NODE_DEVENV_FILE")
    if reuse:
        env = Environment.load(Path(reuse))
        assert env.node_name, f"{reuse} is an environment without a node: start it with `kcmail dev up --node`"
        return env
    if _starting is None:
        pytest.fail("the node environment was not started at collection (pytest_collection_finish)")
    return _starting.environment()


@pytest.fixture(scope="session")
def node_admin(node_env: Environment) -> KeycloakAdminAPI:
    return KeycloakAdminAPI(node_env)
