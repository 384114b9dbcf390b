"""kcmail.secretwatch against the real API server: metadata only, pages, and every kind of change in order."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from kcmail.apisession import logged_in_kube
from kcmail.devenv import operator_env
from kcmail.devenv.environment import Environment
from kcmail.secretwatch import SecretEvent, SecretWatch, secrets_path

pytestmark = pytest.mark.integration

SECRET_VALUE = "never-in-a-watch-4f1c"
WAIT_SECONDS = 30


@pytest.fixture
def namespace(devenv: Environment, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("KUBECONFIG", str(devenv.kubeconfig))
    name = f"watch-{uuid.uuid4().hex[:8]}"
    operator_env.apply(devenv, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    operator_env.kubectl(devenv, "delete", "secrets", "--all", "-n", name, "--wait=false")
    operator_env.kubectl(devenv, "delete", "namespace", name, "--wait=false")


def _version(devenv: Environment, namespace: str, name: str) -> str:
    result = operator_env.kubectl(devenv, "get", "secret", name, "-n", namespace, "-o", "json")
    assert result.returncode == 0, result.stderr
    version: str = json.loads(result.stdout)["metadata"]["resourceVersion"]
    return version


def test_a_listing_is_metadata_only_and_paged(devenv: Environment, namespace: str) -> None:
    for i in range(3):
        _create(devenv, namespace, f"s{i}")

    async def pages() -> list[dict[str, Any]]:
        async with logged_in_kube() as kube:
            first = await kube.list_metadata(secrets_path(namespace), limit=2, continue_token=None)
            rest = await kube.list_metadata(secrets_path(namespace), limit=2,
                                            continue_token=first["metadata"]["continue"])
            return [first, rest]

    first, rest = asyncio.run(pages())

    assert first["kind"] == "PartialObjectMetadataList"
    assert [len(first["items"]), len(rest["items"])] == [2, 1]
    assert SECRET_VALUE not in json.dumps([first, rest])
    assert all("data" not in item for item in first["items"] + rest["items"])


def test_every_change_arrives_in_order_without_the_data(devenv: Environment, namespace: str) -> None:
    _create(devenv, namespace, "before")
    events: list[SecretEvent] = []
    lines: list[dict[str, Any]] = []

    async def follow() -> None:
        async with logged_in_kube() as kube:
            original = kube.watch_metadata

            async def recording(*args: Any, **kwargs: Any) -> Any:
                async for line in original(*args, **kwargs):
                    lines.append(line)
                    yield line

            kube.watch_metadata = recording  # type: ignore[method-assign]

            async def record(event: SecretEvent) -> None:
                events.append(event)

            task = asyncio.create_task(SecretWatch(kube, (namespace,), record).run())
            try:
                await _until(lambda: len(events) >= 1)
                await asyncio.to_thread(_change_secrets, devenv, namespace)
                await _until(lambda: [e.type.value for e in events][-1:] == ["DELETED"])
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    asyncio.run(follow())

    summary = [(e.type.value, e.name) for e in events]
    assert summary == [("LISTED", "before"), ("ADDED", "after"), ("MODIFIED", "before"), ("DELETED", "after")]
    assert all(e.namespace == namespace and e.uid for e in events)
    # The MODIFIED event carries the version the API server shows for the changed Secret.
    assert events[2].resource_version == _version(devenv, namespace, "before")
    assert lines
    assert SECRET_VALUE not in json.dumps(lines)


def _create(devenv: Environment, namespace: str, name: str) -> None:
    # Created, not applied: kubectl apply would copy the value into an annotation, which is metadata.
    _kubectl(devenv, "create", "secret", "generic", name, "-n", namespace,
             f"--from-literal=client-secret={SECRET_VALUE}")


def _change_secrets(devenv: Environment, namespace: str) -> None:
    _create(devenv, namespace, "after")
    _kubectl(devenv, "patch", "secret", "before", "-n", namespace, "-p", '{"stringData": {"client-secret": "rotated"}}')
    _kubectl(devenv, "delete", "secret", "after", "-n", namespace)


def _kubectl(devenv: Environment, *args: str) -> None:
    result = operator_env.kubectl(devenv, *args)
    assert result.returncode == 0, result.stderr


async def _until(condition: Any) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "the watch did not deliver in time"
        await asyncio.sleep(0.1)
