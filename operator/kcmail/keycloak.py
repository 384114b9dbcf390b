"""Keycloak admin API: version, realm read, and a safe realm write (python-keycloak logs in; kcmail builds
every path and reads every answer itself).

A realm PUT carries the realm representation just read with only ``smtpServer`` (and kcmail's owner
attribute) replaced: a partial body would reset fields Keycloak treats as "absent means default" (the
OAuth2 device-code lifespan, for one). A realm name goes into a path only as one percent-encoded segment,
and a representation is trusted only when it names exactly the realm asked for: a name that a path, a
database collation or a proxy could turn into another realm never reaches a write. Every failure is
raised as a :class:`KeycloakFailure` whose message carries Keycloak's own words, redacted, and never a
secret; an answer that is not what the admin API answers (not JSON, the wrong shape, too large) is one too.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from keycloak import KeycloakAdmin, KeycloakOpenIDConnection
from keycloak.connection import ConnectionManager
from keycloak.exceptions import KeycloakAuthenticationError, KeycloakConnectionError, KeycloakError

from kcmail.answers import KEYCLOAK_ANSWER_LIMIT, AnswerTooLarge, limited_client
from kcmail.conditions import Failure, Reason
from kcmail.defaults import KEYCLOAK_CONCURRENCY
from kcmail.redact import redact
from kcmail.smtp_settings import Version, parse_version
from kcmail.spec import realm_name_problem


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


def realm_path(realm: str) -> str:
    """``admin/realms/<realm>``, the name as exactly one percent-encoded path segment.

    A name that cannot be one segment (``..``, ``a/b``, one with ``?`` or ``%``) is refused here as well
    as at admission, so no caller can address a realm other than the one it names.
    """
    problem = realm_name_problem(realm)
    if problem:
        raise KeycloakFailure(Failure(Reason.INVALID_SPEC, f"realm {realm!r} {problem}", needs_person=True))
    return "admin/realms/" + urllib.parse.quote(realm, safe="")


class KeycloakClient:
    """One admin client per Keycloak connection; its token is reused across reconciles."""

    def __init__(self, url: str, admin_realm: str, credentials: AdminCredentials,
                 verify: bool | str | ssl.SSLContext = True, *, concurrency: int = KEYCLOAK_CONCURRENCY) -> None:
        # python-keycloak joins paths with urljoin: a base URL with a path prefix needs its trailing /.
        self.url = url.rstrip("/") + "/"
        self._secrets = (credentials.client_secret, credentials.password)
        # The admin realm goes into the token URL that python-keycloak builds: one encoded segment too.
        login_realm = urllib.parse.quote(admin_realm, safe="")
        connection = KeycloakOpenIDConnection(
            server_url=self.url, realm_name=login_realm, user_realm_name=login_realm,
            client_id=credentials.client_id, client_secret_key=credentials.client_secret or None,
            username=credentials.username or None, password=credentials.password or None,
            grant_type="password" if credentials.username else "client_credentials",
            verify=verify, timeout=_TIMEOUT_SECONDS,
        )
        # Every call the slots let through finds a connection at once: a call waiting in the pool instead would
        # spend its request timeout there (PoolTimeout) before Keycloak saw it. python-keycloak's own pool keeps
        # only 20 idle, so with more in flight each burst would close the rest and open them again, a TLS
        # handshake each on both sides. Both clients (admin calls, logins) read answers up to a limit.
        connection.async_s = limited_client(KEYCLOAK_ANSWER_LIMIT, verify=verify, limits=httpx.Limits(
            max_connections=concurrency, max_keepalive_connections=concurrency))
        connection.keycloak_openid.connection.async_s = limited_client(KEYCLOAK_ANSWER_LIMIT, verify=verify)
        self._admin = KeycloakAdmin(connection=connection)
        self._version: tuple[float, Version | None] | None = None
        self._token_lock = asyncio.Lock()
        # Waiting for a slot has no deadline; a call that has one keeps its own timeout.
        self._slots = asyncio.Semaphore(concurrency)
        # The tasks inside one_slot(): their calls use the slot they hold.
        self._holders: set[asyncio.Task[Any]] = set()
        self._version_read: asyncio.Future[Version | None] | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        self._closed = True
        await self._admin.connection.aclose()
        await self._admin.connection.keycloak_openid.connection.aclose()

    async def version(self, *, fresh: bool = False) -> Version | None:
        """The server's version, re-read at most every few minutes unless ``fresh``; None when Keycloak hides
        it from this admin (see :func:`kcmail.smtp_settings.version_text`).

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

    async def _read_version(self) -> Version | None:
        what = "read the server version"
        info = _object(await self._call(what, "GET", "admin/serverinfo"), what)
        system = info.get("systemInfo")
        text = system.get("version") if isinstance(system, Mapping) else None
        version: Version | None = None
        if text is not None:
            try:
                version = parse_version(str(text))
            except ValueError:
                raise KeycloakFailure(Failure(
                    Reason.KEYCLOAK_ANSWER_INVALID,
                    f"cannot {what}: {redact(text, limit=80)!r} is not a Keycloak version")) from None
        self._version = (time.monotonic(), version)
        return version

    def _version_read_done(self, read: asyncio.Future[Version | None]) -> None:
        self._version_read = None
        if not read.cancelled():
            read.exception()  # retrieved here too, so a read nobody awaited any more is not reported as lost

    async def list_realms(self) -> list[str]:
        """The names of the realms the admin account may see."""
        what = "list the realms"
        realms = await self._call(what, "GET", "admin/realms")
        if not isinstance(realms, list) or not all(isinstance(r, Mapping) and isinstance(r.get("realm"), str)
                                                   for r in realms):
            raise KeycloakFailure(_unexpected(what, "a list of realms"))
        return [str(realm["realm"]) for realm in realms]

    async def read_realm(self, realm: str) -> dict[str, Any]:
        """The realm's representation; refused unless it names exactly ``realm``."""
        what = f"read realm {realm!r}"
        representation = _object(await self._call(what, "GET", realm_path(realm), realm=realm), what)
        named = representation.get("realm")
        if named != realm:
            # A case-insensitive database collation, or something in between rewriting the path: either way
            # this is not the realm the MailConfig names, and nothing is written to it.
            raise KeycloakFailure(Failure(
                Reason.REALM_MISMATCH,
                f"asked for realm {realm!r}, Keycloak answered with realm {redact(named, limit=80)!r}; kcmail "
                "writes only to a realm whose name is exactly spec.realm", needs_person=True))
        return representation

    async def write_realm(self, realm: str, representation: Mapping[str, Any]) -> None:
        """PUT ``representation`` (one just read, with kcmail's changes) back to ``realm``."""
        if representation.get("realm") != realm:
            raise KeycloakFailure(Failure(Reason.REALM_MISMATCH, f"refusing to write realm {realm!r} with a "
                                          "representation of another realm", needs_person=True))
        await self._call(f"update realm {realm!r}", "PUT", realm_path(realm), body=representation, realm=realm)

    @contextlib.asynccontextmanager
    async def one_slot(self) -> AsyncIterator[None]:
        """Hold one of the slots for the calls this task makes inside, so they follow one another.

        A pass reads its realm and writes the whole representation back: between the two, an edit made
        in the admin console would be overwritten. Taking a slot per call put each write behind every
        call queued since its read, minutes in a burst of passes; in one slot it is the next call. Only
        the calls that belong together go inside: a call that needs a slot of its own from in here
        (another task's, such as the shared version read) would wait for slots held by passes like this one.
        """
        task = asyncio.current_task()
        assert task is not None
        async with self._slots:
            self._holders.add(task)
            try:
                yield
            finally:
                self._holders.discard(task)

    def _slot(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return contextlib.nullcontext() if asyncio.current_task() in self._holders else self._slots

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

    async def _renew_token(self, refused: object) -> None:
        """After Keycloak answered 401 to a call made with the token ``refused``: renew it, once.

        python-keycloak renews on every 401 it sees, so a revoked token met by fifty calls in flight cost
        fifty renewals; here the calls that met the same token share the first one's.
        """
        connection = self._admin.connection
        async with self._token_lock:
            if connection.token is refused:
                await connection.a_refresh_token()

    async def _send(self, method: str, path: str, body: Mapping[str, Any] | None) -> httpx.Response:
        """The request alone: python-keycloak's own methods would renew the token on a 401 by themselves."""
        connection = self._admin.connection
        if method == "PUT":
            return await ConnectionManager.a_raw_put(connection, path, data=json.dumps(body))
        return await ConnectionManager.a_raw_get(connection, path)

    async def _call(self, what: str, method: str, path: str, *, body: Mapping[str, Any] | None = None,
                    realm: str | None = None) -> Any:
        """One admin API call; the parsed JSON answer (None for an empty one)."""
        connection = self._admin.connection
        try:
            async with self._slot():
                await self._ensure_token()
                token = connection.token
                response = await self._send(method, path, body)
                if response.status_code == 401:
                    # The token was revoked or Keycloak restarted without its sessions: renew it and try once more.
                    await self._renew_token(token)
                    response = await self._send(method, path, body)
        except KeycloakAuthenticationError as error:
            raise KeycloakFailure(Failure(
                Reason.KEYCLOAK_AUTH_FAILED,
                f"Keycloak refused the admin credentials: {_keycloak_words(error.response_body, self._secrets)}",
                needs_person=True)) from None
        except KeycloakError as error:
            if isinstance(error, KeycloakConnectionError) or error.response_code is None:
                raise KeycloakFailure(self._unreachable(what, error)) from None
            raise KeycloakFailure(_classify(what, error.response_code, error.response_body, realm,
                                            self._secrets)) from None
        except httpx.HTTPError as error:
            raise KeycloakFailure(self._unreachable(what, error)) from None
        except (TypeError, KeyError, ValueError, AttributeError) as error:
            # A login answer python-keycloak could not use (no access_token, not JSON, the wrong shape).
            raise KeycloakFailure(_unexpected(what, f"a login answer with a token ({type(error).__name__})")) from None
        if not 200 <= response.status_code <= 299:
            raise KeycloakFailure(_classify(what, response.status_code, response.content, realm, self._secrets))
        if not response.content:
            return None
        try:
            return json.loads(response.content)
        except ValueError:
            raise KeycloakFailure(_unexpected(what, "JSON")) from None

    def _unreachable(self, what: str, error: BaseException) -> Failure:
        cause: BaseException = error
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, AnswerTooLarge):
            return Failure(Reason.KEYCLOAK_ANSWER_INVALID, f"cannot {what} at {self.url}: {cause}")
        detail = redact(f"{type(cause).__name__}: {cause}", self._secrets)
        return Failure(Reason.KEYCLOAK_UNREACHABLE, f"cannot {what} at {self.url}: {detail}")


