"""Each audit finding, from a realm's stored smtpServer map and the Keycloak version alone."""

from __future__ import annotations

import pytest

from kcmail.adopt.findings import Check, Finding, Severity, audit_realm, reaches, shown_settings, smtp_settings
from kcmail.smtp_settings import MASK

pytestmark = pytest.mark.unit

CURRENT = (26, 7, 3)
# What a well-configured realm stores: XOAUTH2 to Exchange Online, as kcmail writes it.
GOOD = {
    "host": "smtp.office365.com", "port": "587", "ssl": "false", "starttls": "true", "auth": "true",
    "debug": "false", "from": "no-reply@acme.example", "fromDisplayName": "Acme", "user": "no-reply@acme.example",
    "authType": "token", "authTokenUrl": "https://login.microsoftonline.com/t/oauth2/v2.0/token",
    "authTokenScope": "https://outlook.office365.com/.default", "authTokenClientId": "app-id",
    "authTokenClientSecret": MASK,
}
BASIC = {"host": "smtp.office365.com", "port": "587", "starttls": "true", "auth": "true",
         "user": "no-reply@acme.example", "password": MASK, "from": "no-reply@acme.example"}


def _found(smtp: dict[str, str], version: tuple[int, int, int] = CURRENT) -> dict[str, Finding]:
    findings = audit_realm("acme", smtp, version)
    assert all(f.realm == "acme" for f in findings)
    return {f.check.value: f for f in findings}


def test_a_well_configured_xoauth2_realm_has_no_findings():
    assert audit_realm("acme", GOOD, CURRENT) == []


def test_a_realm_without_smtp_settings_is_only_reported_as_info():
    assert [(f.check, f.severity) for f in audit_realm("acme", {}, CURRENT)] == [
        (Check.SMTP_NOT_CONFIGURED, Severity.INFO)]


def test_settings_without_a_host_are_an_error():
    found = _found({"from": "no-reply@acme.example"})
    assert found["host-missing"].severity is Severity.ERROR


@pytest.mark.parametrize("host", ["smtp.office365.com", "SMTP.Office365.com.", "outlook.office365.com",
                                  "acme-example.mail.protection.outlook.com"])
def test_basic_auth_to_exchange_online_is_an_error(host):
    found = _found(BASIC | {"host": host})
    assert found["basic-auth-retired"].severity is Severity.ERROR
    assert "XOAUTH2" in found["basic-auth-retired"].message
    assert "end of December 2026" in found["basic-auth-retired"].message


def test_a_missing_auth_type_means_basic_as_it_did_before_26_2():
    assert "basic-auth-retired" in _found(BASIC)
    assert "basic-auth-retired" in _found(BASIC | {"authType": "basic"})


@pytest.mark.parametrize("smtp", [
    GOOD,  # token auth to Exchange Online
    BASIC | {"host": "smtp.acme.example"},  # basic auth elsewhere
    BASIC | {"auth": "false"},  # no authentication at all
    BASIC | {"host": "notoffice365.com"},
])
def test_basic_auth_retired_is_only_basic_auth_to_exchange_online(smtp):
    assert "basic-auth-retired" not in _found(smtp)


def test_token_auth_without_a_scope_is_a_warning():
    smtp = {k: v for k, v in GOOD.items() if k != "authTokenScope"}
    found = _found(smtp)
    assert found["token-scope-missing"].severity is Severity.WARNING
    assert "every mail" in found["token-scope-missing"].message


@pytest.mark.parametrize("url", ["http://login.example/token", "ftp://login.example/token",
                                 "http://127.0.0.1.example/token"])
def test_a_token_url_that_is_not_https_is_an_error(url):
    found = _found(GOOD | {"authTokenUrl": url})
    assert found["token-url-not-https"].severity is Severity.ERROR


@pytest.mark.parametrize("url", ["https://login.example/token", "http://127.0.0.1:8080/token",
                                 "http://localhost/token", "http://[::1]:9000/token", "http://127.0.0.5/t"])
def test_https_or_http_to_a_loopback_host_is_fine(url):
    assert "token-url-not-https" not in _found(GOOD | {"authTokenUrl": url})


def test_an_uppercase_token_auth_type_is_token_auth_as_keycloak_sends_it():
    found = _found({k: v for k, v in GOOD.items() if k != "authTokenScope"} | {"authType": "TOKEN"})
    assert "token-scope-missing" in found
    assert "basic-auth-retired" not in found


@pytest.mark.parametrize(("smtp", "missing"), [
    ({k: v for k, v in GOOD.items() if k != "authTokenClientSecret"}, "authTokenClientSecret"),
    ({k: v for k, v in GOOD.items() if k not in ("user", "authTokenUrl")}, "user, authTokenUrl"),
    ({k: v for k, v in BASIC.items() if k != "password"} | {"host": "smtp.acme.example"}, "password"),
])
def test_auth_without_its_keys_is_incomplete(smtp, missing):
    found = _found(smtp)
    assert found["auth-incomplete"].severity is Severity.ERROR
    assert f"without {missing}:" in found["auth-incomplete"].message


