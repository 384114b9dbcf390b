"""Messages the environment's SMTP servers accepted, one file each in a spool directory, and how to read them.

The project's server writes a JSON file per message (``write_message``); Postfix's recording transport
writes the envelope and the message as it received them (``postfix_server``). Both write under a temporary
name and rename into place, so a reader polling the directory from another process never sees half a
message; ``read_spool`` reads either kind as ``RecordedMessage``.
"""

from __future__ import annotations

import dataclasses
import datetime
import email.parser
import email.policy
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
    messages += [from_postfix(path.name, path.read_bytes()) for path in spool_dir.glob("*.msg")]
    return sorted(messages, key=lambda m: (m.received_at, m.id))


def from_postfix(name: str, content: bytes) -> RecordedMessage:
    """A message Postfix's recording transport wrote to ``<nanoseconds>-<queue id>.msg``.

    The file starts with the number of envelope lines, then the queue id, the SASL method and user (empty
    without AUTH), the sender and each recipient, one a line, then the message as Postfix delivered it.
    """
    count, _, rest = content.partition(b"\n")
    lines = rest.split(b"\n", int(count))
    envelope, message = lines[:-1], lines[-1]
    queue_id, method, user, sender, *recipients = (line.decode("utf-8", errors="replace") for line in envelope)
    received_at = datetime.datetime.fromtimestamp(int(name.split("-", 1)[0]) / 1e9, datetime.UTC)
    headers = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(message)
    return RecordedMessage(
        id=queue_id, received_at=received_at, listener="postfix", peer="",
        # Postfix names the protocol in its Received header; ESMTPS and ESMTPSA mean TLS.
        tls=" with ESMTPS" in str(headers.get("Received", "")),
        mail_from=sender, rcpt_tos=tuple(recipients),
        auth=AuthIdentity(mechanism=method, user=user) if method else None,
        subject=None if headers["subject"] is None else str(headers["subject"]),
        data=message.decode("utf-8", errors="replace"))


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
