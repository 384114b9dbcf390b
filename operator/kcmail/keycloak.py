"""Keycloak admin API: version, realm read, and a safe ``smtpServer`` write (python-keycloak, async).

A realm PUT carries the realm representation just read with only ``smtpServer`` replaced: a partial
body would reset fields Keycloak treats as "absent means default" (the OAuth2 device-code lifespan,
for one). Every failure is raised as a :class:`KeycloakFailure` whose message carries Keycloak's own
words and never a secret.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from keycloak import KeycloakAdmin, KeycloakOpenIDConnection
from keycloak.exceptions import KeycloakAuthenticationError, KeycloakConnectionError, KeycloakError

from kcmail.conditions import Failure, Reason
from kcmail.defaults import KEYCLOAK_CONCURRENCY
from kcmail.smtp_settings import Version, parse_version


class KeycloakFailure(Exception):
    """An admin API call failed; ``failure`` says why, in the reason catalogue's words."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


@dataclass(frozen=True)
class AdminCredentials:
    """A service account (client_id + client_secret) or a user (username + password) with manage-realm."""

    client_id: str = "admin-cli"
    client_secret: str = field(default="", repr=False)
    username: str = ""
    password: str = field(default="", repr=False)


_TIMEOUT_SECONDS = 15
# The server version changes only with an upgrade; re-reading it now and then is enough to notice one.
_VERSION_MAX_AGE_SECONDS = 300.0


class KeycloakClient:
    """One admin client per Keycloak connection; its token is reused across reconciles."""

    def __init__(self, url: str, admin_realm: str, credentials: AdminCredentials,
                 verify: bool | str | ssl.SSLContext = True, *, concurrency: int = KEYCLOAK_CONCURRENCY) -> None:
        # python-keycloak joins paths with urljoin: a base URL with a path prefix needs its trailing /.
        self.url = url.rstrip("/") + "/"
        connection = KeycloakOpenIDConnection(
            server_url=self.url, realm_name=admin_realm, user_realm_name=admin_realm,
            client_id=credentials.client_id, client_secret_key=credentials.client_secret or None,
            username=credentials.username or None, password=credentials.password or None,
            grant_type="password" if credentials.username else "client_credentials",
            verify=verify, timeout=_TIMEOUT_SECONDS,
        )
        # Every call the slots let through finds a connection at once: a call waiting in the pool instead would
        # spend its request timeout there (PoolTimeout) before Keycloak saw it. python-keycloak's own pool keeps
        # only 20 idle, so with more in flight each burst would close the rest and open them again, a TLS
        # handshake each on both sides.
        connection.async_s = httpx.AsyncClient(verify=verify, limits=httpx.Limits(
            max_connections=concurrency, max_keepalive_connections=concurrency))
        self._admin = KeycloakAdmin(connection=connection)
        self._version: tuple[float, Version] | None = None
        self._token_lock = asyncio.Lock()
        # Waiting for a slot has no deadline; a call that has one keeps its own timeout.
        self._slots = asyncio.Semaphore(concurrency)
        self._version_read: asyncio.Future[Version] | None = None

    async def aclose(self) -> None:
        await self._admin.connection.aclose()
        await self._admin.connection.keycloak_openid.connection.aclose()

    async def version(self, *, fresh: bool = False) -> Version:
        """The server's version, re-read at most every few minutes unless ``fresh``.

        Calls that need it while a read is under way share that read and its outcome: every MailConfig's
        first pass after a start asks at once, and /admin/serverinfo is one of Keycloak's heaviest answers.
        """
        if self._version is not None and not fresh and time.monotonic() - self._version[0] < _VERSION_MAX_AGE_SECONDS:
            return self._version[1]
        if self._version_read is None:
            self._version_read = asyncio.ensure_future(self._read_version())
            self._version_read.add_done_callback(self._version_read_done)
        # Shielded: a caller that is cancelled (its MailConfig deleted) must not cancel the others' read.
        return await asyncio.shield(self._version_read)

    async def _read_version(self) -> Version:
        info = await self._call("read the server version", self._admin.a_get_server_info)
        version = parse_version(str(info.get("systemInfo", {}).get("version", "")))
        self._version = (time.monotonic(), version)
        return version

    def _version_read_done(self, read: asyncio.Future[Version]) -> None:
        self._version_read = None
        if not read.cancelled():
            read.exception()  # retrieved here too, so a read nobody awaited any more is not reported as lost

    async def list_realms(self) -> list[str]:
        """The names of the realms the admin account may see."""
        realms = await self._call("list the realms", self._admin.a_get_realms)
        return [str(realm["realm"]) for realm in realms]

    async def read_realm(self, realm: str) -> dict[str, Any]:
        return dict(await self._call(f"read realm {realm!r}", self._admin.a_get_realm, realm, realm=realm))

    async def write_smtp_server(self, realm: str, smtp_server: Mapping[str, str],
                                current: Mapping[str, Any] | None = None) -> None:
        """Replace the realm's ``smtpServer`` map and nothing else.

        ``current`` is the representation just read, saving a second GET when the caller has it.
        """
        representation = dict(current) if current is not None else await self.read_realm(realm)
        representation["smtpServer"] = dict(smtp_server)
        await self._call(f"update realm {realm!r}", self._admin.a_update_realm, realm, representation,
                         realm=realm)

    async def _ensure_token(self) -> None:
        """Log in once, before the first call and when the token nears its end.

        python-keycloak logs in only after a 401, so concurrent first calls (a Connection check and its
        MailConfigs at start-up) would each log in; the lock makes them share one token.
        """
        connection = self._admin.connection

        def valid() -> bool:
            expires = connection.expires_at
            return connection.token is not None and expires is not None and datetime.datetime.now(
                datetime.UTC) < expires

        if valid():
            return
        async with self._token_lock:
            if not valid():
                await connection.a_get_token()

    async def _call(self, what: str, method: Any, *args: Any, realm: str | None = None) -> Any:
        try:
            async with self._slots:
                await self._ensure_token()
                return await method(*args)
        except KeycloakAuthenticationError as error:
            raise KeycloakFailure(Failure(
                Reason.KEYCLOAK_AUTH_FAILED,
                f"Keycloak refused the admin credentials: {_keycloak_words(error)}", needs_person=True)) from None
        except (KeycloakConnectionError, httpx.HTTPError) as error:
            cause = error.__cause__ or error
            raise KeycloakFailure(Failure(
                Reason.KEYCLOAK_UNREACHABLE,
                f"cannot {what} at {self.url}: {type(cause).__name__}: {cause}")) from None
        except KeycloakError as error:
            raise KeycloakFailure(_classify(what, error, realm)) from None


