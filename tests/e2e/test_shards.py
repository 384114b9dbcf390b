"""Shards: `kcmail run --shard NAME` acts only on the MailConfigs labelled kcmail.io/shard=NAME, and
`--exclude-sharded` only on the unlabelled ones; each elects its leader on a Lease of its own. The API
server filters the watch, so a shard never even sees another's MailConfigs; moving one to another shard is
relabelling it. The session's own operator is stopped meanwhile, so the two shards are the only actors.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from kcmail.devenv import operator_env
from kcmail.devenv.processes import ProcessRegistry, ServerProcess, wait_until

pytestmark = pytest.mark.e2e

LEADING = "leading: holding Lease"


@dataclass
class Shard:
    process: ServerProcess

    def log(self) -> str:
        return self.process.log.read_text(errors="replace")


@pytest.fixture
def shards(alone, tenant, tmp_path_factory) -> Iterator[tuple[Shard, Shard]]:
    """(blue, default): one operator with --shard blue, one with --exclude-sharded, both elected on Leases
    in the tenant's namespace."""
    registry = ProcessRegistry(tmp_path_factory.mktemp("shards"))
    started = [Shard(operator_env.start_operator(
        tenant.env, registry, name=name, leader_election=True,
        args=["-n", tenant.namespace, "--leader-election-namespace", tenant.namespace, *args]))
        for name, args in (("shard-blue", ["--shard", "blue"]), ("shard-default", ["--exclude-sharded"]))]
    try:
        for shard in started:
            wait_until(lambda s=shard: LEADING in s.log(), server=shard.process, what="leading its shard",
                       timeout=60)
        yield started[0], started[1]
    finally:
        registry.stop_all()


def _labelled(mailconfig: dict, shard: str | None) -> dict:
    if shard is not None:
        mailconfig["metadata"].setdefault("labels", {})["kcmail.io/shard"] = shard
    return mailconfig


def test_two_shards_split_the_mailconfigs_as_labelled_and_a_relabelled_one_moves(tenant, shards):
    blue, default = shards
    # Each shard holds a Lease of its own: both lead at once.
    leases = operator_env.kubectl(tenant.env, "-n", tenant.namespace, "get", "leases", "-o", "name").stdout.split()
    assert sorted(leases) == ["lease.coordination.k8s.io/kcmail", "lease.coordination.k8s.io/kcmail-shard-blue"]
    other_realm = f"{tenant.realm}-{uuid.uuid4().hex[:4]}"
    operator_env.create_realm(tenant.env, other_realm)
    try:
        tenant.apply(tenant.secret(), _labelled(tenant.mailconfig("blue-mail"), "blue"),
                     tenant.mailconfig("plain-mail", realm=other_realm))
        tenant.wait_condition("True", "Delivering", name="blue-mail")
        tenant.wait_condition("True", "Delivering", name="plain-mail")
        blue_marker, plain_marker = (f"MailConfig {tenant.namespace}/{name}: reconciled"
                                     for name in ("blue-mail", "plain-mail"))
        assert blue_marker in blue.log()
        assert blue_marker not in default.log()
        assert plain_marker in default.log()
        assert plain_marker not in blue.log()
        # Each shard read only its own from the API server: the other's name is nowhere in its log.
        assert "plain-mail" not in blue.log()
        assert "blue-mail" not in default.log()

        # Relabelled into the blue shard: the default shard lets go, the blue one takes it on.
        tenant.kubectl("label", "mailconfig", "plain-mail", "kcmail.io/shard=blue")
        tenant.kubectl("annotate", "mailconfig", "plain-mail", "kcmail.io/requested-at=moved", "--overwrite")
        wait_until(lambda: plain_marker in blue.log(), server=blue.process, what="the blue shard's pass of it",
                   timeout=60)
        passes_before = default.log().count(plain_marker)
        tenant.wait_condition("True", "Delivering", name="plain-mail")
        assert default.log().count(plain_marker) == passes_before
    finally:
        operator_env.kubectl(tenant.env, "-n", tenant.namespace, "delete", "mailconfigs", "--all", "--wait=false")
        tenant.admin.request("DELETE", f"/{other_realm}")