def test_credentials_without_tls_to_a_remote_host_are_a_warning():
    found = _found(BASIC | {"host": "smtp.acme.example", "starttls": "false"})
    assert found["credentials-in-clear"].severity is Severity.WARNING
    assert "credentials-in-clear" not in _found(BASIC | {"host": "127.0.0.1", "starttls": "false"})
    assert "credentials-in-clear" not in _found(BASIC | {"host": "smtp.acme.example", "starttls": "false",
                                                          "ssl": "true"})
    assert "credentials-in-clear" not in _found(BASIC | {"host": "smtp.acme.example", "starttls": "false",
                                                          "auth": "false"})


def test_debug_on_is_a_warning():
    found = _found(GOOD | {"debug": "true"})
    assert found["debug-enabled"].severity is Severity.WARNING
    assert "debug-enabled" not in _found(GOOD | {"debug": "TRUE"})  # Keycloak compares with "true".equals


def test_a_missing_sender_is_an_error():
    smtp = {k: v for k, v in GOOD.items() if k != "from"}
    assert _found(smtp)["from-missing"].severity is Severity.ERROR
    assert "from-missing" in _found(GOOD | {"from": ""})


@pytest.mark.parametrize("address", ["no-reply", '"no reply"@acme.example', "Acme <no-reply@acme.example>",
                                     "a@b@c"])
def test_a_sender_that_is_not_an_address_is_an_error(address):
    found = _found(GOOD | {"from": address})
    assert found["from-invalid"].severity is Severity.ERROR
    assert "from-missing" not in found


def test_an_invalid_reply_to_or_envelope_from_is_an_error():
    found = _found(GOOD | {"replyTo": "support", "envelopeFrom": "bounces at acme"})
    assert found["reply-to-invalid"].severity is Severity.ERROR
    assert found["envelope-from-invalid"].severity is Severity.ERROR
    assert _found(GOOD | {"replyTo": "s@acme.example", "envelopeFrom": "b@acme.example"}) == {}


@pytest.mark.parametrize("smtp", [GOOD, BASIC])
def test_token_auth_or_exchange_online_on_a_keycloak_older_than_26_2_is_an_error(smtp):
    found = _found(smtp, (26, 1, 5))
    assert found["keycloak-too-old-for-token-auth"].severity is Severity.ERROR
    assert "needs Keycloak 26.2.0 or newer and this one is 26.1.5" in found["keycloak-too-old-for-token-auth"].message


def test_keycloak_age_matters_only_where_token_auth_is_needed():
    assert "keycloak-too-old-for-token-auth" not in _found(BASIC | {"host": "smtp.acme.example"}, (25, 0, 6))
    assert "keycloak-too-old-for-token-auth" not in _found(GOOD, (26, 2, 0))


def test_a_vault_reference_is_shown_and_any_other_secret_is_masked():
    shown = shown_settings({"password": "${vault.smtp-password}", "authTokenClientSecret": "canary-in-clear",
                            "user": "u", "host": ""})
    assert shown == {"password": "${vault.smtp-password}", "authTokenClientSecret": MASK, "user": "u", "host": ""}


def test_smtp_settings_reads_every_value_as_a_string():
    assert smtp_settings({"smtpServer": {"port": 587, "ssl": True}}) == {"port": "587", "ssl": "True"}
    assert smtp_settings({}) == {}
    assert smtp_settings({"smtpServer": None}) == {}


@pytest.mark.parametrize(("severities", "threshold", "expected"), [
    ([], Severity.INFO, False),
    ([Severity.INFO], Severity.WARNING, False),
    ([Severity.INFO, Severity.WARNING], Severity.WARNING, True),
    ([Severity.WARNING], Severity.ERROR, False),
    ([Severity.ERROR], Severity.ERROR, True),
    ([Severity.ERROR], Severity.INFO, True),
])
def test_the_exit_code_follows_the_most_severe_finding(severities, threshold, expected):
    findings = [Finding(Check.DEBUG_ENABLED, s, "acme", "m") for s in severities]
    assert reaches(findings, threshold) is expected


@pytest.mark.parametrize("host", ["smtp.gmail.com", "SMTP.googlemail.com."])
def test_gmail_with_basic_auth_is_an_app_password_and_the_bridge_is_suggested(host):
    found = _found(BASIC | {"host": host})
    assert found["gmail-app-password"].severity is Severity.WARNING
    assert "token bridge" in found["gmail-app-password"].message
    assert "basic-auth-retired" not in found
    # Google's relay authenticates by address, not by password: no finding.
    assert "gmail-app-password" not in _found(BASIC | {"host": "smtp-relay.gmail.com"})


@pytest.mark.parametrize("url", ["https://oauth2.googleapis.com/token", "https://accounts.google.com/o/oauth2/token"])
def test_keycloak_pointed_at_googles_token_endpoint_gets_no_token(url):
    found = _found(GOOD | {"host": "smtp.gmail.com", "authTokenUrl": url, "authTokenScope": "https://mail.google.com/"})
    assert found["gmail-token-url-unusable"].severity is Severity.ERROR
    assert "bridge" in found["gmail-token-url-unusable"].message
    bridged = GOOD | {"host": "smtp.gmail.com", "authTokenUrl": "https://kcmail-bridge.kcmail-system.svc:8443/token",
                      "authTokenScope": "https://mail.google.com/"}
    assert audit_realm("acme", bridged, CURRENT) == []
