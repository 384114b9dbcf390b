"""SMTP sessions as the test SMTP server logged them: when each began and how many were open then."""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path

# "2026-01-01 10:00:00,123 INFO [starttls 127.0.0.1:5555] connected open=3"
_CONNECTED = re.compile(r"^(?P<stamp>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO "
                        r"\[\S+ [^\]]*\] connected open=(?P<open>\d+)")


@dataclass(frozen=True)
class Session:
    started: float  # Unix time
    open: int  # sessions open at that moment, this one included


def sessions(text: str) -> list[Session]:
    """Every session start in a stretch of the server's log (pure)."""
    found = []
    for line in text.splitlines():
        match = _CONNECTED.match(line)
        if match is not None:
            local = datetime.datetime.strptime(match["stamp"], "%Y-%m-%d %H:%M:%S,%f")
            found.append(Session(started=local.timestamp(), open=int(match["open"])))
    return found


class SmtpLog:
    """The server's log from a given moment on."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def offset(self) -> int:
        return self._path.stat().st_size

    def since(self, offset: int) -> list[Session]:
        with self._path.open("rb") as log:
            log.seek(offset)
            return sessions(log.read().decode(errors="replace"))
