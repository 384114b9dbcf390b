"""The Google token bridge (``kcmail bridge``) between the real Keycloak and a stand-in for Google.

Keycloak asks the bridge for a token the only way it can (client credentials, client_secret_post); the
bridge makes Google's JWT-bearer grant with google-auth against the environment's Google stand-in
(google_oauth.py, which checks the assertion as Google's contract says), and the environment's SMTP server
lets the token send only as the mailbox Google names in tokeninfo. Google's refusals come back in Google's
words, one grant serves a token's life, and nothing secret reaches the bridge's log.
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import socket
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx
import pytest

from kcmail.bridge.registry import secret_digest
from kcmail.conditions import Reason
from kcmail.devenv import operator_env
from kcmail.devenv.google_oauth import key_file
from kcmail.devenv.mail_spool import wait_for_message
from kcmail.devenv.processes import ProcessRegistry
from kcmail.oauth import TokenClient, TokenFailure, TokenRequest

pytestmark = pytest.mark.integration

MAIL_SCOPE = "https://mail.google.com/"


@dataclass
class Bridge:
    url: str
    log: Path
    secrets: dict[str, str]
    keys: dict[str, Any]
    google_stats: str
    ca_file: Path
    trap: socket.socket

    def request(self, data: dict[str, str] | str, headers: dict[str, str] | None = None) -> httpx.Response:
        content = data if isinstance(data, str) else None
        form = data if isinstance(data, dict) else None
        return httpx.post(self.url, data=form, content=content, headers=headers, verify=self.tls(), timeout=30)

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def token(self, client_id: str, **extra: str) -> httpx.Response:
        return self.request({"grant_type": "client_credentials", "client_id": client_id,
                             "client_secret": self.secrets[client_id], "scope": MAIL_SCOPE, **extra})

    def grants(self) -> int:
        return int(httpx.get(self.google_stats, verify=self.tls(), timeout=10).json()["grants"])


# client id -> (key in keys.json, mailbox index or an address the Workspace does not have)
CLIENTS = {
    "gmail-sender": ("delegated", 0),
    "gmail-burst": ("delegated", 1),
    "gmail-disabled-key": ("disabled", 0),
    "gmail-no-delegation": ("undelegated", 0),
    "gmail-unknown-mailbox": ("delegated", "nobody@workspace.example"),
    "gmail-foreign-token-uri": ("foreign-token-uri", 0),
    "gmail-forged": ("forged", 0),
}


@pytest.fixture(scope="module")
def bridge(devenv, tmp_path_factory) -> Iterator[Bridge]:
    assert devenv.google_token_url, "this environment predates the Google stand-in: `kcmail dev down` and `up`"
    work = tmp_path_factory.mktemp("bridge")
    keys = json.loads(Path(devenv.google_keys).read_text())
    # A tenant's key file naming a token endpoint of its own: a listening socket that no one may call.
    trap = socket.create_server(("127.0.0.1", 0))
    trap.setblocking(False)
    keys["foreign-token-uri"] = {**keys["disabled"], "token_uri": f"https://127.0.0.1:{trap.getsockname()[1]}/token"}
    # Another tenant's key file that copies the delegated account's name and key id, with a key of its own.
    forged = key_file(keys["delegated"]["client_email"], keys["delegated"]["client_id"], devenv.google_token_url)[0]
    keys["forged"] = {**keys["delegated"], "private_key": forged["private_key"]}
    client_secrets = {client_id: secrets.token_urlsafe(32) for client_id in CLIENTS}
    registry = {"clients": {
        client_id: {"secretSha256": secret_digest(client_secrets[client_id]),
                    "mailbox": keys["mailboxes"][mailbox] if isinstance(mailbox, int) else mailbox,
                    "serviceAccountKey": keys[key]}
        for client_id, (key, mailbox) in CLIENTS.items()}}
    clients_file = work / "clients.json"
    clients_file.write_text(json.dumps(registry))
    processes = ProcessRegistry(work)
    server, url = operator_env.start_bridge(devenv, processes, clients=clients_file)
    try:
        yield Bridge(url=url, log=server.log, secrets=client_secrets, keys=keys, trap=trap,
                     google_stats=devenv.google_token_url.removesuffix("/token") + "/stats",
                     ca_file=Path(devenv.ca_file))
    finally:
        processes.stop_all()
        trap.close()


def _realm_sending_through(devenv, keycloak_admin, bridge: Bridge, client_id: str, mailbox: str, port: int) -> str:
    realm = f"gmail-{uuid.uuid4().hex[:8]}"
    operator_env.create_realm(devenv, realm)
    representation = keycloak_admin.realm(realm)
    representation["smtpServer"] = {
        "host": devenv.smtp_host, "port": str(port), "starttls": "true", "ssl": "false",
        "auth": "true", "from": mailbox, "user": mailbox, "authType": "token", "authTokenUrl": bridge.url,
        "authTokenScope": MAIL_SCOPE, "authTokenClientId": client_id,
        "authTokenClientSecret": bridge.secrets[client_id]}
    assert keycloak_admin.put_realm(realm, representation).status_code == 204
    return realm


def test_keycloak_sends_through_the_bridge_as_the_workspace_mailbox(devenv, keycloak_admin, bridge, mail_server):
    """Against both SMTP servers: the project's, and Postfix with Dovecot asking the tokeninfo endpoint."""
    mailbox = bridge.keys["mailboxes"][0]
    realm = _realm_sending_through(devenv, keycloak_admin, bridge, "gmail-sender", mailbox, mail_server.starttls_port)
    try:
        since = datetime.datetime.now(datetime.UTC)
        stored = keycloak_admin.realm(realm)["smtpServer"]
        sent = keycloak_admin.request("POST", f"/{realm}/testSMTPConnection", json=stored)
        assert sent.status_code == 204, sent.text
        message = wait_for_message(mail_server.spool, lambda m: m.received_at >= since
                                   and devenv.keycloak_admin_email in m.rcpt_tos, timeout=30)
        assert message.auth is not None
        # The SMTP server asked "Google" about the token: it names the mailbox (and the service account,
        # where the server records clients).
        assert (message.auth.mechanism.upper(), message.auth.user) == ("XOAUTH2", mailbox)
        if mail_server.records_client:
            assert message.auth.client_id == bridge.keys["delegated"]["client_id"]
    finally:
        keycloak_admin.request("DELETE", f"/{realm}")


