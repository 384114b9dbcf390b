"""`kcmail export`: a realm's stored smtpServer map back to the MailConfig and Secret template that
reproduce it, the inverse of desired_smtp_server."""

from __future__ import annotations

import re

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kcmail.adopt.export import PLACEHOLDER, duration_text, export_realm, object_name, render_yaml
from kcmail.adopt.findings import shown_settings
from kcmail.smtp_settings import MASK, desired_smtp_server
from kcmail.spec import ConnectionKind, ConnectionRef, Credentials, MailConfigSpec

pytestmark = pytest.mark.unit

MAIN = ConnectionRef(ConnectionKind.CLUSTER, "main")
CURRENT = (26, 7, 3)
M365 = {
    "host": "smtp.office365.com", "port": "587", "ssl": "false", "starttls": "true", "auth": "true",
    "debug": "false", "allowutf8": "false", "connectionTimeout": "15000", "timeout": "10000",
    "writeTimeout": "90000", "from": "no-reply@acme.example", "fromDisplayName": "Acme",
    "replyTo": "support@acme.example", "user": "no-reply@acme.example", "authType": "token",
    "authTokenUrl": "https://login.microsoftonline.com/t/oauth2/v2.0/token",
    "authTokenScope": "https://outlook.office365.com/.default", "authTokenClientId": "app-id",
    "authTokenClientSecret": MASK,
}
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _export(smtp, version=CURRENT, **kwargs):
    return export_realm("acme", smtp, version, namespace="tenant-acme", connection_ref=MAIN, **kwargs)


def test_a_microsoft_365_realm_becomes_an_xoauth2_mailconfig_and_a_secret_template():
    result = _export(M365)
    assert result.mailconfig == {
        "apiVersion": "kcmail.io/v1alpha1", "kind": "MailConfig",
        "metadata": {"name": "acme", "namespace": "tenant-acme"},
        "spec": {
            "connectionRef": {"kind": "ClusterKeycloakConnection", "name": "main"},
            "realm": "acme",
            "smtp": {"host": "smtp.office365.com", "port": 587, "security": "StartTLS",
                     "timeouts": {"connect": "15s", "write": "90s"}},
            "sender": {"from": "no-reply@acme.example", "fromDisplayName": "Acme", "replyTo": "support@acme.example"},
            "auth": {"type": "XOAUTH2", "username": "no-reply@acme.example",
                     "xoauth2": {"tokenURL": "https://login.microsoftonline.com/t/oauth2/v2.0/token",
                                 "scope": "https://outlook.office365.com/.default",
                                 "clientSecretRef": {"name": "acme-smtp-oauth"}}},
        },
    }
    assert result.secret == {"apiVersion": "v1", "kind": "Secret",
                             "metadata": {"name": "acme-smtp-oauth", "namespace": "tenant-acme"}, "type": "Opaque",
                             "stringData": {"client-id": "app-id", "client-secret": PLACEHOLDER}}
    assert result.notes == ()


def test_basic_auth_becomes_a_basic_mailconfig_whose_secret_holds_only_a_placeholder():
    smtp = {"host": "smtp.acme.example", "port": "465", "ssl": "true", "auth": "true", "user": "mailer",
            "password": MASK, "from": "no-reply@acme.example"}
    result = _export(smtp)
    spec = result.mailconfig["spec"]
    assert spec["smtp"] == {"host": "smtp.acme.example", "port": 465, "security": "SSL"}
    assert spec["auth"] == {"type": "Basic", "username": "mailer",
                            "basic": {"passwordSecretRef": {"name": "acme-smtp"}}}
    assert result.secret["stringData"] == {"password": PLACEHOLDER}
    # No authType is basic to Keycloak: writing "basic" changes nothing, and the note says so.
    assert not any("changes" in note for note in result.notes[:-1])
    assert "authType=basic" in result.notes[-1]


def test_no_auth_needs_no_secret():
    result = _export({"host": "relay.acme.internal", "port": "25", "from": "no-reply@acme.example"})
    assert result.mailconfig["spec"]["auth"] == {"type": "None"}
    assert result.mailconfig["spec"]["smtp"]["security"] == "None"
    assert result.secret is None


