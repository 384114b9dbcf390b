"""The one redaction function: known secrets in every spelling, token shapes and control characters go;
the provider's own words stay; the result is short."""

from __future__ import annotations

import base64
import json
import logging
import re
import urllib.parse

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from kcmail.redact import LIMIT, REDACTED, RedactingFilter, redact

pytestmark = pytest.mark.unit

# What a client secret, a password or a token is made of: printable ASCII without spaces.
secret_chars = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
secrets = st.text(secret_chars, min_size=8, max_size=80)
prose = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=120)


def _decodings(text: str) -> list[bytes]:
    runs = [run for run in re.findall(r"[A-Za-z0-9+/=]+", text) if len(run) >= 8]
    out = []
    for run in runs:
        for start in range(4):
            chunk = run[start:].rstrip("=")
            chunk = chunk[:len(chunk) // 4 * 4]
            out.append(base64.b64decode(chunk + "=" * (-len(chunk) % 4)) if chunk else b"")
    return out


def _leaks(text: str, secret: str) -> bool:
    # The placeholder itself is not a leak, even when the secret happens to be a piece of it.
    text = text.replace(REDACTED, " ")
    b64 = base64.b64encode(secret.encode()).decode()
    return secret in text or b64[:24] in text or urllib.parse.quote(secret, safe="") in text


@given(secret=secrets, before=prose, after=prose)
@example(secret="[redacte", before="", after="")  # a piece of the placeholder, found by CI once
def test_a_known_secret_is_cut_out_raw_and_url_encoded(secret, before, after):
    for form in (secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)):
        assert not _leaks(redact(f"{before}{form}{after}", [secret], limit=10_000), secret)


@given(secret=secrets, prefix=st.binary(max_size=7), suffix=st.binary(max_size=7))
def test_a_known_secret_is_cut_out_of_base64_at_any_alignment(secret, prefix, suffix):
    encoded = base64.b64encode(prefix + secret.encode() + suffix).decode()
    cleaned = redact(f"server said: {encoded}", [secret], limit=10_000)
    # Whatever base64 is left, decoded at every alignment, holds at most a few bytes of the secret at its edges.
    decoded = b"".join(_decodings(cleaned))
    raw = secret.encode()
    assert not any(raw[i:i + 6] in decoded for i in range(len(raw) - 5))


@given(user=st.emails(), token=secrets)
def test_the_xoauth2_string_is_cut_out_raw_and_base64(user, token):
    sasl = f"user={user}\x01auth=Bearer {token}\x01\x01"
    for text in (f"535 5.7.8 rejected {sasl}", "535 5.7.8 rejected " + base64.b64encode(sasl.encode()).decode()):
        cleaned = redact(text, limit=10_000)
        assert token not in cleaned
        assert "auth=Bearer" not in cleaned
        assert cleaned.startswith("535 5.7.8 rejected")


def test_token_shapes_are_cut_out_without_knowing_them():
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhYmMifQ.c2lnbmF0dXJlLXZhbHVl"
    opaque = "ya29.a0AfB_byC7kWmQ2xZ9pLr4TtVv8Hn3JkLmNoPqRsTuVwXyZ01234"
    text = (f"access_token={jwt} Authorization: Bearer abc.def refresh {opaque} "
            "Proxy-Authorization: Basic dXNlcjpwYXNz")
    cleaned = redact(text)
    for piece in (jwt[:20], "abc.def", opaque[5:], "dXNlcjpwYXNz", "Bearer"):
        assert piece not in cleaned
    assert cleaned.count(REDACTED) >= 4


@pytest.mark.parametrize("words", [
    "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client "
    "secret value, not the client secret ID. Trace ID: 0b2f3a1c-1234-5678-9abc-def012345678",
    "535 5.7.8 Error: authentication failed: Invalid base64 data in initial response",
    "invalid_scope: Invalid scopes: smtp.send https://outlook.office365.com/.default",
    "cannot read realm 'tenant-acme-production-eu-west-1' at https://keycloak.identity.svc.cluster.local:8443/",
    "unauthorized_client: Client is unauthorized to retrieve access tokens using this method",
])
def test_the_providers_own_words_stay(words):
    assert redact(words) == words


@given(text=st.text(max_size=2000), limit=st.integers(min_value=16, max_value=1000))
def test_no_control_character_survives_and_the_cap_holds(text, limit):
    cleaned = redact(text, limit=limit)
    assert len(cleaned) <= limit
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" for c in cleaned)


@given(text=st.text(max_size=600), secret=secrets)
def test_redaction_is_idempotent(text, secret):
    once = redact(text, [secret])
    assert redact(once, [secret]) == once


def test_a_short_secret_is_cut_out_only_where_it_stands_as_a_word():
    assert redact("password hunter was refused; hunters welcome", ["hunter"]) == (
        f"password {REDACTED} was refused; hunters welcome")


def test_an_oversized_answer_is_capped_with_an_ellipsis():
    cleaned = redact("x " * 5000)
    assert len(cleaned) == LIMIT
    assert cleaned.endswith("…")


def test_the_log_filter_redacts_messages_arguments_and_tracebacks():
    logger = logging.getLogger("kcmail.test-redact")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep()
    keep.addFilter(RedactingFilter())
    logger.addHandler(keep)
    try:
        logger.warning("server said %s", "Authorization: Bearer eyJhbGciOiJI.eyJzdWIiOiJ4In0.sig\x1b[31m")
        try:
            raise ValueError(json.dumps({"error": "x", "token": "eyJhbGciOiJI.eyJzdWIiOiJ4In0.sig"}))
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(keep)
    first, second = records
    assert "eyJ" not in first.getMessage()
    assert "\x1b" not in first.getMessage()
    assert second.exc_info is None
    assert second.exc_text is not None
    assert "eyJ" not in second.exc_text
    assert "ValueError" in second.exc_text
    assert "Traceback" in second.exc_text
    assert "\n" in second.exc_text
