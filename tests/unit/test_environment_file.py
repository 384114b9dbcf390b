"""The env file a running environment wrote stays readable as fields are added, and shows no secret."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kcmail.devenv.environment import ENV_FILE, Environment

pytestmark = pytest.mark.unit


def _environment(state_dir: Path) -> Environment:
    values: dict[str, object] = {}
    for spec in dataclasses.fields(Environment):
        if spec.type in ("Path", Path):
            values[spec.name] = state_dir / spec.name
        elif spec.type in ("int", int):
            values[spec.name] = 2525
        else:
            values[spec.name] = f"value of {spec.name}"
    values["state_dir"] = state_dir
    return Environment(**values)  # type: ignore[arg-type]


def test_an_env_file_round_trips(tmp_path):
    env = _environment(tmp_path)
    assert Environment.load(env.write()) == env


def test_an_env_file_from_before_a_field_with_a_default_still_loads(tmp_path):
    env = _environment(tmp_path)
    path = env.write()
    path.write_text("".join(line for line in path.read_text().splitlines(keepends=True)
                            if "ISSUER_ROTATION_CLIENT_ID" not in line))
    assert Environment.load(tmp_path / ENV_FILE) == dataclasses.replace(env, issuer_rotation_client_id="")


def test_an_env_file_missing_a_required_field_is_refused(tmp_path):
    path = _environment(tmp_path).write()
    path.write_text("".join(line for line in path.read_text().splitlines(keepends=True)
                            if "KEYCLOAK_URL" not in line))
    with pytest.raises(KeyError):
        Environment.load(path)


def test_the_repr_shows_no_secret(tmp_path):
    env = _environment(tmp_path)
    secrets = [env.keycloak_admin_password, env.issuer_client_secret, env.issuer_other_client_secret,
               env.smtp_basic_password]
    assert [value for value in secrets if value in repr(env)] == []
