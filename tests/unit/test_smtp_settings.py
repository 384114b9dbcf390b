"""Desired smtpServer map, version gating and the diff that decides whether Keycloak is written."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kcmail.smtp_settings import (
    MASK,
    UnsupportedVersion,
    desired_smtp_server,
    diff,
    needs_write,
    parse_version,
)
from kcmail.spec import Credentials, MailConfigSpec

pytestmark = pytest.mark.unit

XOAUTH2 = {
    "connectionRef": {"kind": "ClusterKeycloakConnection", "name": "main"},
    "realm": "acme",
    "smtp": {"host": "smtp.office365.com", "port": 587, "security": "StartTLS",
             "timeouts": {"connect": "10s", "read": "1m", "write": "500ms"}},
    "sender": {"from": "no-reply@acme.example", "fromDisplayName": "Acme"},
    "auth": {"type": "XOAUTH2", "username": "no-reply@acme.example",
             "xoauth2": {"tokenURL": "https://login.example/token", "scope": "https://outlook.office365.com/.default",
                         "clientSecretRef": {"name": "acme-smtp-oauth"}}},
}
CREDS = Credentials(secret_version="uid/1", client_id="app-id", client_secret="s3cr3t-value")


def test_xoauth2_maps_to_lowercase_token_auth_with_the_real_secret():
    settings = desired_smtp_server(MailConfigSpec.parse(XOAUTH2), CREDS, (26, 7, 3))
    assert settings == {
        "host": "smtp.office365.com", "port": "587", "ssl": "false", "starttls": "true", "auth": "true",
        "debug": "false", "from": "no-reply@acme.example", "fromDisplayName": "Acme", "allowutf8": "false",
        "connectionTimeout": "10000", "timeout": "60000", "writeTimeout": "500",
        "user": "no-reply@acme.example", "authType": "token", "authTokenUrl": "https://login.example/token",
        "authTokenScope": "https://outlook.office365.com/.default", "authTokenClientId": "app-id",
        "authTokenClientSecret": "s3cr3t-value",
    }
    assert MASK not in settings.values()


def test_timeout_keys_are_left_out_below_26_5_and_allowutf8_where_keycloak_lacks_it():
    spec = MailConfigSpec.parse(XOAUTH2)
    old = desired_smtp_server(spec, CREDS, (26, 4, 7))
    assert "connectionTimeout" not in old
    assert "timeout" not in old
    assert "writeTimeout" not in old
    assert old["allowutf8"] == "false"
    older = desired_smtp_server(spec, CREDS, (26, 2, 5))
    assert "allowutf8" not in older
    # Back-ported to 26.2.8; 26.3.0 to 26.3.2 came out before it.
    for version, has in (((26, 2, 7), False), ((26, 2, 8), True), ((26, 2, 12), True), ((26, 3, 0), False),
                         ((26, 3, 2), False), ((26, 3, 3), True)):
        assert ("allowutf8" in desired_smtp_server(spec, CREDS, version)) is has, version


def test_token_auth_below_26_2_is_unsupported():
    with pytest.raises(UnsupportedVersion, match=r"26\.2\.0 or newer; this one is 26\.1\.4"):
        desired_smtp_server(MailConfigSpec.parse(XOAUTH2), CREDS, (26, 1, 4))


def test_basic_auth_below_26_2_is_fine_and_carries_the_password():
    spec = MailConfigSpec.parse({**XOAUTH2, "auth": {"type": "Basic", "username": "u",
                                                     "basic": {"passwordSecretRef": {"name": "p"}}}})
    settings = desired_smtp_server(spec, Credentials(secret_version="v", password="pw"), (25, 0, 6))
    assert settings["authType"] == "basic"
    assert settings["password"] == "pw"
    assert not any(key.startswith("authToken") for key in settings)


def test_no_auth_writes_auth_false_and_no_credentials():
    spec = MailConfigSpec.parse({**XOAUTH2, "smtp": {"host": "relay", "port": 25, "security": "None"},
                                 "auth": {"type": "None"}})
    settings = desired_smtp_server(spec, Credentials(secret_version=""), (26, 7, 3))
    assert settings["auth"] == "false"
    assert settings["ssl"] == settings["starttls"] == "false"
    assert "user" not in settings
    assert "authType" not in settings


def test_ssl_security_sets_ssl_only():
    spec = MailConfigSpec.parse({**XOAUTH2, "smtp": {"host": "h", "port": 465, "security": "SSL"}})
    settings = desired_smtp_server(spec, CREDS, (26, 7, 3))
    assert (settings["ssl"], settings["starttls"]) == ("true", "false")


@pytest.mark.parametrize(("text", "version"), [
    ("26.7.3", (26, 7, 3)), ("26.2.0.redhat-00001", (26, 2, 0)), ("999.0.0-SNAPSHOT", (999, 0, 0)),
])
def test_parse_version(text, version):
    assert parse_version(text) == version


def test_parse_version_rejects_garbage():
    with pytest.raises(ValueError, match="not a Keycloak version"):
        parse_version("unknown")


def test_masked_secret_counts_as_present_and_missing_equals_empty():
    desired = {"host": "h", "authTokenClientSecret": "real", "fromDisplayName": ""}
    assert not diff(desired, {"host": "h", "authTokenClientSecret": MASK})
    assert diff(desired, {"host": "h"}).keys == ("authTokenClientSecret",)


def test_diff_names_keys_never_values():
    drift = diff({"host": "new", "port": "587"}, {"host": "old", "port": "587", "debug": "true"})
    assert drift.keys == ("debug", "host")
    assert "new" not in repr(drift)
    assert "old" not in repr(drift)


def test_steady_state_needs_no_write():
    desired = desired_smtp_server(MailConfigSpec.parse(XOAUTH2), CREDS, (26, 7, 3))
    stored = {**desired, "authTokenClientSecret": MASK}
    write, drift = needs_write(desired, stored, secret_version="uid/1", applied_secret_version="uid/1")
    assert not write
    assert not drift


def test_a_rotated_secret_needs_a_write_even_without_drift():
    desired = desired_smtp_server(MailConfigSpec.parse(XOAUTH2), CREDS, (26, 7, 3))
    stored = {**desired, "authTokenClientSecret": MASK}
    write, drift = needs_write(desired, stored, secret_version="uid/2", applied_secret_version="uid/1")
    assert write
    assert not drift


def test_a_realm_without_smtp_needs_a_write():
    desired = desired_smtp_server(MailConfigSpec.parse(XOAUTH2), CREDS, (26, 7, 3))
    write, drift = needs_write(desired, None, secret_version="uid/1", applied_secret_version="uid/1")
    assert write
    assert "host" in drift.keys


_values = st.dictionaries(st.sampled_from(["host", "port", "from", "debug", "user", "password"]),
                          st.text(max_size=5))


@given(_values)
def test_a_map_never_drifts_from_itself(settings):
    masked = {k: (MASK if k == "password" and v else v) for k, v in settings.items()}
    assert not diff(settings, masked)


@given(_values, _values)
def test_drift_is_symmetric_in_the_keys_it_names(a, b):
    assert diff(a, b).keys == diff(b, a).keys