async def test_a_token_for_one_mailbox_sends_as_no_other(devenv, bridge):
    """What the SMTP server enforces, as Gmail does: the token's mailbox, not the one the client claims."""
    answer = bridge.token("gmail-sender")
    assert answer.status_code == 200, answer.text
    token = answer.json()["access_token"]

    async def authenticate(user: str) -> tuple[int, str]:
        client = aiosmtplib.SMTP(hostname=devenv.smtp_host, port=devenv.smtp_starttls_port, start_tls=True,
                                 tls_context=ssl.create_default_context(cafile=str(devenv.ca_file)))
        await client.connect()
        try:
            await client.ehlo()
            blob = base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode())
            response = await client.execute_command(b"AUTH", b"XOAUTH2", blob)
            return response.code, response.message
        finally:
            client.close()

    assert (await authenticate(bridge.keys["mailboxes"][0]))[0] == 235
    code, text = await authenticate(bridge.keys["mailboxes"][1])
    assert code == 535
    assert "mailbox not allowed" in text


def test_one_google_grant_serves_a_tokens_life_however_many_requests(bridge):
    before = bridge.grants()
    tokens = set()
    for _ in range(6):
        answer = bridge.token("gmail-burst")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        tokens.add(body["access_token"])
        assert body["token_type"] == "Bearer"
        # Google's 3599 s, handed out a minute early (Keycloak reuses tokens up to 30 s past expiry).
        assert 3400 < body["expires_in"] <= 3539
        assert answer.headers["Cache-Control"] == "no-store"
    assert len(tokens) == 1
    assert bridge.grants() - before == 1


def test_a_key_files_own_token_uri_is_never_asked(bridge):
    # The key is one Google refuses: the answer in Google's words shows which endpoint was asked (no token
    # kept from an earlier request can stand in for the grant).
    answer = bridge.token("gmail-foreign-token-uri")
    assert answer.status_code == 400, answer.text
    assert answer.json()["error_description"] == "Invalid JWT Signature."
    with pytest.raises(BlockingIOError):
        bridge.trap.accept()


def test_a_key_copying_anothers_name_and_id_never_gets_the_token_that_key_earned(bridge):
    assert bridge.token("gmail-sender").status_code == 200  # the real key's token, now kept by the bridge
    answer = bridge.token("gmail-forged")
    assert answer.status_code == 400, answer.text
    assert (answer.json()["error"], answer.json()["error_description"]) == ("invalid_grant", "Invalid JWT Signature.")


