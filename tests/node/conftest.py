"""The one-node cluster's environment (``kcmail dev up --node``), for the tests that install the chart.

Set ``KCMAIL_NODE_DEVENV_FILE`` to the ``dev.env`` of a node environment already started with
``kcmail dev up --node`` to reuse it; otherwise the session starts its own, in a state directory of its
own beside the main environment, and stops it at the end (pods, mounts and kernel settings included).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcmail.devenv import environment
from kcmail.devenv.clients import KeycloakAdminAPI
from kcmail.devenv.environment import Environment


@pytest.fixture(scope="session")
def node_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Environment]:
    reuse = os.environ.get("KCMAIL_NODE_DEVENV_FILE")
    if reuse:
        env = Environment.load(Path(reuse))
        assert env.node_name, f"{reuse} is an environment without a node: start it with `kcmail dev up --node`"
        yield env
        return
    state_dir = tmp_path_factory.mktemp("node-devenv")
    env = environment.up(state_dir, with_node=True)
    try:
        yield env
    finally:
        environment.down(state_dir)


@pytest.fixture(scope="session")
def node_admin(node_env: Environment) -> KeycloakAdminAPI:
    return KeycloakAdminAPI(node_env)