def test_keys_the_realm_lacks_are_written_with_keycloaks_defaults_and_the_notes_say_so():
    smtp = {"host": "smtp.acme.example", "port": "587", "starttls": "true", "from": "no-reply@acme.example"}
    (note,) = _export(smtp).notes
    assert note == ("the realm lacks keys the first write stores with Keycloak's own defaults, which changes nothing "
                    "Keycloak does: allowutf8=false, auth=false, connectionTimeout=10000, debug=false, ssl=false, "
                    "timeout=10000, writeTimeout=10000")


def test_a_missing_port_is_made_explicit_as_javamail_would_choose_it():
    result = _export({"host": "smtp.acme.example", "ssl": "true", "from": "no-reply@acme.example"})
    assert result.mailconfig["spec"]["smtp"]["port"] == 465
    assert any("names no port" in note for note in result.notes)
    assert _export({"host": "smtp.acme.example", "from": "a@acme.example"}).mailconfig["spec"]["smtp"]["port"] == 25


def test_ssl_wins_over_starttls_and_the_note_says_what_the_first_write_changes():
    result = _export(M365 | {"ssl": "true"})
    assert result.mailconfig["spec"]["smtp"]["security"] == "SSL"
    assert "the first write changes starttls from 'true' to 'false'" in result.notes


def test_an_uppercase_token_auth_type_and_a_stray_password_are_noted():
    # Keycloak stores "TOKEN" as sent, and keeps a password next to it.
    result = _export(M365 | {"authType": "TOKEN", "password": MASK})
    assert result.mailconfig["spec"]["auth"]["type"] == "XOAUTH2"
    assert "the first write changes authType from 'TOKEN' to 'token'" in result.notes
    assert "the first write removes password, which the MailConfig does not use" in result.notes


def test_keys_a_mailconfig_cannot_express_are_noted_as_removed():
    result = _export(M365 | {"vendorKey": "x"})
    assert "the first write removes vendorKey ('x'), which a MailConfig cannot express" in result.notes


def test_a_vault_reference_is_named_in_a_note_and_never_put_in_the_secret_for_the_probe_to_use():
    result = _export({"host": "smtp.acme.example", "port": "587", "starttls": "true", "auth": "true", "user": "u",
                      "password": "${vault.smtp-password}", "from": "no-reply@acme.example"})
    assert result.secret["stringData"] == {"password": PLACEHOLDER}
    assert any("${vault.smtp-password}" in note and "probe.smtp: Off" in note for note in result.notes)


def test_a_realm_without_a_sender_exports_with_a_note_that_it_cannot_be_applied():
    result = _export({k: v for k, v in M365.items() if k != "from"})
    assert "sender" not in result.mailconfig["spec"] or "from" not in result.mailconfig["spec"]["sender"]
    assert any("sender.from is required" in note for note in result.notes)


def test_timeouts_out_of_the_crds_range_are_kept_and_noted():
    result = _export(M365 | {"connectionTimeout": "500"})
    assert result.mailconfig["spec"]["smtp"]["timeouts"]["connect"] == "500ms"
    assert any("between 1s and 10m" in note for note in result.notes)


@pytest.mark.parametrize(("milliseconds", "text"), [(10_000, "10s"), (90_000, "90s"), (120_000, "2m"),
                                                    (1_500, "1500ms"), (600_000, "10m"), (1, "1ms")])
def test_durations_are_the_shortest_exact_spelling(milliseconds, text):
    assert duration_text(milliseconds) == text


def test_a_realm_named_like_a_kubernetes_object_keeps_its_name():
    assert object_name("tenant-acme") == "tenant-acme"


def test_other_realm_names_are_cleaned_up_and_told_apart_by_a_hash():
    assert re.fullmatch(r"acme-corp-[0-9a-f]{6}", object_name("Acme_Corp"))
    assert object_name("Acme_Corp") != object_name("acme.corp")


@given(st.text(min_size=1, max_size=300), st.text(min_size=1, max_size=300))
def test_any_realm_name_becomes_a_valid_object_name_no_other_realm_gets(realm, other):
    name = object_name(realm)
    assert DNS_SUBDOMAIN.match(name), name
    assert len(f"{name}-smtp-oauth") <= 253
    assert (name == object_name(other)) == (realm == other)