def _object(answer: Any, what: str) -> dict[str, Any]:
    if not isinstance(answer, dict):
        raise KeycloakFailure(_unexpected(what, "a JSON object"))
    return answer


def _unexpected(what: str, expected: str) -> Failure:
    """An answer that is not what Keycloak's admin API gives: a proxy's page, another service, a hostile one."""
    return Failure(Reason.KEYCLOAK_ANSWER_INVALID,
                   f"cannot {what}: Keycloak's answer is not {expected}; is the Connection's url a Keycloak?")


def _keycloak_words(body: bytes | None, secrets: tuple[str, ...] = ()) -> str:
    """Keycloak's own message from an error body (errorMessage, error_description, error), redacted.

    Only those fields: the body of an answer that is not Keycloak's JSON may be any service's page (a
    namespaced Connection's url is a tenant's to choose), and is never quoted.
    """
    try:
        data = json.loads(body or b"")
    except ValueError:
        return "no message"
    if isinstance(data, dict):
        for key in ("errorMessage", "error_description", "error"):
            if data.get(key):
                return redact(data[key], secrets)
    return "no message"


# OAuth2 token errors (RFC 6749 5.2) that mean the admin login itself was refused. Keycloak 26 answers a
# wrong password with 400 invalid_grant, which python-keycloak raises as a plain KeycloakPostError.
_LOGIN_REFUSED = frozenset({"invalid_grant", "invalid_client", "unauthorized_client"})


def _oauth_error(body: bytes | None) -> str:
    """The OAuth2 ``error`` code of a token endpoint answer, or ""."""
    try:
        data = json.loads(body or b"")
    except (TypeError, ValueError):
        return ""
    return str(data.get("error") or "") if isinstance(data, dict) else ""


def _classify(what: str, code: int, body: bytes | None, realm: str | None, secrets: tuple[str, ...] = ()) -> Failure:
    words = _keycloak_words(body, secrets)
    if _oauth_error(body) in _LOGIN_REFUSED:
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
