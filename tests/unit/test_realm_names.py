"""A realm name is a name, not a path: the realm kcmail's client addresses is always exactly the realm that
admission and the Connection's allowedRealms judged.

The URL is built as python-keycloak builds it (``urljoin`` of the base URL and kcmail's path) and parsed as
httpx sends it; the server side is modelled by RFC 3986's dot-segment removal after decoding the
characters a server may decode (the unreserved ones), which is what a normalising proxy or Keycloak's HTTP
layer may do. The real Keycloak's side is in tests/e2e/test_tenant_boundary.py.
"""

from __future__ import annotations

import posixpath
import re
import urllib.parse

import httpx
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from kcmail.connections import realm_allowed
from kcmail.keycloak import KeycloakFailure, realm_path
from kcmail.spec import realm_name_problem

pytestmark = pytest.mark.unit

BASE = "https://keycloak.example/auth/"
# Names made of what attacks are made of: separators, dots, escapes, query and fragment marks, matrix
# parameters, controls, look-alikes of / and . from Unicode, and ordinary letters.
ATOMS = ["/", "\\", ".", "..", "%", "%2e", "%2E", "%2f", "%2F", "%252e", "?", "#", ";", "=", "&", " ", "\t", "\n",
         "\x00", "\x01", "\u2028", "\uff0f", "\u2024", "\u2025", "\u2215", "\u29f8", "master", "acme", "a", "Z",
         "0", "-", "_", "~", "ä", "@", ":"]
names = st.lists(st.sampled_from(ATOMS), min_size=1, max_size=8).map("".join) | st.text(max_size=40)
patterns = st.lists(st.sampled_from(["*", "?", "[a-z]", "[!m]", "fzr", "acme", "tenant-", "master", "ma"]),
                    min_size=1, max_size=4).map("".join)


def _unreserved_decoded(segment: str) -> str:
    """Decode only what RFC 3986 says a normaliser may decode: ALPHA, DIGIT, - . _ ~."""
    return re.sub(r"%([0-9A-Fa-f]{2})",
                  lambda m: chr(int(m.group(1), 16)) if re.fullmatch(r"[A-Za-z0-9._~-]", chr(int(m.group(1), 16)))
                  else m.group(0), segment)


def _addressed(realm: str) -> str:
    """The realm name a server reads from the request kcmail sends for ``realm``."""
    url = httpx.URL(urllib.parse.urljoin(BASE, realm_path(realm)))
    raw = url.raw_path.decode("ascii")
    assert "?" not in raw
    assert "#" not in raw
    normalised = posixpath.normpath(_unreserved_decoded(raw))
    prefix = "/auth/admin/realms/"
    assert normalised.startswith(prefix), normalised
    segment = normalised[len(prefix):]
    assert "/" not in segment
    return urllib.parse.unquote(segment)


@given(realm=names, allowed=st.lists(patterns, min_size=1, max_size=3))
@example(realm="fzr/../master", allowed=["fzr*"])
@example(realm="..", allowed=["*"])
@example(realm="%2e%2e", allowed=["*"])
@example(realm="fz-06?x=1", allowed=["fz-*"])
@example(realm="zz/%2e%2e/acme", allowed=["zz*"])
@example(realm="fzr\uff0f..\uff0fmaster", allowed=["fzr*"])
def test_the_realm_addressed_is_exactly_the_realm_judged(realm, allowed):
    problem = realm_name_problem(realm)
    if problem is not None:
        # Refused at admission and again before any path is built.
        with pytest.raises(KeycloakFailure):
            realm_path(realm)
        return
    assume(realm_allowed(allowed, realm))
    assert _addressed(realm) == realm


@given(realm=names)
def test_a_name_the_rules_accept_is_one_segment_and_no_path_word(realm):
    assume(realm_name_problem(realm) is None)
    assert "/" not in realm
    assert realm not in (".", "..")
    assert not any(ord(c) < 0x20 for c in realm)


@pytest.mark.parametrize(("pattern", "realm", "allowed"), [
    ("fzr*", "fzr-a", True),
    ("fzr*", "master", False),
    ("tenant-?", "tenant-a", True),
    ("tenant-?", "tenant-ab", False),
    ("Acme", "acme", False),  # case-sensitive
    ("acme", "acme-prod", False),  # the whole name
    ("[!m]*", "master", False),
    ("[!m]*", "acme", True),
])
def test_allowed_realms_match_whole_names_case_sensitively(pattern, realm, allowed):
    assert realm_allowed([pattern], realm) is allowed
