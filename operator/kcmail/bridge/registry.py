"""Who may ask the bridge for a token, and for which mailbox, read from a JSON file.

The file is kcmail's to write (a Secret mounted into the bridge's pod); it holds, per client id, the SHA-256
digest of the client secret Keycloak presents, the one mailbox that client may have tokens for, and the
Google service-account key (the JSON Google issues). The secrets are 256-bit random values kcmail generates,
so a plain digest is enough: nothing can be guessed from it, and the bridge never holds them in the clear.

Every entry is untrusted input: a tenant wrote the key. Entries that do not hold what Google's key files hold
are skipped with a reason that names no value; the key's own ``token_uri`` is never used (the bridge asks the
token endpoint it was started with, never one a tenant chose).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    key = entry.get("serviceAccountKey")
    if not isinstance(key, dict) or key.get("type") != "service_account":
        return "serviceAccountKey is not a Google service-account key (type service_account)"
    missing = [name for name in _KEY_FIELDS if not isinstance(key.get(name), str) or not key.get(name)]
    if missing:
        return f"serviceAccountKey lacks {', '.join(missing)}"
    if "PRIVATE KEY-----" not in key["private_key"]:
        return "serviceAccountKey's private_key is not a PEM private key"
    return None


class Registry:
    """The registry file, read again whenever it changes (a mounted Secret is replaced, not edited)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._clients: dict[str, BridgeClient] = {}

    def _refresh(self) -> None:
        try:
            stat = os.stat(self.path)
        except OSError as error:
            if self._stamp is not None:
                log.warning("client registry %s unreadable (%s); keeping the clients read before",
                            self.path, error.strerror)
            return
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        if stat.st_size > MAX_FILE_BYTES:
            log.error("client registry %s is %d bytes, over the %d allowed; keeping the clients read before",
                      self.path, stat.st_size, MAX_FILE_BYTES)
            return
        try:
            document = json.loads(self.path.read_bytes())
        except (OSError, ValueError) as error:
            # json's message quotes no content, only a position.
            log.error("client registry %s unreadable (%s); keeping the clients read before", self.path,
                      type(error).__name__)
            return
        self._clients, problems = parse(document)
        for problem in problems:
            log.warning("client registry: %s", problem)
        log.info("client registry: %d clients", len(self._clients))

    def authenticate(self, client_id: str, secret: str) -> BridgeClient | None:
        """The client with this id and secret, or None; the comparison takes the same time either way."""
        self._refresh()
        client = self._clients.get(client_id)
        expected = client.secret_sha256 if client else "0" * 64
        matches = hmac.compare_digest(expected, secret_digest(secret))
        return client if client is not None and matches else None

    def __len__(self) -> int:
        self._refresh()
        return len(self._clients)
