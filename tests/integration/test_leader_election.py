"""kcmail.leader's Elector against the real API server: one candidate leads and the other waits, a clean
release hands over at once, and a leader stops the moment another holds its Lease or once it cannot renew
within the renew deadline (its access to the Lease revoked)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kcmail.apisession import logged_in_kube
from kcmail.devenv import operator_env
from kcmail.devenv.environment import Environment
from kcmail.devenv.kube import write_kubeconfig
from kcmail.leader import CLIENT_GO, JITTER_FACTOR, Elector, LeaseLost

pytestmark = pytest.mark.integration

# A follower tries again within one jittered retry period; a second one absorbs a slow request.
HANDOVER_SECONDS = 2 * CLIENT_GO.retry_period * (1 + JITTER_FACTOR) + 5


@pytest.fixture(scope="module")
def namespace(devenv: Environment) -> Iterator[str]:
    name = f"lease-{uuid.uuid4().hex[:8]}"
    operator_env.apply(devenv, operator_env.namespace(name))
    yield name
    operator_env.kubectl(devenv, "delete", "namespace", name, "--wait=false")


def _lease(devenv: Environment, namespace: str, name: str) -> dict:
    result = operator_env.kubectl(devenv, "-n", namespace, "get", "lease", name, "-o", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def _elector(stack: contextlib.AsyncExitStack, kubeconfig: Path, namespace: str, lease: str, who: str) -> Elector:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KUBECONFIG", str(kubeconfig))
        kube = await stack.enter_async_context(logged_in_kube(connections=2))
    return Elector(kube, namespace, lease, who)


@pytest.fixture
async def candidates(devenv: Environment, namespace: str) -> AsyncIterator[tuple[Elector, Elector]]:
    """Two candidates for a new Lease, as the environment's admin, each on a session of its own."""
    lease = f"kcmail-{uuid.uuid4().hex[:6]}"
    async with contextlib.AsyncExitStack() as stack:
        first = await _elector(stack, devenv.kubeconfig, namespace, lease, "candidate-a")
        second = await _elector(stack, devenv.kubeconfig, namespace, lease, "candidate-b")
        yield first, second


async def test_one_candidate_leads_and_the_other_waits(devenv, namespace, candidates):
    first, second = candidates
    await asyncio.wait_for(first.acquire(), timeout=30)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(second.acquire(), timeout=CLIENT_GO.lease_duration / 2)
    assert (first.leading, second.leading) == (True, False)
    spec = _lease(devenv, namespace, first.name)["spec"]
    assert (spec["holderIdentity"], spec["leaseDurationSeconds"]) == ("candidate-a", 15)


async def test_a_clean_release_hands_the_lease_over_within_a_retry_period(devenv, namespace, candidates):
    first, second = candidates
    await asyncio.wait_for(first.acquire(), timeout=30)
    # The leader renews, so only its release can let the follower in.
    keeping = asyncio.create_task(first.keep())
    following = asyncio.create_task(second.acquire())
    await asyncio.sleep(CLIENT_GO.lease_duration + CLIENT_GO.retry_period)
    assert not following.done()
    keeping.cancel()
    await asyncio.gather(keeping, return_exceptions=True)
    await first.release()
    # Far less than the 15 s lease the follower would otherwise wait out.
    await asyncio.wait_for(following, timeout=HANDOVER_SECONDS)
    spec = _lease(devenv, namespace, first.name)["spec"]
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("candidate-b", 1)


async def test_a_leader_whose_lease_another_takes_stops_at_once(devenv, namespace, candidates):
    first, _ = candidates
    await asyncio.wait_for(first.acquire(), timeout=30)
    keeping = asyncio.create_task(first.keep())
    await asyncio.sleep(CLIENT_GO.retry_period + 1)
    assert not keeping.done()
    taken = operator_env.kubectl(devenv, "-n", namespace, "patch", "lease", first.name, "--type=merge",
                                 "-p", json.dumps({"spec": {"holderIdentity": "someone-else"}}))
    assert taken.returncode == 0, taken.stderr
    # At its next renewal, within a retry period: not after the renew deadline.
    with pytest.raises(LeaseLost, match="names another holder: someone-else"):
        await asyncio.wait_for(keeping, timeout=CLIENT_GO.retry_period + 5)
    assert not first.leading


def _service_account_kubeconfig(devenv: Environment, namespace: str, name: str, path: Path) -> Path:
    token = operator_env.kubectl(devenv, "-n", namespace, "create", "token", name, "--duration=1h")
    assert token.returncode == 0, token.stderr
    write_kubeconfig(path, api_url=devenv.kube_api_url, ca_file=devenv.ca_file, user=name,
                     token=token.stdout.strip())
    return path


async def test_a_leader_that_can_no_longer_renew_stops_within_the_renew_deadline(devenv, namespace, tmp_path):
    account = f"elector-{uuid.uuid4().hex[:6]}"
    operator_env.apply(devenv, {"apiVersion": "v1", "kind": "ServiceAccount",
                                "metadata": {"name": account, "namespace": namespace}},
                       {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                        "metadata": {"name": account, "namespace": namespace},
                        "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                                   "verbs": ["get", "create", "update"]}]},
                       {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                        "metadata": {"name": account, "namespace": namespace},
                        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
                        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]})
    kubeconfig = _service_account_kubeconfig(devenv, namespace, account, tmp_path / "elector.kubeconfig")
    async with contextlib.AsyncExitStack() as stack:
        leader = await _elector(stack, kubeconfig, namespace, f"kcmail-{account}", account)
        # The Role's three verbs are enough to lead and to renew.
        await asyncio.wait_for(leader.acquire(), timeout=30)
        keeping = asyncio.create_task(leader.keep())
        await asyncio.sleep(2 * CLIENT_GO.retry_period + 1)
        assert not keeping.done()
        revoked = operator_env.kubectl(devenv, "-n", namespace, "delete", "rolebinding", account)
        assert revoked.returncode == 0, revoked.stderr
        with pytest.raises(LeaseLost, match="not renewed within 10 s"):
            await asyncio.wait_for(keeping, timeout=CLIENT_GO.renew_deadline + CLIENT_GO.retry_period + 5)
    # Nobody released it: it still names the stopped leader, whose lease a follower waits out.
    assert _lease(devenv, namespace, f"kcmail-{account}")["spec"]["holderIdentity"] == account
