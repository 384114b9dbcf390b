"""`kcmail audit --secrets-from DIR`: each realm's secret found through the MailConfig that names the realm."""

from __future__ import annotations

import base64

import pytest

from kcmail.adopt.export import export_realm, render_yaml
from kcmail.adopt.findings import AuthKind
from kcmail.adopt.live_probe import load_secrets
from kcmail.probe_cli import InputError
from kcmail.smtp_settings import MASK
from kcmail.spec import ConnectionKind, ConnectionRef

pytestmark = pytest.mark.unit

MAIN = ConnectionRef(ConnectionKind.CLUSTER, "main")
TOKEN = {"host": "smtp.example", "port": "587", "starttls": "true", "auth": "true", "from": "a@acme.example",
         "user": "a@acme.example", "authType": "token", "authTokenUrl": "https://login.example/token",
         "authTokenScope": "s", "authTokenClientId": "app", "authTokenClientSecret": MASK}
BASIC = {"host": "smtp.example", "port": "587", "starttls": "true", "auth": "true", "from": "a@acme.example",
         "user": "a@acme.example", "password": MASK}


def _exported(realm, smtp) -> str:
    return render_yaml([export_realm(realm, smtp, (26, 7, 3), namespace="ns", connection_ref=MAIN)], source="t")


def test_filled_in_exports_give_each_realm_its_secret_and_placeholders_give_none(tmp_path):
    (tmp_path / "acme.yaml").write_text(_exported("acme", TOKEN).replace("REPLACE-ME", "acme-secret"))
    (tmp_path / "globex.yml").write_text(_exported("globex", BASIC).replace("REPLACE-ME", "globex-password"))
    (tmp_path / "initech.yaml").write_text(_exported("initech", BASIC))  # not filled in
    (tmp_path / "notes.txt").write_text("not YAML: ignored")
    found = load_secrets(tmp_path)
    assert set(found) == {"acme", "globex"}
    assert (found["acme"].kind, found["acme"].value) == (AuthKind.TOKEN, "acme-secret")
    assert (found["globex"].kind, found["globex"].value) == (AuthKind.BASIC, "globex-password")
    assert found["acme"].source == "acme.yaml: Secret acme-smtp-oauth key client-secret"
    assert "acme-secret" not in repr(found["acme"])


def test_a_secret_in_another_file_with_base64_data_and_custom_keys_is_found(tmp_path):
    (tmp_path / "mailconfig.yaml").write_text("""
apiVersion: kcmail.io/v1alpha1
kind: MailConfig
metadata: {name: m, namespace: ns}
spec:
  realm: acme
  auth:
    type: XOAUTH2
    xoauth2: {tokenURL: https://t.example, clientSecretRef: {name: oauth, clientSecretKey: secret}}
""")
    encoded = base64.b64encode(b"from-data").decode()
    (tmp_path / "secret.yaml").write_text(f"""
apiVersion: v1
kind: Secret
metadata: {{name: oauth, namespace: ns}}
data: {{secret: {encoded}}}
""")
    assert load_secrets(tmp_path)["acme"].value == "from-data"


def test_a_directory_that_is_not_one_or_holds_broken_yaml_is_bad_input(tmp_path):
    with pytest.raises(InputError, match="is not a directory"):
        load_secrets(tmp_path / "missing")
    (tmp_path / "broken.yaml").write_text("kind: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_secrets(tmp_path)
