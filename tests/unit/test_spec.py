"""Reading MailConfig specs into typed values."""

from __future__ import annotations

import datetime
import re

import pytest

from kcmail.spec import AuthType, Credentials, MailConfigSpec, ProbeMode, Security, SpecError, duration

pytestmark = pytest.mark.unit

MINIMAL = {
    "connectionRef": {"kind": "KeycloakConnection", "name": "kc"},
    "realm": "acme",
    "smtp": {"host": "smtp.example"},
    "sender": {"from": "no-reply@acme.example"},
    "auth": {"type": "None"},
}


def test_defaults_match_the_crd_when_fields_are_absent():
    spec = MailConfigSpec.parse(MINIMAL)
    assert spec.smtp.port == 587
    assert spec.smtp.security is Security.STARTTLS
    assert spec.smtp.timeouts.connect == datetime.timedelta(seconds=10)
    assert spec.probe.smtp is ProbeMode.AUTHENTICATE
    assert spec.interval == datetime.timedelta(minutes=10)
    assert spec.auth.type is AuthType.NONE
    assert spec.auth.secret_name is None


def test_xoauth2_secret_reference_and_key_defaults():
    spec = MailConfigSpec.parse({**MINIMAL, "auth": {
        "type": "XOAUTH2", "username": "u",
        "xoauth2": {"tokenURL": "https://t", "clientSecretRef": {"name": "oauth"}}}})
    assert spec.auth.secret_name == "oauth"
    assert spec.auth.xoauth2 is not None
    assert spec.auth.xoauth2.client_secret_ref.client_id_key == "client-id"
    assert spec.auth.xoauth2.client_secret_ref.client_secret_key == "client-secret"


@pytest.mark.parametrize(("patch", "message"), [
    ({"realm": ""}, "realm is required"),
    ({"smtp": {"host": "h", "security": "TLS"}}, "smtp.security: 'TLS' is not one of StartTLS | SSL | None"),
    ({"auth": {"type": "XOAUTH2"}}, "auth.xoauth2 is required"),
    ({"interval": "ten minutes"}, "interval: 'ten minutes' is not a duration"),
])
def test_malformed_fields_are_named(patch, message):
    with pytest.raises(SpecError, match=message):
        MailConfigSpec.parse({**MINIMAL, **patch})


def test_duration_accepts_kubernetes_forms():
    assert duration("1h30m", "x") == datetime.timedelta(minutes=90)
    assert duration("500ms", "x") == datetime.timedelta(milliseconds=500)


def test_credentials_repr_hides_secret_values():
    creds = Credentials(secret_version="uid/7", client_id="app", client_secret="hunter2", password="pw-xyz")
    assert "hunter2" not in repr(creds)
    assert "pw-xyz" not in repr(creds)


@pytest.mark.parametrize(("patch", "message"), [
    ({"realm": "fzr/../master"}, "realm 'fzr/../master' contains /, which cannot be part of one path segment"),
    ({"realm": ".."}, "realm '..' is '..', which a URL path reads as a directory"),
    ({"realm": "acme "}, "realm 'acme ' starts or ends with a space"),
    ({"sender": {"from": "no-reply@acme.example", "fromDisplayName": "A" * 256}},
     "sender.fromDisplayName has 256 characters; Keycloak stores at most 255"),
    ({"auth": {"type": "Basic", "username": "u\r\nBcc: x", "basic": {"passwordSecretRef": {"name": "s"}}}},
     "auth.username contains control characters"),
    ({"auth": {"type": "Basic", "username": "u", "basic": {"passwordSecretRef": {"name": "s\n"}}}},
     "auth.basic.passwordSecretRef.name contains control characters"),
])
def test_an_object_stored_before_the_crds_rules_is_held_to_them_when_parsed(patch, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        MailConfigSpec.parse({**MINIMAL, **patch})
