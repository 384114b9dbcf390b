"""The one redaction function for foreign text, and the logging filter that applies it to every log line.

Foreign text is whatever a token endpoint, Keycloak, an SMTP server or the Kubernetes API said, and
whatever a realm holds: kcmail quotes it in status messages, Events, logs and CLI output because the
provider's own words (``AADSTS7000215``, ``535 5.7.8``) are what a person needs. Any of those servers may
be a tenant's, and any of them may echo what kcmail sent: a token endpoint that repeats the client secret,
an SMTP server that quotes the decoded XOAUTH2 string. So every such text passes :func:`redact` before
it is kept: anything shaped like a bearer token is cut out, then the secrets kcmail knows in the forms they
travel in (raw, URL-encoded, base64), then control characters become spaces (a status message or a
terminal is no place for an escape sequence), and the rest is capped.
"""

from __future__ import annotations

import functools
import logging
import re
import urllib.parse
from collections.abc import Iterable

# About what a person reads in a condition message; a server's error page beyond it helps no one, and a
# status PATCH with an oversized message fails as a whole (the CRDs cap messages at 32,768).
LIMIT = 512
REDACTED = "[redacted]"
_ELLIPSIS = "…"

# Secrets shorter than this are cut out only where they stand as a word: a three-letter password would
# otherwise blank out every word it occurs in.
_SUBSTRING_MIN = 8

_BEARER = re.compile(r"\bBearer\s+\S+", re.IGNORECASE)
_AUTHORIZATION = re.compile(r"\b(?:Proxy-)?Authorization\s*[:=]\s*(?:\w+\s+)?\S+", re.IGNORECASE)
# A JSON Web Token: a base64url JSON header ("eyJ") and at least a payload.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*)?")
# The SASL XOAUTH2 initial response, raw ("user=…^Aauth=Bearer …") or base64 ("user=" encodes to "dXNlcj").
_XOAUTH2_RAW = re.compile(r"user=[^\x01\s]*\x01auth=\S*(?:\s+\S+)?", re.IGNORECASE)
_XOAUTH2_BASE64 = re.compile(r"dXNlcj[A-Za-z0-9+/=]+")
# An opaque token: a long run of the base64/base64url alphabet with upper case, lower case and digits mixed.
# UUIDs, host names and realm names lack one of the three or are cut by '.' and '/'.
_OPAQUE = re.compile(r"(?<![A-Za-z0-9_+=-])[A-Za-z0-9_+=-]{32,}(?![A-Za-z0-9_+=-])")
_REPEATED = re.compile(rf"(?:{re.escape(REDACTED)}){{2,}}")
# C0 and C1 controls and DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def redact(text: object, secrets: Iterable[str] = (), *, limit: int = LIMIT) -> str:
    """``text`` as it may be kept: known ``secrets`` and token-shaped strings replaced, control characters
    turned into spaces, at most ``limit`` characters. Idempotent."""
    result = str(text)
    # Whole tokens first, so that a secret inside one does not leave the token's pieces around its cut.
    result = _XOAUTH2_RAW.sub(REDACTED, result)
    result = _AUTHORIZATION.sub(REDACTED, result)
    result = _BEARER.sub(REDACTED, result)
    result = _JWT.sub(REDACTED, result)
    result = _XOAUTH2_BASE64.sub(REDACTED, result)
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        result = _secret_pattern(secret).sub(REDACTED, result)
    result = _OPAQUE.sub(lambda m: REDACTED if _mixed(m.group()) else m.group(), result)
    result = _REPEATED.sub(REDACTED, result)
    result = _CONTROL.sub(" ", result).strip()
    if len(result) > limit:
        result = result[:limit - len(_ELLIPSIS)].rstrip() + _ELLIPSIS
    return result


def _mixed(run: str) -> bool:
    return any(c.isupper() for c in run) and any(c.islower() for c in run) and any(c.isdigit() for c in run)


# A probe redacts each of its steps with the same few secrets: their patterns are built once. Few are kept,
# so that a rotated secret does not linger here for long.
@functools.lru_cache(maxsize=32)
def _secret_pattern(secret: str) -> re.Pattern[str]:
    return re.compile("|".join(_forms(secret)))


def _forms(secret: str) -> list[str]:
    """The spellings a secret travels in, as regular expressions: raw, URL-encoded, and base64."""
    literal = [secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)]
    if len(secret) >= _SUBSTRING_MIN:
        forms = [re.escape(form) for form in literal]
    else:
        forms = [rf"(?<![A-Za-z0-9]){re.escape(form)}(?![A-Za-z0-9])" for form in literal]
    return list(dict.fromkeys(forms + _base64_forms(secret.encode())))


_STANDARD = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_URLSAFE = _STANDARD[:62] + "-_"


def _base64_forms(raw: bytes) -> list[str]:
    """The secret inside any base64 text, at each of the three byte alignments it can start at.

    A base64 character carries six bits; those at the secret's edges mix its bits with the bits of the
    bytes around it, unknown here, so each such character is a class of the values it can take. Every
    character that carries a bit of the secret is part of the pattern, so nothing of it is left behind.
    """
    forms = []
    for shift in range(3):
        bits: list[int | None] = [None] * (8 * shift) + [(byte >> (7 - i)) & 1 for byte in raw for i in range(8)]
        bits += [None] * (-len(bits) % 6)
        choices = []
        for start in range(0, len(bits), 6):
            chunk = bits[start:start + 6]
            if all(bit is None for bit in chunk):
                continue
            choices.append([value for value in range(64)
                            if all(bit is None or (value >> (5 - i)) & 1 == bit for i, bit in enumerate(chunk))])
        for alphabet in (_STANDARD, _URLSAFE):
            forms.append("".join(re.escape(alphabet[values[0]]) if len(values) == 1 else
                                 "[" + "".join(re.escape(alphabet[v]) for v in values) + "]" for values in choices))
    return forms


class RedactingFilter(logging.Filter):
    """Passes every record's message, and its traceback line by line, through :func:`redact`.

    No secrets are known here, so this applies the patterns and the control-character rule: the places
    that know a secret redact it where they quote the foreign text. Attached to the handlers, so kopf's
    own lines pass it too. A log line may hold more than one quoted answer, so its cap is larger.
    """

    LINE_LIMIT = 4096

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message, limit=self.LINE_LIMIT)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        if record.exc_info:
            # Formatted here, once, so that no formatter formats the raw exception text again.
            text = record.exc_text or logging.Formatter().formatException(record.exc_info)
            record.exc_text = "\n".join(_indent(line) + redact(line, limit=self.LINE_LIMIT)
                                        for line in text.splitlines())
            record.exc_info = None
        return True


def _indent(line: str) -> str:
    return line[:len(line) - len(line.lstrip(" "))]


def install_log_filter() -> None:
    """Attach :class:`RedactingFilter` to every handler of the root logger (call after configuring logging)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
