"""The probe concurrency bound and the shared token, against the real issuer and SMTP server.

Many MailConfigs come due at once after a restart or a Secret change shared by all: the Prober must
hold the number of SMTP conversations to its bound, and MailConfigs that present the same client ask
the token endpoint once between them.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from kcmail.devenv.certs import client_context
from kcmail.devenv.environment import SENDER_MAILBOXES
from kcmail.oauth import TokenClient
from kcmail.probes import Prober
from kcmail.spec import Credentials, MailConfigSpec

pytestmark = pytest.mark.integration

MAILBOX = SENDER_MAILBOXES["smtp-app"][0]
CONCURRENCY = 3
PROBES = 12


def _spec(env) -> MailConfigSpec:
    return MailConfigSpec.parse({
        "connectionRef": {"kind": "ClusterKeycloakConnection", "name": "main"},
        "realm": "acme",
        "smtp": {"host": "localhost", "port": env.smtp_starttls_port, "security": "StartTLS"},
        "sender": {"from": MAILBOX},
        "auth": {"type": "XOAUTH2", "username": MAILBOX,
                 "xoauth2": {"tokenURL": env.issuer_token_url, "scope": env.issuer_scope,
                             "clientSecretRef": {"name": "smtp-oauth"}}},
    })


async def test_twelve_probes_at_once_run_three_at_a_time_and_share_one_token(devenv):
    credentials = Credentials(secret_version="uid/1", client_id=devenv.issuer_client_id,
                              client_secret=devenv.issuer_client_secret)
    spec = _spec(devenv)
    async with httpx.AsyncClient(verify=client_context(devenv.ca_file), timeout=15) as http:
        tokens = TokenClient(http)
        prober = Prober(tokens, client_context(devenv.ca_file), CONCURRENCY)
        # Watch the count from outside the Prober as well, every time the event loop turns.
        seen: list[int] = []
        done = asyncio.Event()

        async def watch() -> None:
            while not done.is_set():
                seen.append(prober.active)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        try:
            outcomes = await asyncio.wait_for(asyncio.gather(
                *(prober.probe(spec, credentials, f"ns-{i}/mail") for i in range(PROBES))), timeout=120)
        finally:
            done.set()
            await watcher

    failures = [(o.token, o.smtp) for o in outcomes if o.token is not True or o.smtp is not True]
    assert failures == []
    assert prober.peak == CONCURRENCY
    assert max(seen) == CONCURRENCY
    assert prober.active == 0
    # One request for all twelve: the first probe asked, the two beside it waited for its answer, and
    # every later one found it cached.
    assert tokens.requests_made == 1
    assert [[s.name for s in o.steps if s.name == "token"] for o in outcomes].count(["token"]) == 1
    assert all([s.name for s in o.steps if s.name != "token"] == ["connect", "ehlo", "starttls", "auth"]
               for o in outcomes)
