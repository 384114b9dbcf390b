"""The bridge's decisions without a network: its registry, the credentials it accepts, its rate limits, how it
reads google-auth's errors, and the tokens it keeps."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import time

import pytest

from kcmail.bridge import google, registry
from kcmail.bridge.registry import BridgeClient, parse, secret_digest
from kcmail.bridge.server import RateLimits, client_credentials
from kcmail.devenv.google_oauth import key_file

pytestmark = pytest.mark.unit

# Keys made at run time, as Google's key files hold them: no private key is committed.
KEY = {**key_file("mailer@p.iam.gserviceaccount.com", "1", "https://oauth2.googleapis.com/token")[0],
       "private_key_id": "k1"}
PEM = KEY["private_key"]
OTHER_PEM = key_file("other@p.iam.gserviceaccount.com", "2", "https://oauth2.googleapis.com/token")[0]["private_key"]


def _entry(**changes: object) -> dict[str, object]:
    return {"secretSha256": secret_digest("s3cret"), "mailbox": "no-reply@workspace.example",
            "serviceAccountKey": KEY, **changes}


def test_the_registry_keeps_good_entries_and_says_why_it_skips_bad_ones_without_their_values():
    clients, problems = parse({"clients": {
        "good": _entry(),
        "short-digest": _entry(secretSha256="abc"),
        "no-mailbox": _entry(mailbox="not an address"),
        "user-key": _entry(serviceAccountKey={**KEY, "type": "authorized_user"}),
        "no-key-id": _entry(serviceAccountKey={**KEY, "private_key_id": ""}),
        "not-pem": _entry(serviceAccountKey={**KEY, "private_key": "hunter2"}),
    }})
    assert list(clients) == ["good"]
    assert clients["good"].service_account == "mailer@p.iam.gserviceaccount.com"
    assert len(problems) == 5
    assert not any("hunter2" in p or PEM.splitlines()[1] in p for p in problems)
    assert parse(["not", "an", "object"]) == ({}, ["the registry holds no 'clients' object"])


async def test_a_client_authenticates_only_with_its_own_secret(tmp_path):
    path = tmp_path / "clients.json"
    path.write_text('{"clients": {"good": ' + json.dumps(_entry()) + "}}")
    clients = registry.FileRegistry(path)
    assert await clients.authenticate("good", "s3cret") is not None
    assert await clients.authenticate("good", "s3cret ") is None
    assert await clients.authenticate("other", "s3cret") is None
    # A rewritten file is read again: the old secret stops working at once.
    path.write_text('{"clients": {"good": ' + json.dumps(_entry(secretSha256=secret_digest("new")))
                    + "}}")
    assert await clients.authenticate("good", "s3cret") is None
    assert await clients.authenticate("good", "new") is not None
    # A broken rewrite keeps what was read before rather than locking every client out.
    path.write_text("{not json")
    assert await clients.authenticate("good", "new") is not None


def _secret_entry(client_id: str, **changes: object) -> str:
    return json.dumps({"clientID": client_id, **_entry(**changes)})


def test_the_registry_secret_holds_one_client_per_data_key_and_trusts_no_duplicate():
    document, problems = registry.secret_document({
        registry.SEED_KEY: "c2VlZA==", "a.json": _secret_entry("kcmail-a"), "b.json": "{broken",
        "c.json": json.dumps({"mailbox": "x@y"}), "d.json": _secret_entry("kcmail-d"),
        "e.json": _secret_entry("kcmail-d")})
    assert list(document["clients"]) == ["kcmail-a"]
    assert len(problems) == 3
    assert all("PRIVATE" not in problem for problem in problems)


async def test_the_registry_secret_is_read_again_when_due_and_at_once_for_an_unknown_client():
    now = [0.0]
    data: dict[str, str] = {}
    reads: list[float] = []

    async def read() -> dict[str, str] | None:
        reads.append(now[0])
        if data.get("fail"):
            raise OSError("API server unreachable")
        return dict(data) or None

    clients = registry.SecretRegistry(read, every=10, missed_rate=2, clock=lambda: now[0])
    data["fail"] = "1"
    assert not await clients.refresh(missed=False)
    assert not clients.loaded  # not ready: it would refuse every client
    del data["fail"]
    now[0] = 10
    assert await clients.authenticate("kcmail-a", "s3cret") is None  # no Secret yet
    assert clients.loaded
    now[0] = 0
    clients = registry.SecretRegistry(read, every=10, missed_rate=2, clock=lambda: now[0])
    reads.clear()
    assert await clients.authenticate("kcmail-a", "s3cret") is None
    # The operator enrols a client and probes at once: the bridge reads again for it, without waiting 10 s.
    data["a.json"] = _secret_entry("kcmail-a")
    now[0] = 0.1
    assert await clients.authenticate("kcmail-a", "s3cret") is not None
    # Known clients do not make the bridge read again before 10 s...
    now[0] = 5
    assert await clients.authenticate("kcmail-a", "s3cret") is not None
    assert reads == [0.0, 0.1]
    # ...and clients that do not exist make it read at most a burst of five, then two a second.
    misses = len(reads)
    for _ in range(20):
        assert await clients.authenticate("kcmail-x", "s3cret") is None
    assert len(reads) - misses == 5
    now[0] = 6
    for _ in range(20):
        assert await clients.authenticate("kcmail-x", "s3cret") is None
    assert len(reads) - misses == 7
    # A failed read keeps the clients read before.
    data["fail"] = "1"
    now[0] = 20
    assert await clients.authenticate("kcmail-a", "s3cret") is not None
    assert reads[-1] == 20
    # A withdrawn client stops working at the next read.
    del data["fail"], data["a.json"]
    now[0] = 40
    assert await clients.authenticate("kcmail-a", "s3cret") is None


def test_repr_of_a_client_shows_no_key_or_digest():
    (client,) = parse({"clients": {"good": _entry()}})[0].values()
    assert "PRIVATE" not in repr(client)
    assert secret_digest("s3cret") not in repr(client)


@pytest.mark.parametrize(("headers", "form", "expected"), [
    ({}, {"client_id": "a", "client_secret": "b"}, ("a", "b", False)),
    ({"Authorization": "Basic " + base64.b64encode(b"a%3Ab:c+d").decode()}, {}, ("a:b", "c d", True)),
    ({"Authorization": "Bearer x"}, {}, "only client_secret_post and client_secret_basic are accepted"),
    ({"Authorization": "Basic " + base64.b64encode(b"a:b").decode()}, {"client_id": "a"},
     "the client authenticated in two ways at once"),
    ({"Authorization": "Basic !!!"}, {}, "the Basic credentials are not base64 of id:secret"),
    ({}, {"client_id": "a"}, "client_id and client_secret are required"),
])
def test_client_credentials_come_from_the_form_or_basic_never_both(headers, form, expected):
    assert client_credentials(headers, form) == expected


def test_rate_limits_allow_a_burst_then_the_rate_per_client_and_in_total():
    now = [0.0]
    limits = RateLimits(per_client=2, total=3, clock=lambda: now[0])
    assert [limits.allow("a") for _ in range(5)] == [True, True, True, True, False]
    # Another client has its own bucket, but the total (burst 6) is nearly spent.
    assert [limits.allow("b") for _ in range(3)] == [True, True, False]
    now[0] += 1.0
    assert limits.allow("a") is True


def test_googles_refusal_is_read_from_google_auths_error_arguments():
    refused = google.refusal(("unauthorized_client: Client is unauthorized…",
                              {"error": "unauthorized_client", "error_description": "Client is unauthorized…"}))
    assert isinstance(refused, google.GoogleRefused)
    assert (refused.error, refused.description) == ("unauthorized_client", "Client is unauthorized…")
    # A proxy's page is not Google refusing.
    assert isinstance(google.refusal(("<html>…</html>",)), google.GoogleUnreachable)
    # Google's words are foreign text: bounded, and token-shaped strings redacted.
    long = google.refusal(("x", {"error": "invalid_grant", "error_description": "y" * 1000}))
    assert isinstance(long, google.GoogleRefused)
    assert len(long.description) <= google.WORDS_LIMIT


def _client(mailbox: str = "no-reply@workspace.example", key_id: str = "k1") -> BridgeClient:
    return BridgeClient(client_id="c", mailbox=mailbox, key={**KEY, "private_key_id": key_id},
                        secret_sha256=secret_digest("s"))


async def test_tokens_are_kept_per_mailbox_and_renewed_before_they_expire():
    now = [datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)]
    granted: list[str] = []

    def grant(client: BridgeClient) -> google.IssuedToken:
        granted.append(client.mailbox)
        return google.IssuedToken(f"token-{len(granted)}", now[0] + datetime.timedelta(seconds=3599))

    tokens = google.GoogleTokens(grant, clock=lambda: now[0])
    first = await tokens.token(_client())
    assert first.access_token == "token-1"
    # Handed out a minute before Google's expiry.
    assert first.expires_at == now[0] + datetime.timedelta(seconds=3539)
    assert (await tokens.token(_client("NO-REPLY@workspace.example"))).access_token == "token-1"
    assert (await tokens.token(_client("alerts@workspace.example"))).access_token == "token-2"
    assert (await tokens.token(_client(key_id="k2"))).access_token == "token-3"
    now[0] += datetime.timedelta(seconds=3599) - google.RENEW_BEFORE - datetime.timedelta(seconds=1)
    assert (await tokens.token(_client())).access_token == "token-1"
    now[0] += datetime.timedelta(seconds=2)
    assert (await tokens.token(_client())).access_token == "token-4"
    assert tokens.grants == 4


async def test_a_key_that_copies_anothers_name_and_id_gets_no_token_that_key_earned():
    granted: list[str] = []

    def grant(client: BridgeClient) -> google.IssuedToken:
        granted.append(client.key["private_key"])
        return google.IssuedToken(f"token-{len(granted)}",
                                  datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1))

    tokens = google.GoogleTokens(grant)
    assert (await tokens.token(_client())).access_token == "token-1"
    # Same client_email, private_key_id and mailbox, another private key: Google must see that key.
    forged = BridgeClient(client_id="tenant-b", mailbox="no-reply@workspace.example",
                          key={**KEY, "private_key": OTHER_PEM}, secret_sha256=secret_digest("s"))
    assert (await tokens.token(forged)).access_token == "token-2"
    assert granted == [PEM, OTHER_PEM]


async def test_concurrent_requests_for_one_mailbox_wait_for_one_grant():
    calls = 0

    def grant(_client: BridgeClient) -> google.IssuedToken:
        nonlocal calls
        calls += 1
        time.sleep(0.2)
        return google.IssuedToken("t", datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1))

    tokens = google.GoogleTokens(grant)
    answers = await asyncio.gather(*(tokens.token(_client()) for _ in range(10)))
    assert {a.access_token for a in answers} == {"t"}
    assert calls == 1


@pytest.mark.parametrize("value", ["kcmail", "kcmail/", "/registry", "Kcmail/registry", "a/b/c"])
def test_both_commands_refuse_a_registry_secret_that_is_not_namespace_slash_name(value, capsys):
    from kcmail.cli import _parser

    for argv in (["run", "--bridge-url", "https://bridge.example/token", "--bridge-registry", value],
                 ["bridge", "--tls-cert", "c", "--tls-key", "k", "--clients-secret", value]):
        with pytest.raises(SystemExit) as exited:
            _parser().parse_args(argv)
        assert exited.value.code == 2
        assert "is not NAMESPACE/NAME" in capsys.readouterr().err
    assert _parser().parse_args(["bridge", "--tls-cert", "c", "--tls-key", "k", "--clients-secret",
                                 "kcmail/registry"]).clients_secret == ("kcmail", "registry")
