"""``kcmail probe`` without servers: reading manifests and flags into probe inputs, and rendering reports."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kcmail.conditions import Failure, Reason
from kcmail.probe_cli import (
    CLIENT_SECRET_ENV,
    EXIT_BAD_INPUT,
    InputError,
    ProbeInput,
    ProbeOptions,
    ProbeReport,
    ReportStep,
    describe,
    parse_manifests,
    read_inputs,
    render_json,
    render_text,
    secret_values,
)
from kcmail.probes import send_spec, smtp_target
from kcmail.smtp_probe import certificate_summary
from kcmail.spec import AuthType, MailConfigSpec

pytestmark = pytest.mark.unit

CANARY_ID = "canary-client-id-7Q2"
CANARY_SECRET = "kcmail-canary-secret-Zx81PqL0"
CANARY_PASSWORD = "kcmail-canary-password-Hh3Jw9"


def _mailconfig(auth: dict, probe: dict | None = None, name: str = "acme", namespace: str | None = "tenant-acme"):
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "kcmail.io/v1alpha1", "kind": "MailConfig", "metadata": metadata, "spec": {
        "connectionRef": {"kind": "ClusterKeycloakConnection", "name": "main"}, "realm": "acme",
        "smtp": {"host": "smtp.example", "port": 587}, "sender": {"from": "no-reply@acme.example"},
        "auth": auth, "probe": probe or {"smtp": "Authenticate"}}}


XOAUTH2 = {"type": "XOAUTH2", "username": "no-reply@acme.example",
           "xoauth2": {"tokenURL": "https://login.example/tenant/token", "scope": "smtp.send",
                       "clientSecretRef": {"name": "acme-oauth"}}}
BASIC = {"type": "Basic", "username": "relay-user",
         "basic": {"passwordSecretRef": {"name": "acme-relay", "key": "password"}}}


def _secret(name: str, *, string_data: dict | None = None, data: dict | None = None,
            namespace: str | None = None) -> dict:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta,
            **({"stringData": string_data} if string_data is not None else {}),
            **({"data": data} if data is not None else {})}


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _write(path: Path, *docs: dict) -> Path:
    path.write_text(yaml.safe_dump_all(docs))
    return path


def test_secret_values_decode_data_and_let_string_data_win():
    secret = _secret("s", data={"client-id": _b64("from-data"), "client-secret": _b64("é-secret")},
                     string_data={"client-id": "from-string-data"})
    assert secret_values(secret, "f.yaml") == {"client-id": "from-string-data", "client-secret": "é-secret"}


def test_secret_data_that_is_not_base64_is_bad_input_without_the_value():
    with pytest.raises(InputError, match="data key 'client-secret' is not base64") as caught:
        secret_values(_secret("s", data={"client-secret": CANARY_SECRET + "!"}), "f.yaml")
    assert CANARY_SECRET not in str(caught.value)


def test_the_mailconfig_and_its_secret_are_read_from_one_multi_document_file(tmp_path):
    path = _write(tmp_path / "acme.yaml",
                  _secret("other", string_data={"client-id": "x", "client-secret": "y"}),
                  _mailconfig(XOAUTH2),
                  _secret("acme-oauth", data={"client-id": _b64(CANARY_ID), "client-secret": _b64(CANARY_SECRET)}))
    probe = read_inputs(ProbeOptions(mailconfig_file=path), environ={})
    assert probe.mailconfig == "tenant-acme/acme"
    assert (probe.credentials.client_id, probe.credentials.client_secret) == (CANARY_ID, CANARY_SECRET)
    assert probe.credentials_from == f"Secret acme-oauth in {path}"


def test_a_secret_file_supplies_the_referenced_secret_and_skips_one_of_another_namespace(tmp_path):
    config = _write(tmp_path / "mc.yaml", _mailconfig(XOAUTH2))
    secrets = _write(tmp_path / "secrets.yaml",
                     _secret("acme-oauth", namespace="elsewhere",
                             string_data={"client-id": "no", "client-secret": "no"}),
                     _secret("acme-oauth", namespace="tenant-acme",
                             string_data={"client-id": CANARY_ID, "client-secret": CANARY_SECRET}))
    probe = read_inputs(ProbeOptions(mailconfig_file=config, secret_file=secrets), environ={})
    assert (probe.credentials.client_id, probe.credentials.client_secret) == (CANARY_ID, CANARY_SECRET)


def test_a_secret_file_without_the_referenced_secret_names_what_it_holds(tmp_path):
    config = _write(tmp_path / "mc.yaml", _mailconfig(XOAUTH2))
    secrets = _write(tmp_path / "s.yaml", _secret("acme-smtp", string_data={"client-secret": CANARY_SECRET}))
    with pytest.raises(InputError, match=r"holds no Secret named 'acme-oauth' .*Secrets in the file: acme-smtp"):
        read_inputs(ProbeOptions(mailconfig_file=config, secret_file=secrets), environ={})


def test_a_missing_secret_key_names_the_key_and_the_flag_without_the_other_values(tmp_path):
    path = _write(tmp_path / "mc.yaml", _mailconfig(XOAUTH2),
                  _secret("acme-oauth", string_data={"client-id": CANARY_ID, "client-secret": ""}))
    with pytest.raises(InputError) as caught:
        read_inputs(ProbeOptions(mailconfig_file=path), environ={})
    message = str(caught.value)
    assert "has no (or an empty) key 'client-secret'" in message
    assert f"--client-secret-file or ${CLIENT_SECRET_ENV}" in message
    assert CANARY_ID not in message


def test_a_google_service_account_mailconfig_needs_the_key_and_never_quotes_a_bad_one(tmp_path):
    google = {"type": "XOAUTH2", "username": "no-reply@workspace.example",
              "xoauth2": {"googleServiceAccount": {"keySecretRef": {"name": "gmail-key"}}}}
    path = _write(tmp_path / "mc.yaml", _mailconfig(google))
    with pytest.raises(InputError, match=r"no Secret 'gmail-key' holds the service account's key under 'key.json'"):
        read_inputs(ProbeOptions(mailconfig_file=path), environ={})
    path = _write(tmp_path / "mc.yaml", _mailconfig(google), _secret("gmail-key", string_data={"key.json": "hunter2"}))
    with pytest.raises(InputError, match=r"key 'key.json' of Secret gmail-key in .* is not JSON") as caught:
        read_inputs(ProbeOptions(mailconfig_file=path), environ={})
    assert "hunter2" not in str(caught.value)


def test_without_any_secret_the_message_says_how_to_give_one(tmp_path):
    path = _write(tmp_path / "mc.yaml", _mailconfig(XOAUTH2))
    with pytest.raises(InputError, match=r"no value for key 'client-id' of Secret 'acme-oauth'.*--secret FILE"):
        read_inputs(ProbeOptions(mailconfig_file=path), environ={})


def test_flags_and_the_environment_override_the_secret(tmp_path):
    path = _write(tmp_path / "mc.yaml", _mailconfig(XOAUTH2),
                  _secret("acme-oauth", string_data={"client-id": "old-id", "client-secret": "old-secret"}))
    probe = read_inputs(ProbeOptions(mailconfig_file=path, client_id=CANARY_ID),
                        environ={CLIENT_SECRET_ENV: CANARY_SECRET})
    assert (probe.credentials.client_id, probe.credentials.client_secret) == (CANARY_ID, CANARY_SECRET)
    assert probe.credentials_from == f"--client-id and ${CLIENT_SECRET_ENV}"


def test_a_client_secret_file_loses_its_trailing_newline_and_beats_the_environment(tmp_path):
    path = _write(tmp_path / "mc.yaml", _mailconfig(XOAUTH2))
    secret_file = tmp_path / "client-secret"
    secret_file.write_text(CANARY_SECRET + "\n")
    probe = read_inputs(ProbeOptions(mailconfig_file=path, client_id=CANARY_ID, client_secret_file=secret_file),
                        environ={CLIENT_SECRET_ENV: "from-env"})
    assert probe.credentials.client_secret == CANARY_SECRET
    assert probe.credentials_from == "--client-id and --client-secret-file"


def test_a_flag_and_the_secret_each_supply_one_key(tmp_path):
    path = _write(tmp_path / "mc.yaml", _mailconfig(XOAUTH2),
                  _secret("acme-oauth", string_data={"client-id": CANARY_ID}))
    probe = read_inputs(ProbeOptions(mailconfig_file=path), environ={CLIENT_SECRET_ENV: CANARY_SECRET})
    assert (probe.credentials.client_id, probe.credentials.client_secret) == (CANARY_ID, CANARY_SECRET)
    assert probe.credentials_from == f"Secret acme-oauth in {path} and ${CLIENT_SECRET_ENV}"


def test_basic_auth_reads_the_password_file(tmp_path):
    path = _write(tmp_path / "mc.yaml", _mailconfig(BASIC))
    password_file = tmp_path / "password"
    password_file.write_text(CANARY_PASSWORD + "\r\n")
    probe = read_inputs(ProbeOptions(mailconfig_file=path, password_file=password_file), environ={})
    assert probe.credentials.password == CANARY_PASSWORD
    assert probe.spec.auth.type is AuthType.BASIC


def test_an_unreadable_secret_file_is_bad_input(tmp_path):
    path = _write(tmp_path / "mc.yaml", _mailconfig(BASIC))
    with pytest.raises(InputError, match=r"cannot read .*nope: No such file or directory"):
        read_inputs(ProbeOptions(mailconfig_file=path, password_file=tmp_path / "nope"), environ={})


def test_several_mailconfigs_need_a_name_and_the_name_picks_one(tmp_path):
    path = _write(tmp_path / "all.yaml", _mailconfig({"type": "None"}, name="a"),
                  _mailconfig({"type": "None"}, name="b", namespace=None))
    with pytest.raises(InputError, match=r"holds 2 MailConfigs \(a, b\); pick one with --name"):
        read_inputs(ProbeOptions(mailconfig_file=path), environ={})
    assert read_inputs(ProbeOptions(mailconfig_file=path, name="b"), environ={}).mailconfig == "b"


def test_a_file_without_a_mailconfig_is_bad_input(tmp_path):
    path = _write(tmp_path / "s.yaml", _secret("acme-oauth", string_data={}))
    with pytest.raises(InputError, match="holds no MailConfig"):
        read_inputs(ProbeOptions(mailconfig_file=path), environ={})


def test_a_malformed_spec_names_the_field(tmp_path):
    config = _mailconfig({"type": "XOAUTH2", "username": "u"})
    path = _write(tmp_path / "mc.yaml", config)
    with pytest.raises(InputError, match=r"MailConfig spec\.auth\.xoauth2 is required"):
        read_inputs(ProbeOptions(mailconfig_file=path), environ={})


def test_invalid_yaml_is_reported_by_position_without_quoting_the_file():
    text = f"kind: Secret\nstringData:\n  client-secret: {CANARY_SECRET}: oops\n"
    with pytest.raises(InputError, match=r"f\.yaml: not valid YAML at line 3") as caught:
        parse_manifests(text, "f.yaml")
    assert CANARY_SECRET not in str(caught.value)


def test_send_mode_without_a_recipient_needs_send_to(tmp_path):
    path = _write(tmp_path / "mc.yaml", _mailconfig({"type": "None"}, probe={"smtp": "Send"}))
    with pytest.raises(InputError, match=r"probe\.recipient is empty; set it or give --send-to"):
        read_inputs(ProbeOptions(mailconfig_file=path), environ={})
    probe = read_inputs(ProbeOptions(mailconfig_file=path, send_to="probe@acme.example"), environ={})
    assert describe(probe)["send"] == "no-reply@acme.example -> probe@acme.example"


def test_a_token_url_that_cannot_be_parsed_is_bad_input(tmp_path):
    auth = {**XOAUTH2, "xoauth2": {**XOAUTH2["xoauth2"], "tokenURL": "https://[::1"}}
    path = _write(tmp_path / "mc.yaml", _mailconfig(auth),
                  _secret("acme-oauth", string_data={"client-id": "i", "client-secret": "s"}))
    with pytest.raises(InputError, match="tokenURL 'https://\\[::1' is not an https:// URL with a host"):
        read_inputs(ProbeOptions(mailconfig_file=path), environ={})


def _canary_input(tmp_path: Path) -> ProbeInput:
    path = _write(tmp_path / "mc.yaml", _mailconfig(XOAUTH2, probe={"smtp": "Send", "recipient": "p@acme.example"}),
                  _secret("acme-oauth", string_data={"client-id": "smtp-app", "client-secret": CANARY_SECRET}))
    return read_inputs(ProbeOptions(mailconfig_file=path), environ={})


def _passed(probe: ProbeInput) -> ProbeReport:
    steps = (ReportStep("token", True, 0.2314, "login.example answered HTTP 200; the token expires in 3599 s"),
             ReportStep("connect", True, 0.012, "connected to smtp.example:587"),
             ReportStep("ehlo", True, 0.003, "EHLO: 8bitmime size starttls"),
             ReportStep("starttls", True, 0.02, "TLSv1.3, certificate CN=smtp.example issued by CN=CA, expires x"),
             ReportStep("auth", True, 0.1, "AUTH XOAUTH2 as no-reply@acme.example: 235 2.7.0 OK"),
             ReportStep("send", True, 0.03, "probe abc123 accepted for p@acme.example"))
    return ProbeReport(probe.mailconfig, describe(probe), steps, None, "abc123")


def _failed(probe: ProbeInput) -> ProbeReport:
    failure = Failure(Reason.INVALID_CLIENT, "token endpoint answered HTTP 401: invalid_client: Bad secret")
    return ProbeReport(probe.mailconfig, describe(probe),
                       (ReportStep("token", False, 0.05, failure.message, failure.reason.value),), failure)


def test_text_report_lists_every_step_with_its_timing_and_the_verdict(tmp_path):
    text = render_text(_passed(_canary_input(tmp_path)))
    assert "kcmail probe of MailConfig tenant-acme/acme" in text
    assert "token from    https://login.example/tenant/token (client smtp-app, scope smtp.send)" in text
    for name, timing in [("token", "231 ms"), ("connect", "12 ms"), ("starttls", "20 ms"), ("send", "30 ms")]:
        assert any(line.split()[:2] == ["ok", name] and timing in line for line in text.splitlines()), name
    assert text.rstrip().endswith("PASSED: every step passed in 396 ms.")


def test_text_report_of_a_failure_shows_the_reason_and_the_servers_words(tmp_path):
    text = render_text(_failed(_canary_input(tmp_path)))
    assert "FAIL token" in text
    assert "InvalidClient: token endpoint answered HTTP 401: invalid_client: Bad secret" in text
    assert "FAILED at token: InvalidClient" in text


def test_a_conversation_dropped_between_steps_still_gives_the_reason(tmp_path):
    probe = _canary_input(tmp_path)
    failure = Failure(Reason.SMTP_UNREACHABLE, "smtp.example:587 closed the conversation")
    report = ProbeReport(probe.mailconfig, describe(probe), (ReportStep("connect", True, 0.01, "connected"),), failure)
    assert "FAILED: SMTPUnreachable: smtp.example:587 closed the conversation" in render_text(report)


def test_json_report_is_one_document_with_the_steps(tmp_path):
    document = json.loads(render_json(_failed(_canary_input(tmp_path))))
    assert document["ok"] is False
    assert document["failure"] == {"reason": "InvalidClient",
                                   "message": "token endpoint answered HTTP 401: invalid_client: Bad secret"}
    assert document["steps"] == [{"name": "token", "ok": False, "seconds": 0.05,
                                  "detail": "token endpoint answered HTTP 401: invalid_client: Bad secret",
                                  "reason": "InvalidClient"}]
    passed = json.loads(render_json(_passed(_canary_input(tmp_path))))
    assert passed["ok"] is True
    assert passed["probeID"] == "abc123"
    assert "reason" not in passed["steps"][0]


def test_reports_never_carry_the_secrets(tmp_path):
    probe = _canary_input(tmp_path)
    assert probe.credentials.client_secret == CANARY_SECRET
    for report in (_passed(probe), _failed(probe)):
        for rendered in (render_text(report), render_json(report), repr(report), repr(probe)):
            assert CANARY_SECRET not in rendered


def test_certificate_summary_names_subject_issuer_and_expiry():
    peercert = {"subject": ((("countryName", "DE"),), (("organizationName", "Acme"),), (("commonName", "smtp.acme"),)),
                "issuer": ((("commonName", "Acme CA"),),),
                "notAfter": "May  9 07:35:25 2027 GMT"}
    assert certificate_summary(peercert) == \
        "certificate O=Acme, CN=smtp.acme issued by CN=Acme CA, expires 2027-05-09T07:35:25Z"
    assert certificate_summary({}) == "certificate not available"
    assert certificate_summary({"subject": (), "notAfter": "garbage"}).endswith("unknown expiry")


def test_the_command_exits_2_on_bad_input_without_importing_kopf_or_kubernetes(tmp_path):
    path = _write(tmp_path / "mc.yaml", _mailconfig(XOAUTH2))
    script = ("import sys\nfrom kcmail.cli import main\nrc = main(sys.argv[1:])\n"
              "print(sorted({m.split('.')[0] for m in sys.modules} & {'kopf', 'kubernetes'}))\nsys.exit(rc)\n")
    result = subprocess.run([sys.executable, "-c", script, "probe", str(path)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == EXIT_BAD_INPUT, result.stderr
    assert result.stdout.strip() == "[]"
    assert result.stderr.startswith("kcmail probe: no value for key 'client-id' of Secret 'acme-oauth'")


def test_the_probe_targets_follow_the_spec_and_the_flags():
    spec = MailConfigSpec.parse({**_mailconfig({"type": "None"})["spec"],
                                 "smtp": {"host": "smtp.example", "timeouts": {"connect": "3s", "read": "7s"}}})
    assert (smtp_target(spec).connect_timeout, smtp_target(spec).timeout) == (3, 10)  # write defaults to 10 s
    assert (smtp_target(spec, 2.5).connect_timeout, smtp_target(spec, 2.5).timeout) == (2.5, 2.5)
    assert send_spec(spec, "ns/acme") is None  # Authenticate mode sends nothing
    sent = send_spec(spec, "ns/acme", "me@acme.example")
    assert sent is not None
    assert (sent.sender, sent.recipient) == ("no-reply@acme.example", "me@acme.example")
