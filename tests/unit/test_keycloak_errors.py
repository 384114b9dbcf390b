"""Keycloak admin API errors → reasons: a refused admin login is KeycloakAuthFailed whatever its status code."""

from __future__ import annotations

import json

import pytest

from kcmail.conditions import Reason
from kcmail.keycloak import _classify, _keycloak_words

pytestmark = pytest.mark.unit


def _body(**fields: str) -> bytes:
    return json.dumps(fields).encode()


@pytest.mark.parametrize(("code", "error", "description"), [
    # What Keycloak 26 answers a wrong admin password (RFC 6749: 400 for invalid_grant).
    (400, "invalid_grant", "Invalid user credentials"),
    (400, "invalid_grant", "Account disabled"),
    (401, "invalid_client", "Invalid client or Invalid client credentials"),
    (400, "unauthorized_client", "Client not allowed for direct access grants"),
])
def test_a_refused_admin_login_is_auth_failed_and_needs_a_person(code, error, description):
    failure = _classify("read the server version", code, _body(error=error, error_description=description), None)
    assert failure.reason is Reason.KEYCLOAK_AUTH_FAILED
    assert failure.needs_person
    assert description in failure.message


def test_a_rejected_realm_update_keeps_keycloaks_words():
    words = "Invalid sender address 'no..reply@acme.example'."
    failure = _classify("update realm 'acme'", 400, _body(errorMessage=words), "acme")
    assert failure.reason is Reason.KEYCLOAK_REJECTED
    assert failure.needs_person
    assert failure.message == f"cannot update realm 'acme': Keycloak answered 400: {words}"


def test_an_admin_api_error_named_like_no_oauth_error_is_not_a_login_failure():
    failure = _classify("update realm 'acme'", 400, _body(error="invalid_request", errorMessage="bad"), "acme")
    assert failure.reason is Reason.KEYCLOAK_REJECTED


def test_forbidden_is_auth_failed_with_the_role_it_needs():
    failure = _classify("read realm 'acme'", 403, _body(error="HTTP 403 Forbidden"), "acme")
    assert failure.reason is Reason.KEYCLOAK_AUTH_FAILED
    assert "manage-realm" in failure.message


@pytest.mark.parametrize("body", [b"", b"<html>Bad Gateway</html>", b"[]", None])
def test_server_errors_can_pass_and_are_retried(body):
    failure = _classify("read realm 'acme'", 502, body, "acme")
    assert failure.reason is Reason.KEYCLOAK_UNREACHABLE
    assert not failure.needs_person


def test_a_missing_realm_is_realm_not_found():
    failure = _classify("read realm 'acme'", 404, _body(error="Realm not found."), "acme")
    assert failure.reason is Reason.REALM_NOT_FOUND
    assert failure.needs_person


def test_only_keycloaks_own_fields_are_quoted_never_another_services_page():
    page = b"<html><title>Jenkins</title><body>internal build server: secret-job-42</body></html>"
    failure = _classify("read realm 'acme'", 400, page, "acme")
    assert "Jenkins" not in failure.message
    assert "secret-job" not in failure.message
    assert failure.message == "cannot read realm 'acme': Keycloak answered 400: no message"


def test_keycloaks_words_are_redacted_of_the_admin_secret_and_capped():
    secret = "admin-secret-value-123"
    words = _keycloak_words(_body(errorMessage=f"bad client_secret={secret} " + "x" * 2000), (secret,))
    assert secret not in words
    assert len(words) <= 512