@pytest.mark.parametrize(("client_id", "error", "words"), [
    ("gmail-no-delegation", "unauthorized_client",
     "Client is unauthorized to retrieve access tokens using this method"),
    ("gmail-disabled-key", "invalid_grant", "Invalid JWT Signature."),
    ("gmail-unknown-mailbox", "invalid_grant", "Invalid email or User ID"),
])
def test_googles_refusals_come_back_in_googles_words(bridge, client_id, error, words):
    answer = bridge.token(client_id)
    assert answer.status_code == 400
    body = answer.json()
    assert (body["error"], body["error_source"]) == (error, "google")
    assert words in body["error_description"]


def test_the_bridge_refuses_what_it_does_not_serve_in_oauth2_form(bridge):
    good = {"grant_type": "client_credentials", "client_id": "gmail-sender",
            "client_secret": bridge.secrets["gmail-sender"]}
    cases = [
        ({**good, "client_secret": "wrong"}, None, 401, "invalid_client"),
        ({**good, "client_id": "nobody"}, None, 401, "invalid_client"),
        ({**good, "scope": "https://www.googleapis.com/auth/drive"}, None, 400, "invalid_scope"),
        ({**good, "grant_type": "password"}, None, 400, "unsupported_grant_type"),
        ({"grant_type": "client_credentials"}, None, 400, "invalid_request"),
        ("grant_type=client_credentials&padding=" + "x" * 9000, {"Content-Type": "application/x-www-form-urlencoded"},
         413, "invalid_request"),
    ]
    for data, headers, status, error in cases:
        answer = bridge.request(data, headers)
        assert (answer.status_code, answer.json()["error"]) == (status, error), data if isinstance(data, dict) else ""
        assert answer.json()["error_source"] == "bridge"
    # client_secret_basic works as well as Keycloak's client_secret_post.
    basic = base64.b64encode(f"gmail-sender:{bridge.secrets['gmail-sender']}".encode()).decode()
    answer = bridge.request({"grant_type": "client_credentials"}, {"Authorization": f"Basic {basic}"})
    assert answer.status_code == 200, answer.text


def test_a_client_id_hammering_the_bridge_is_slowed_down(bridge):
    answers = [bridge.request({"grant_type": "client_credentials", "client_id": "gmail-hammer",
                               "client_secret": "guess"}).status_code for _ in range(30)]
    # --rate 5: a burst of 10, then a few a second; every other answer is the refusal of a wrong secret.
    assert answers.count(429) >= 15
    assert set(answers) == {401, 429}


def test_no_key_assertion_secret_or_token_reaches_the_bridges_log(bridge):
    issued = [bridge.token(client_id).json().get("access_token") for client_id in ("gmail-sender", "gmail-burst")]
    log = bridge.log.read_text()
    assert "token for client gmail-sender" in log
    canaries = [*bridge.secrets.values(), *(t for t in issued if t)]
    for key in ("delegated", "disabled", "undelegated"):
        pem = bridge.keys[key]["private_key"]
        canaries.append(pem.splitlines()[5])
    for canary in canaries:
        assert canary not in log
    assert "eyJ" not in log  # no JWT, so no assertion
    assert "ya29." not in log


@pytest.mark.parametrize(("client_id", "secret", "reason", "words"), [
    ("gmail-no-delegation", None, Reason.GOOGLE_REFUSED, "unauthorized_client: Client is unauthorized"),
    ("gmail-disabled-key", None, Reason.GOOGLE_REFUSED, "invalid_grant: Invalid JWT Signature."),
    ("gmail-unknown-mailbox", None, Reason.GOOGLE_REFUSED, "invalid_grant: Invalid email or User ID"),
    ("gmail-sender", "not-the-secret", Reason.INVALID_CLIENT, "invalid_client: unknown client or wrong secret"),
])
async def test_kcmails_token_probe_names_who_refused_in_their_words(bridge, client_id, secret, reason, words):
    """The token request kcmail's probe makes (the one Keycloak makes), through the bridge: Google's refusals
    are GoogleRefused with Google's words, the bridge's own are what they are."""
    async with httpx.AsyncClient(verify=bridge.tls()) as http:
        client = TokenClient(http)
        request = TokenRequest(url=bridge.url, client_id=client_id,
                               client_secret=secret or bridge.secrets[client_id], scope=MAIL_SCOPE,
                               secret_version="1")
        with pytest.raises(TokenFailure) as raised:
            await client.token(request)
    assert raised.value.failure.reason is reason
    assert words in raised.value.failure.message
    assert bridge.secrets[client_id] not in raised.value.failure.message
