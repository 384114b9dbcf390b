"""kopf's API session against the real API server: kopf's credentials work and the pool bound holds."""

from __future__ import annotations

import asyncio

import kopf
import pytest
import yaml

from kcmail.apisession import bounded_session
from kcmail.devenv.environment import Environment

pytestmark = pytest.mark.integration

WATCH_SECONDS = 3


@pytest.fixture
def info(devenv: Environment) -> kopf.ConnectionInfo:
    """What kopf's login reads from the environment's kubeconfig: the server, its CA, a client certificate."""
    config = yaml.safe_load(devenv.kubeconfig.read_text())
    cluster, user = config["clusters"][0]["cluster"], config["users"][0]["user"]
    return kopf.ConnectionInfo(server=cluster["server"], ca_data=cluster["certificate-authority-data"],
                               certificate_data=user["client-certificate-data"],
                               private_key_data=user["client-key-data"])


async def _order_of_completion(info: kopf.ConnectionInfo, limit: int) -> list[str]:
    """Hold two watch streams open for WATCH_SECONDS, then GET a namespace: what finished in which order."""
    context = bounded_session(info, limit)
    session = context.aiohttp_session
    done: list[str] = []

    async def watch(name: str) -> None:
        url = f"{info.server}/api/v1/namespaces?watch=true&timeoutSeconds={WATCH_SECONDS}"
        async with session.get(url) as response:
            assert response.status == 200
            await response.read()
        done.append(name)

    async def get() -> None:
        async with session.get(f"{info.server}/api/v1/namespaces/default") as response:
            assert response.status == 200
        done.append("get")

    try:
        watches = [asyncio.create_task(watch(f"watch-{i}")) for i in range(2)]
        await asyncio.sleep(0.5)  # both streams hold their connection before the GET asks for one
        await asyncio.wait_for(asyncio.gather(get(), *watches), timeout=WATCH_SECONDS + 30)
    finally:
        await session.close()
    return done


def test_a_request_waits_for_a_connection_when_the_pool_is_full(info: kopf.ConnectionInfo) -> None:
    order = asyncio.run(_order_of_completion(info, limit=2))

    # The GET got a connection only when a stream ended. Both end at the same second, so the GET may finish
    # before the second stream has read its last byte: it is never first, not always last.
    assert order[0] != "get", order
    assert sorted(order) == ["get", "watch-0", "watch-1"]


def test_a_request_goes_at_once_while_the_pool_has_room(info: kopf.ConnectionInfo) -> None:
    order = asyncio.run(_order_of_completion(info, limit=3))

    assert order[0] == "get", order
