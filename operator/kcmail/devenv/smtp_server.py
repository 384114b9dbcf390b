"""The project's test SMTP server: loopback listeners that check XOAUTH2 bearer tokens for real.

Built on aiosmtpd. Each listener offers STARTTLS, implicit TLS or no TLS at all, and advertises AUTH only
once the connection is encrypted. XOAUTH2 tokens are verified against the issuer's JWKS (see
``xoauth2``); PLAIN and LOGIN check a fixed user/password map. Accepted messages land in a spool
directory (see ``mail_spool``).

Run it as a process with ``python -m kcmail.devenv.smtp_server --config <file.json>`` (the file is
``SmtpServerConfig.to_json()``), or inside a running event loop with ``async with serving(config)``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import contextlib
import dataclasses
import datetime
import email.parser
import email.policy
import hmac
import json
import logging
import signal
import ssl
import sys
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from kcmail.devenv import mail_spool
from kcmail.devenv.mail_spool import AuthIdentity, RecordedMessage
from kcmail.devenv.xoauth2 import (
    ByTokenShape,
    HttpsJwks,
    SigningKeys,
    SigningKeysUnavailable,
    TokenInfoVerifier,
    TokenRejected,
    TokenVerifier,
    Verifier,
    parse_initial_response,
)

_logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
MECHANISMS = ("XOAUTH2", "PLAIN", "LOGIN")
TlsMode = Literal["starttls", "implicit", "none"]

_INVALID = "535 5.7.8 Authentication credentials invalid"
# A 16 KiB token grows by a third in base64, plus the mailbox and the XOAUTH2 framing.
_AUTH_LINE_LIMIT = 24 * 1024
_SHUTDOWN_TIMEOUT = 5.0


class ConfigError(ValueError):
    """The server configuration is incomplete or contradicts itself."""


@dataclass(frozen=True)
class ListenerConfig:
    """One port on 127.0.0.1; ``port`` 0 takes a free one (``RunningSmtpServer.ports`` tells which).

    ``tls="none"`` offers no STARTTLS, and so no AUTH either; ``mechanisms`` are the AUTH mechanisms
    advertised once the connection is encrypted.
    """

    name: str
    port: int
    tls: TlsMode = "starttls"
    mechanisms: tuple[str, ...] = MECHANISMS

    def __post_init__(self) -> None:
        if self.tls not in get_args(TlsMode):
            raise ConfigError(f"listener {self.name}: tls must be one of {get_args(TlsMode)}, "
                              f"not {self.tls!r}")
        unknown = set(self.mechanisms) - set(MECHANISMS)
        if not self.mechanisms or unknown:
            raise ConfigError(f"listener {self.name}: mechanisms must be a non-empty subset of {MECHANISMS}")


@dataclass(frozen=True)
class SmtpServerConfig:
    """Everything the server needs; ``to_json``/``from_json`` carry it to a server process.

    ``clients`` maps a client id (the token's ``azp``) to the mailboxes it may send as; ``basic_users`` maps
    a PLAIN/LOGIN user to its password; ``ca_file`` is the CA that the JWKS endpoint's certificate must
    chain to.
    """

    listeners: tuple[ListenerConfig, ...]
    cert_file: Path
    key_file: Path
    ca_file: Path
    jwks_url: str
    issuer: str
    spool_dir: Path
    clients: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    basic_users: Mapping[str, str] = field(default_factory=dict)
    refused_domains: tuple[str, ...] = ()
    require_auth: bool = True
    hostname: str = "localhost"
    # The address every listener binds: loopback, or the one-node cluster's host-only bridge (node.py).
    host: str = HOST
    # Google's tokeninfo (the stand-in of google_oauth.py): opaque tokens are judged by its answer.
    tokeninfo_url: str = ""

    def __post_init__(self) -> None:
        names = [listener.name for listener in self.listeners]
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"listeners need distinct names, got {names}")

    def to_json(self) -> str:
        # Paths are the only values JSON cannot hold as they are.
        return json.dumps(dataclasses.asdict(self), indent=2, default=str)

    @classmethod
    def from_json(cls, text: str) -> SmtpServerConfig:
        try:
            raw: dict[str, Any] = json.loads(text)
            return cls(**{
                **raw,
                "listeners": tuple(_listener_from_dict(item) for item in raw["listeners"]),
                **{key: Path(raw[key]) for key in ("cert_file", "key_file", "ca_file", "spool_dir")},
                "clients": {client: tuple(mailboxes) for client, mailboxes in raw.get("clients", {}).items()},
                "refused_domains": tuple(raw.get("refused_domains", ())),
            })
        except (ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"invalid SMTP server configuration: {error!r}") from error


def _listener_from_dict(item: Mapping[str, Any]) -> ListenerConfig:
    return ListenerConfig(**{**item, "mechanisms": tuple(item.get("mechanisms", MECHANISMS))})


@dataclass(frozen=True)
class RunningSmtpServer:
    config: SmtpServerConfig
    ports: Mapping[str, int]


class _Smtp(SMTP):
    """aiosmtpd's SMTP with room for real-sized bearer tokens on the AUTH line, and session logging."""

    # SMTP.__init__ sizes its stream reader from this attribute; the default (1001) refuses tokens.
    line_length_limit = _AUTH_LINE_LIMIT + 2

    def __init__(self, handler: _Handler, *, sessions: set[_Smtp], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._handler = handler
        self._sessions = sessions
        # From the connection to QUIT: a client that said goodbye may open its next connection before this
        # one's close reaches the server, without holding two conversations.
        self.conversing = False
        # SMTP keeps its per-command limits in one class-level dict shared by every instance (and grown
        # by every EHLO), defaulting to 512 bytes; a dict of our own lets AUTH alone carry a token.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        self.command_size_limits["AUTH"] = _AUTH_LINE_LIMIT
        # Message lines keep RFC 5321's limit, so that a client that forgets to wrap them is caught.
        self.line_length_limit = SMTP.line_length_limit

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # SMTP calls this again once STARTTLS completes; only the first call is a new connection.
        first = self.transport is None
        super().connection_made(transport)
        if first:
            self.conversing = True
            self._sessions.add(self)
            # Conversations under way now, this one included: the benchmarks read the peak from here.
            self._handler.log(self, "connected", open=sum(session.conversing for session in self._sessions))

    async def smtp_QUIT(self, arg: str) -> None:
        self.conversing = False
        await super().smtp_QUIT(arg)

    def connection_lost(self, error: Exception | None) -> None:
        self._handler.log(self, "disconnected")
        self._sessions.discard(self)
        super().connection_lost(error)

    def uses_tls(self) -> bool:
        return self.transport is not None and self.transport.get_extra_info("ssl_object") is not None


class _Handler:
    """aiosmtpd hooks for one listener. aiosmtpd takes every ``auth_*`` member as a mechanism."""

    def __init__(self, config: SmtpServerConfig, listener: ListenerConfig, verifier: Verifier) -> None:
        self._config = config
        self._listener = listener
        self._verifier = verifier
        self._refused_domains = frozenset(d.casefold() for d in config.refused_domains)

    def log(self, server: _Smtp, event: str, **details: object) -> None:
        fields = [f'{k}="{v}"' if " " in str(v) else f"{k}={v}" for k, v in details.items() if v is not None]
        _logger.info("[%s %s] %s", self._listener.name, _peer(server.session), " ".join([event, *fields]))

    def handle_STARTTLS(self, server: _Smtp, session: Session, envelope: Envelope) -> bool:
        self.log(server, "tls started")
        return True

    async def auth_XOAUTH2(self, server: _Smtp, args: list[str]) -> AuthResult:
        if len(args) == 1:
            # No initial response: RFC 4954 has the server ask with an empty challenge.
            blob = await server.challenge_auth("", encode_to_b64=False)
            if not isinstance(blob, bytes):
                return AuthResult(success=False, handled=True)
        else:
            try:
                blob = base64.b64decode(args[1], validate=True)
            except binascii.Error:
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        user = None
        try:
            request = parse_initial_response(blob)
            user = request.user
            verified = await self._verifier.verify(request.user, request.token)
        except TokenRejected as rejection:
            self.log(server, "auth rejected", mechanism="XOAUTH2", user=user, client=rejection.client_id,
                     reason=rejection.reason)
            # A 535 straight away: Angus Mail sends no empty line after a 334 error challenge.
            return AuthResult(success=False, handled=False, message=f"{_INVALID} ({rejection.reason})")
        except SigningKeysUnavailable as error:
            self.log(server, "auth failed", mechanism="XOAUTH2", user=user, reason=str(error))
            return AuthResult(success=False, handled=False,
                              message="454 4.7.0 Temporary authentication failure (signing keys unavailable)")
        identity = AuthIdentity(mechanism="XOAUTH2", user=request.user, client_id=verified.client_id,
                                token_id=verified.token_id)
        self.log(server, "auth ok", mechanism="XOAUTH2", user=identity.user, client=identity.client_id,
                 jti=identity.token_id)
        return AuthResult(success=True, auth_data=identity)

    def check_password(self, server: _Smtp, session: Session, envelope: Envelope, mechanism: str,
                       auth_data: LoginPassword) -> AuthResult:
        """aiosmtpd's ``authenticator`` for its built-in PLAIN and LOGIN."""
        user = auth_data.login.decode("utf-8", errors="replace")
        expected = self._config.basic_users.get(user)
        if expected is None or not hmac.compare_digest(expected.encode(), auth_data.password):
            reason = "unknown user" if expected is None else "password invalid"
            self.log(server, "auth rejected", mechanism=mechanism, user=user, reason=reason)
            return AuthResult(success=False, handled=False, message=f"{_INVALID} ({reason})")
        self.log(server, "auth ok", mechanism=mechanism, user=user)
        return AuthResult(success=True, auth_data=AuthIdentity(mechanism=mechanism, user=user))

    async def handle_MAIL(self, server: _Smtp, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        self.log(server, "sender", mail_from=address)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: _Smtp, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if address.rpartition("@")[2].casefold() in self._refused_domains:
            self.log(server, "recipient refused", rcpt=address)
            return "550 5.1.1 Recipient rejected"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        self.log(server, "recipient accepted", rcpt=address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: _Smtp, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        message = RecordedMessage(
            id=uuid.uuid4().hex,
            received_at=datetime.datetime.now(datetime.UTC),
            listener=self._listener.name,
            peer=_peer(session),
            tls=server.uses_tls(),
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            auth=session.auth_data if isinstance(session.auth_data, AuthIdentity) else None,
            subject=_subject(content),
            # Clients send UTF-8 or 7-bit transfer encodings; a stray byte must not cost the whole record.
            data=content.decode("utf-8", errors="replace"),
        )
        await asyncio.to_thread(mail_spool.write_message, self._config.spool_dir, message)
        self.log(server, "message recorded", id=message.id, subject=message.subject)
        return f"250 2.0.0 OK {message.id}"


def _peer(session: Session | None) -> str:
    peer = session.peer if session else None
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"


def _subject(content: bytes) -> str | None:
    subject = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(content)["subject"]
    return None if subject is None else str(subject)


def _server_tls_context(config: SmtpServerConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.cert_file, config.key_file)
    return context


def _session_factory(config: SmtpServerConfig, listener: ListenerConfig, verifier: Verifier,
                     tls: ssl.SSLContext, sessions: set[_Smtp]) -> Callable[[], _Smtp]:
    handler = _Handler(config, listener, verifier)
    loop = asyncio.get_running_loop()

    def build() -> _Smtp:
        with warnings.catch_warnings():
            # aiosmtpd knows TLS only as STARTTLS and warns that AUTH without it is unsafe; on the
            # implicit-TLS listener the whole connection is encrypted before the first byte.
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
            return _Smtp(
                handler,
                sessions=sessions,
                loop=loop,
                hostname=config.hostname,
                ident="kcmail test SMTP server",
                enable_SMTPUTF8=True,
                tls_context=tls if listener.tls == "starttls" else None,
                auth_required=config.require_auth,
                auth_require_tls=listener.tls != "implicit",
                auth_exclude_mechanism=[m for m in MECHANISMS if m not in listener.mechanisms],
                authenticator=handler.check_password,
            )

    return build


@contextlib.asynccontextmanager
async def serving(config: SmtpServerConfig) -> AsyncIterator[RunningSmtpServer]:
    """Serve every listener of ``config`` in the running event loop until the block ends."""
    config.spool_dir.mkdir(parents=True, exist_ok=True)
    tls = _server_tls_context(config)
    jwks = HttpsJwks(config.jwks_url, config.ca_file)
    tokeninfo = TokenInfoVerifier(config.tokeninfo_url, config.ca_file) if config.tokeninfo_url else None
    verifier = ByTokenShape(TokenVerifier(issuer=config.issuer, clients=config.clients, keys=SigningKeys(jwks)),
                            tokeninfo)
    sessions: set[_Smtp] = set()
    servers: list[asyncio.Server] = []
    loop = asyncio.get_running_loop()
    try:
        ports: dict[str, int] = {}
        for listener in config.listeners:
            server = await loop.create_server(_session_factory(config, listener, verifier, tls, sessions),
                                              config.host, listener.port,
                                              ssl=tls if listener.tls == "implicit" else None)
            servers.append(server)
            ports[listener.name] = server.sockets[0].getsockname()[1]
            _logger.info("listening listener=%s port=%d tls=%s mechanisms=%s", listener.name,
                         ports[listener.name], listener.tls, ",".join(listener.mechanisms))
        yield RunningSmtpServer(config=config, ports=ports)
    finally:
        for server in servers:
            server.close()
        # Open sessions would otherwise keep wait_closed() waiting (Python 3.12+) until they time out.
        for session in list(sessions):
            if session.transport is not None:
                session.transport.close()
        async with asyncio.timeout(_SHUTDOWN_TIMEOUT):
            for server in servers:
                await server.wait_closed()
        await jwks.aclose()
        if tokeninfo is not None:
            await tokeninfo.aclose()


async def _serve_until_signalled(config: SmtpServerConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with serving(config):
        await stop.wait()
        _logger.info("stopping")
    _logger.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kcmail.devenv.smtp_server",
                                     description="The kcmail test SMTP server (XOAUTH2, PLAIN, LOGIN).")
    parser.add_argument("--config", type=Path, required=True,
                        help="JSON written by SmtpServerConfig.to_json()")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    # aiosmtpd narrates every command and httpx every request; our own lines already cover each session
    # event once, and nothing of theirs below an error is worth a second line.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        config = SmtpServerConfig.from_json(args.config.read_text())
    except (OSError, ConfigError) as error:
        print(f"smtp_server: {error}", file=sys.stderr)
        return 2
    asyncio.run(_serve_until_signalled(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
