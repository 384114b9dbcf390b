"""Who may ask the bridge for a token, and for which mailbox: a JSON file, or kcmail's registry Secret.

Each entry holds a client id, the SHA-256 digest of the client secret Keycloak presents, the one mailbox that
client may have tokens for, and the Google service-account key (the JSON Google issues). The secrets are
256-bit values kcmail derives (kcmail.bridge.enrolment), so a plain digest is enough: nothing can be guessed
from it, and the bridge never holds them in the clear.

Two sources: a file someone writes by hand (``--clients``, read again when it changes), or the Secret the
operator keeps for MailConfigs with ``googleServiceAccount`` (``--clients-secret``: one data key per
MailConfig, read through the API every few seconds and at once when an unknown client asks).

Every entry is untrusted input: a tenant wrote the key. Entries that do not hold what Google's key files hold
are skipped with a reason that names no value; the key's own ``token_uri`` is never used (the bridge asks the
token endpoint it was started with, never one a tenant chose).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kcmail.bridge.bucket import Bucket
from kcmail.redact import redact

log = logging.getLogger("kcmail.bridge")

# A registry larger than this is refused whole rather than parsed: the file is kcmail's, but bounded all the same.
MAX_FILE_BYTES = 8 * 1024 * 1024
_KEY_FIELDS = ("client_email", "private_key", "private_key_id")


@dataclass(frozen=True)
class BridgeClient:
    client_id: str
    mailbox: str
    # The service-account key as Google issued it (``type``, ``client_email``, ``private_key``...).
    key: Mapping[str, Any] = field(repr=False)
    secret_sha256: str = field(repr=False)

    @property
    def service_account(self) -> str:
        return str(self.key["client_email"])

    @property
    def key_id(self) -> str:
        return str(self.key["private_key_id"])


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse(document: object) -> tuple[dict[str, BridgeClient], list[str]]:
    """The clients of a registry document, and why each entry that was skipped was (pure)."""
    problems: list[str] = []
    clients: dict[str, BridgeClient] = {}
    entries = document.get("clients") if isinstance(document, dict) else None
    if not isinstance(entries, dict):
        return {}, ["the registry holds no 'clients' object"]
    for client_id, entry in entries.items():
        problem = _problem(client_id, entry)
        if problem:
            problems.append(f"client {client_id[:64]!r} skipped: {problem}")
            continue
        clients[client_id] = BridgeClient(client_id=client_id, mailbox=entry["mailbox"], key=entry["serviceAccountKey"],
                                          secret_sha256=entry["secretSha256"].lower())
    return clients, problems


def _problem(client_id: str, entry: object) -> str | None:
    if not client_id or len(client_id) > 256:
        return "the client id must have 1 to 256 characters"
    if not isinstance(entry, dict):
        return "not an object"
    digest = entry.get("secretSha256")
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest):
        return "secretSha256 is not a SHA-256 digest in hex"
    mailbox = entry.get("mailbox")
    if (not isinstance(mailbox, str) or mailbox.count("@") != 1 or len(mailbox) > 254
            or any(c.isspace() for c in mailbox)):
        return "mailbox is not an address"
    problem = key_problem(entry.get("serviceAccountKey"))
    return None if problem is None else f"serviceAccountKey {problem}"


def key_problem(key: object) -> str | None:
    """Why ``key`` is not a Google service-account key as Google issues it, or None (pure; names no value)."""
    if not isinstance(key, dict) or key.get("type") != "service_account":
        return "is not a Google service-account key (a JSON object with type service_account)"
    missing = [name for name in _KEY_FIELDS if not isinstance(key.get(name), str) or not key.get(name)]
    if missing:
        return f"lacks {', '.join(missing)}"
    if "PRIVATE KEY-----" not in key["private_key"]:
        return "has a private_key that is not a PEM private key"
    return None


def parse_key(text: str) -> Mapping[str, Any] | str:
    """The service-account key in a Secret's value, or why it is not one (a message that quotes nothing)."""
    try:
        key = json.loads(text)
    except ValueError:
        return "is not JSON (a Google service-account key file)"
    problem = key_problem(key)
    return key if problem is None else problem


# The data key of kcmail's registry Secret that holds its derivation seed, not a client.
SEED_KEY = "seed"


