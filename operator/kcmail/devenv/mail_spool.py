"""Messages the test SMTP server accepted: one JSON file each in a spool directory, and how to read them.

The server writes each file under a temporary name and renames it into place, so a reader polling the
directory from another process never sees half a message.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class AuthIdentity:
    """Who a session authenticated as; ``client_id`` and ``token_id`` (the ``jti``) only for XOAUTH2."""

    mechanism: str
    user: str
    client_id: str | None = None
    token_id: str | None = None


@dataclass(frozen=True)
class RecordedMessage:
    id: str
    received_at: datetime.datetime
    listener: str
    peer: str
    tls: bool
    mail_from: str
    rcpt_tos: tuple[str, ...]
    auth: AuthIdentity | None
    subject: str | None
    data: str

    def to_json(self) -> str:
        fields = dataclasses.asdict(self)
        fields["received_at"] = self.received_at.isoformat()
        return json.dumps(fields, indent=2)

    @classmethod
    def from_json(cls, text: str) -> RecordedMessage:
        fields: dict[str, Any] = json.loads(text)
        auth = fields.pop("auth")
        return cls(**{**fields,
                      "received_at": datetime.datetime.fromisoformat(fields["received_at"]),
                      "rcpt_tos": tuple(fields["rcpt_tos"]),
                      "auth": AuthIdentity(**auth) if auth is not None else None})


def write_message(spool_dir: Path, message: RecordedMessage) -> Path:
    """Store ``message`` atomically; the file name sorts by arrival."""
    name = f"{message.received_at:%Y%m%dT%H%M%S%f}-{message.id}.json"
    staging = spool_dir / f".{name}.tmp"
    staging.write_text(message.to_json())
    return staging.replace(spool_dir / name)


def read_spool(spool_dir: Path) -> list[RecordedMessage]:
    """Every recorded message, oldest first; an absent directory holds none."""
    if not spool_dir.is_dir():
        return []
    messages = [RecordedMessage.from_json(path.read_text()) for path in spool_dir.glob("*.json")]
    return sorted(messages, key=lambda m: (m.received_at, m.id))


def wait_for_message(spool_dir: Path, predicate: Callable[[RecordedMessage], bool], *,
                     timeout: float = 10.0, interval: float = 0.1) -> RecordedMessage:
    """The oldest recorded message that satisfies ``predicate``, polling for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        messages = read_spool(spool_dir)
        for message in messages:
            if predicate(message):
                return message
        if time.monotonic() >= deadline:
            seen = "; ".join(f"{m.subject!r} to {', '.join(m.rcpt_tos)}" for m in messages) or "nothing"
            raise TimeoutError(f"no matching message in {spool_dir} within {timeout:.1f} s; it holds: {seen}")
        time.sleep(interval)
