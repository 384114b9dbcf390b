"""Session-wide fixtures: one local environment of real servers for every test that needs it.

Set ``KCMAIL_DEVENV_FILE`` to the ``dev.env`` of an environment already started with ``kcmail dev up``
to reuse it (quick iterations); otherwise the session starts its own and stops it at the end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcmail.devenv import environment
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