def secret_document(data: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The registry document the data of kcmail's registry Secret amounts to, and why entries were left out.

    One data key per MailConfig, each a JSON entry naming its ``clientID`` (pure)."""
    clients: dict[str, Any] = {}
    problems: list[str] = []
    seen: dict[str, str] = {}
    for name, text in sorted(data.items()):
        if name == SEED_KEY:
            continue
        try:
            entry = json.loads(text)
        except ValueError:
            problems.append(f"entry {name[:64]!r} skipped: not JSON")
            continue
        client_id = entry.get("clientID") if isinstance(entry, dict) else None
        if not isinstance(client_id, str):
            problems.append(f"entry {name[:64]!r} skipped: no clientID")
            continue
        if client_id in seen:
            # Two entries claiming one client: neither is trusted.
            problems.append(f"entries {seen[client_id][:64]!r} and {name[:64]!r} skipped: one client id")
            clients.pop(client_id, None)
            continue
        seen[client_id] = name
        clients[client_id] = entry
    return {"clients": clients}, problems


class Registry:
    """The clients a source holds; :meth:`authenticate` asks the source to refresh first."""

    def __init__(self) -> None:
        self._clients: dict[str, BridgeClient] = {}
        # Whether the source was read once: a registry that never was refuses every client.
        self.loaded = False

    def load(self, document: object) -> None:
        self.loaded = True
        self._clients, problems = parse(document)
        for problem in problems:
            log.warning("client registry: %s", problem)
        log.info("client registry: %d clients", len(self._clients))

    async def refresh(self, *, missed: bool) -> bool:
        """Read the source again if it is due; ``missed``: a client was not found. True when it was read."""
        return False

    async def authenticate(self, client_id: str, secret: str) -> BridgeClient | None:
        """The client with this id and secret, or None; the comparison takes the same time either way."""
        read = await self.refresh(missed=False)
        client = self._match(client_id, secret)
        if client is None and not read and await self.refresh(missed=True):
            client = self._match(client_id, secret)
        return client

    def _match(self, client_id: str, secret: str) -> BridgeClient | None:
        client = self._clients.get(client_id)
        expected = client.secret_sha256 if client else "0" * 64
        matches = hmac.compare_digest(expected, secret_digest(secret))
        return client if client is not None and matches else None

    def __len__(self) -> int:
        return len(self._clients)


class FileRegistry(Registry):
    """A registry file, read again whenever it changes (a mounted Secret is replaced, not edited)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._refresh()

    async def refresh(self, *, missed: bool) -> bool:
        return self._refresh()

    def _refresh(self) -> bool:
        try:
            stat = os.stat(self.path)
        except OSError as error:
            if self._stamp is not None:
                log.warning("client registry %s unreadable (%s); keeping the clients read before",
                            self.path, error.strerror)
            return False
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        if stat.st_size > MAX_FILE_BYTES:
            log.error("client registry %s is %d bytes, over the %d allowed; keeping the clients read before",
                      self.path, stat.st_size, MAX_FILE_BYTES)
            return False
        try:
            document = json.loads(self.path.read_bytes())
        except (OSError, ValueError) as error:
            # json's message quotes no content, only a position.
            log.error("client registry %s unreadable (%s); keeping the clients read before", self.path,
                      type(error).__name__)
            return False
        self.load(document)
        return True


# What reads kcmail's registry Secret: its data (decoded), or None when there is no such Secret yet.
ReadSecret = Callable[[], Awaitable[Mapping[str, str] | None]]


class SecretRegistry(Registry):
    """kcmail's registry Secret, read through the API every ``every`` seconds, and at once when a client is
    not found (the operator has just enrolled it, for a new MailConfig, mailbox or key, and probes right
    after), as long as ``missed_rate`` such reads a second (bursts of five) allow: clients that do not exist
    must not turn into API requests without bound."""

    def __init__(self, read: ReadSecret, *, every: float = 10.0, missed_rate: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._read = read
        self._every, self._clock = every, clock
        self._missed = Bucket(rate=missed_rate, burst=5, tokens=5, stamp=clock())
        self._last: float | None = None
        self._version: object = None
        self._lock = asyncio.Lock()

    async def refresh(self, *, missed: bool) -> bool:
        async with self._lock:
            now = self._clock()
            due = self._last is None or now - self._last >= self._every
            if not due and not (missed and self._missed.take(now)):
                return False
            self._last = now
            try:
                data = await self._read()
            except Exception as error:  # HTTP, TLS, JSON: whatever failed, the clients read before stay
                log.warning("client registry Secret unreadable (%s: %s); keeping the clients read before",
                            type(error).__name__, redact(str(error), limit=300))
                return False
            data = dict(data or {})
            if data == self._version:
                return True
            self._version = data
            document, problems = secret_document(data)
            for problem in problems:
                log.warning("client registry: %s", problem)
            self.load(document)
            return True