def test_the_yaml_has_the_notes_as_comments_and_parses_to_the_secret_then_the_mailconfig():
    text = render_yaml([_export(M365 | {"debug": "true", "vendorKey": "x"})], source="https://kc.example")
    assert "# NOTE: the first write removes vendorKey" in text
    documents = list(yaml.safe_load_all(text))
    assert [d["kind"] for d in documents] == ["Secret", "MailConfig"]
    assert documents[1]["spec"]["smtp"]["debug"] is True
    assert MASK not in text


# -- the round trip: whatever kcmail can write, export reproduces exactly --------------------------------

_names = st.from_regex(r"[a-z][a-z0-9-]{0,8}(\.[a-z][a-z0-9-]{0,8}){0,2}", fullmatch=True)
_addresses = st.builds(lambda local, domain: f"{local}@{domain}", st.from_regex(r"[a-z0-9._+-]{1,12}", fullmatch=True),
                       _names)
_words = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=24)
_milliseconds = st.integers(min_value=1_000, max_value=600_000)


@st.composite
def _mailconfig(draw: st.DrawFn) -> tuple[MailConfigSpec, Credentials]:
    kind = draw(st.sampled_from(["XOAUTH2", "Basic", "None"]))
    sender = {"from": draw(_addresses)}
    for key, values in (("fromDisplayName", _words), ("replyTo", _addresses), ("replyToDisplayName", _words),
                        ("envelopeFrom", _addresses)):
        value = draw(st.one_of(st.just(""), values))
        if value:
            sender[key] = value
    auth: dict[str, object] = {"type": kind}
    if kind != "None":
        auth["username"] = draw(_addresses)
    if kind == "XOAUTH2":
        auth["xoauth2"] = {"tokenURL": f"https://{draw(_names)}/oauth2/token", "scope": draw(_words),
                           "clientSecretRef": {"name": "s"}}
    if kind == "Basic":
        auth["basic"] = {"passwordSecretRef": {"name": "s"}}
    spec = {
        "connectionRef": {"kind": "ClusterKeycloakConnection", "name": "main"},
        "realm": "acme",
        "smtp": {"host": draw(_names), "port": draw(st.integers(1, 65535)),
                 "security": draw(st.sampled_from(["StartTLS", "SSL", "None"])),
                 "timeouts": {k: f"{draw(_milliseconds)}ms" for k in ("connect", "read", "write")},
                 "allowUTF8": draw(st.booleans()), "debug": draw(st.booleans())},
        "sender": sender,
        "auth": auth,
    }
    secret = draw(st.text(min_size=1, max_size=40))
    credentials = Credentials(secret_version="uid/1", client_id=draw(st.text(min_size=1, max_size=40)),
                              client_secret=secret if kind == "XOAUTH2" else "",
                              password=secret if kind == "Basic" else "")
    return MailConfigSpec.parse(spec), credentials


@settings(max_examples=300, deadline=None)
@given(_mailconfig(), st.sampled_from([(26, 2, 0), (26, 3, 3), (26, 4, 7), (26, 5, 0), (26, 7, 3)]))
def test_exporting_what_kcmail_writes_gives_a_mailconfig_that_writes_the_same_map(mailconfig, version):
    spec, credentials = mailconfig
    written = desired_smtp_server(spec, credentials, version)
    exported = export_realm("acme", shown_settings(written), version, namespace="ns", connection_ref=MAIN)
    # Nothing to warn about: adopting a realm kcmail could have written changes nothing.
    assert exported.notes == ()
    documents = {d["kind"]: d for d in yaml.safe_load_all(render_yaml([exported], source="test"))}
    template = documents.get("Secret", {}).get("stringData", {})
    assert template.get("client-secret", PLACEHOLDER) == PLACEHOLDER
    assert template.get("password", PLACEHOLDER) == PLACEHOLDER
    # The person fills the placeholders in with the real secret.
    filled = {key: (credentials.client_secret or credentials.password) if value == PLACEHOLDER else value
              for key, value in template.items()}
    again = Credentials(secret_version="uid/2", client_id=filled.get("client-id", ""),
                        client_secret=filled.get("client-secret", ""), password=filled.get("password", ""))
    assert desired_smtp_server(MailConfigSpec.parse(documents["MailConfig"]["spec"]), again, version) == written
