"""The search for leaked secrets that the end-to-end tests run over everything kcmail wrote.

Secrets are distinctive canaries that passed through the operator for real; the texts are its logs, the
objects of a namespace (status, Events, annotations) and CLI output. A secret counts as leaked when its
first 24 characters appear, plain or in base64; a JSON Web Token or an Authorization header counts
whatever it carries.
"""

from __future__ import annotations

import base64
import re
import uuid
from dataclasses import dataclass, field

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
HEADERS = re.compile(r"Authorization|Bearer\s", re.IGNORECASE)


@dataclass
class Leaks:
    """The secrets to look for and the text gathered to look in."""

    secrets: dict[str, str] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)

    def add_secret(self, name: str, value: str) -> str:
        self.secrets[name] = value
        return value

    def add_text(self, where: str, text: str) -> None:
        self.texts[where] = self.texts.get(where, "") + text

    def found(self) -> list[str]:
        problems = []
        for where, text in self.texts.items():
            for name, value in self.secrets.items():
                # A truncated secret leaks too: its first 24 characters are as good as the whole.
                for form, needle in (("plain", value[:24]), ("base64", base64.b64encode(value.encode()).decode()[:24])):
                    if needle in text:
                        problems.append(f"{name} ({form}) in {where}: ...{_around(text, needle)}...")
            for pattern in (JWT, HEADERS):
                match = pattern.search(text)
                if match:
                    problems.append(f"{pattern.pattern!r} in {where}: ...{_around(text, match.group())}...")
        return problems


def _around(text: str, needle: str) -> str:
    at = text.index(needle)
    # Show where, not what: the needle itself is replaced.
    return (text[max(0, at - 80):at] + "<HERE>" + text[at + len(needle):at + len(needle) + 40]).replace("\n", " ")


def canary(what: str) -> str:
    return f"LEAKCANARY-{what}-{uuid.uuid4().hex}"