def _keycloak_words(error: KeycloakError) -> str:
    """Keycloak's own message from an error body (errorMessage, error_description, error)."""
    body = error.response_body
    if isinstance(body, bytes | bytearray):
        try:
            data = json.loads(body)
        except ValueError:
            text = body.decode(errors="replace").strip()
            return text[:300] or f"HTTP {error.response_code}"
        if isinstance(data, dict):
            for key in ("errorMessage", "error_description", "error"):
                if data.get(key):
                    return str(data[key])
    return f"HTTP {error.response_code}"


# OAuth2 token errors (RFC 6749 5.2) that mean the admin login itself was refused. Keycloak 26 answers a
# wrong password with 400 invalid_grant, which python-keycloak raises as a plain KeycloakPostError.
_LOGIN_REFUSED = frozenset({"invalid_grant", "invalid_client", "unauthorized_client"})


def _oauth_error(error: KeycloakError) -> str:
    """The OAuth2 ``error`` code of a token endpoint answer, or ""."""
    try:
        data = json.loads(error.response_body or b"")
    except (TypeError, ValueError):
        return ""
    return str(data.get("error") or "") if isinstance(data, dict) else ""


def _classify(what: str, error: KeycloakError, realm: str | None) -> Failure:
    code = error.response_code or 0
    words = _keycloak_words(error)
    if _oauth_error(error) in _LOGIN_REFUSED:
        return Failure(Reason.KEYCLOAK_AUTH_FAILED, f"Keycloak refused the admin credentials: {words}",
                       needs_person=True)
    if code == 404 and realm is not None:
        return Failure(Reason.REALM_NOT_FOUND, f"Keycloak has no realm {realm!r} ({words})", needs_person=True)
    if code in (401, 403):
        return Failure(Reason.KEYCLOAK_AUTH_FAILED,
                       f"cannot {what}: Keycloak answered {code} ({words}); the admin account needs "
                       "the manage-realm role", needs_person=True)
    if code >= 500 or code == 0:
        return Failure(Reason.KEYCLOAK_UNREACHABLE, f"cannot {what}: Keycloak answered {code} ({words})")
    if code == 409:
        # Two writers of one realm at the same moment: the later commit collides with the rows the
        # earlier one inserted ("Realm with same name exists"). The next pass reads the winner's result.
        return Failure(Reason.KEYCLOAK_REJECTED, f"cannot {what}: Keycloak answered 409: {words} (another "
                       "write to the realm at the same moment; retrying)")
    return Failure(Reason.KEYCLOAK_REJECTED, f"cannot {what}: Keycloak answered {code}: {words}",
                   needs_person=True)
