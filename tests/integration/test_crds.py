"""The CRDs as a real API server enforces them: defaults filled in, every rule refusing with its message.

Each case starts from a valid object of its kind, breaks one thing, and expects the words a person reads
in ``kubectl apply``'s error. A test cannot delete its namespace (no controller-manager), so each test
makes its own and leaves it.
"""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kcmail.devenv.crd_reference import CRDS_DIR, iter_rules, load_crds, stored_schema
from kcmail.spec import realm_name_problem

pytestmark = pytest.mark.integration

_DROP = object()  # an edit's value that removes the field
_API_VERSION = "kcmail.io/v1alpha1"


@pytest.fixture(scope="module")
def crds(kubectl) -> list[str]:
    applied = kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS_DIR))
    assert applied.returncode == 0, applied.stderr
    names = [crd["metadata"]["name"] for crd in load_crds()]
    for name in names:
        established = kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
        assert established.returncode == 0, established.stderr
    return names


@pytest.fixture
def namespace(kubectl, crds) -> str:
    name = f"crd-{uuid.uuid4().hex[:10]}"
    created = kubectl("create", "namespace", name)
    assert created.returncode == 0, created.stderr
    return name


def _mail_config(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": _API_VERSION, "kind": "MailConfig",
        "metadata": {"name": "acme", "namespace": namespace},
        "spec": {
            # A Connection that never exists: these objects test the schema and must never claim a realm
            # that the demo or the operator's tests manage.
            "connectionRef": {"kind": "ClusterKeycloakConnection", "name": "schema-only"},
            "realm": "acme",
            "smtp": {"host": "smtp.office365.com"},
            "sender": {"from": "no-reply@acme.example"},
            "auth": {
                "username": "no-reply@acme.example",
                "xoauth2": {
                    "tokenURL": "https://login.microsoftonline.com/acme/oauth2/v2.0/token",
                    "scope": "https://outlook.office365.com/.default",
                    "clientSecretRef": {"name": "acme-smtp-oauth"},
                },
            },
        },
    }


def _keycloak_connection(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": _API_VERSION, "kind": "KeycloakConnection",
        "metadata": {"name": "main", "namespace": namespace},
        "spec": {
            "url": "https://keycloak.identity.svc:8443",
            "credentialsSecretRef": {"name": "kcmail-admin"},
            "tls": {"caSecretRef": {"name": "keycloak-ca"}},
        },
    }


def _cluster_keycloak_connection(namespace: str) -> dict[str, Any]:
    # Cluster-scoped: named after the test's namespace so that tests never share an object.
    return {
        "apiVersion": _API_VERSION, "kind": "ClusterKeycloakConnection",
        "metadata": {"name": namespace},
        "spec": {
            "url": "https://sso.example.com/auth",
            "credentialsSecretRef": {"name": "kcmail-admin", "namespace": "kcmail-system"},
            "tls": {"caSecretRef": {"name": "keycloak-ca", "namespace": "kcmail-system"}},
            "allowedNamespaces": {
                "matchLabels": {"kcmail.io/tenant": "true"},
                "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In",
                                      "values": [namespace]}],
            },
            "allowedRealms": ["tenant-*", "acme"],
        },
    }


_VALID = {
    "MailConfig": _mail_config,
    "KeycloakConnection": _keycloak_connection,
    "ClusterKeycloakConnection": _cluster_keycloak_connection,
}


def _edited(obj: dict[str, Any], edits: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with each dotted path under ``spec`` set to its value, or removed for ``_DROP``."""
    obj = copy.deepcopy(obj)
    for path, value in edits.items():
        *parents, last = path.split(".")
        node = obj["spec"]
        for key in parents:
            node = node.setdefault(key, {})
        if value is _DROP:
            del node[last]
        else:
            node[last] = value
    return obj


def _apply(kubectl, obj: dict[str, Any]):
    return kubectl("apply", "-f", "-", stdin=json.dumps(obj))


def _get(kubectl, obj: dict[str, Any]) -> dict[str, Any]:
    resource = f"{obj['kind'].lower()}.{_API_VERSION.split('/')[0]}/{obj['metadata']['name']}"
    args = ["get", resource, "-o", "json"]
    if "namespace" in obj["metadata"]:
        args += ["-n", obj["metadata"]["namespace"]]
    result = kubectl(*args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


_TOKEN_URL = "auth.xoauth2.tokenURL"
_BASIC = {"passwordSecretRef": {"name": "acme-smtp"}}
_GOOGLE = {"keySecretRef": {"name": "gmail-key"}}
_CONNECTIONS = ("KeycloakConnection", "ClusterKeycloakConnection")

# (kind, edits, the words the API server must answer with). Every CEL rule of the CRDs has at least
# one case (checked by test_every_cel_rule_has_a_breaking_case); schema enums and bounds have theirs.
_BREAKING = [
    # MailConfig: the auth sub-object matching auth.type, and nothing else
    pytest.param("MailConfig", {"auth.xoauth2": _DROP},
                 "spec.auth.xoauth2: Required value: auth.xoauth2 is required when auth.type is XOAUTH2",
                 id="xoauth2-missing"),
    pytest.param("MailConfig", {"auth.type": "Basic", "auth.basic": _BASIC},
                 "spec.auth.xoauth2: Forbidden: auth.xoauth2 is allowed only when auth.type is XOAUTH2; "
                 "remove it or set auth.type to XOAUTH2", id="xoauth2-with-basic"),
    pytest.param("MailConfig", {"auth.type": "Basic", "auth.xoauth2": _DROP},
                 "spec.auth.basic: Required value: auth.basic is required when auth.type is Basic",
                 id="basic-missing"),
    pytest.param("MailConfig", {"auth.basic": _BASIC},
                 "spec.auth.basic: Forbidden: auth.basic is allowed only when auth.type is Basic; "
                 "remove it or set auth.type to Basic", id="basic-with-xoauth2"),
    pytest.param("MailConfig", {"auth.username": _DROP},
                 "spec.auth.username: Required value: auth.username is required when auth.type is XOAUTH2 "
                 "or Basic", id="username-missing-xoauth2"),
    pytest.param("MailConfig", {"auth.type": "Basic", "auth.xoauth2": _DROP, "auth.basic": _BASIC,
                                "auth.username": _DROP},
                 "spec.auth.username: Required value: auth.username is required when auth.type is XOAUTH2 "
                 "or Basic", id="username-missing-basic"),
    pytest.param("MailConfig", {"auth.type": "None", "auth.xoauth2": _DROP},
                 "spec.auth.username: Forbidden: auth.username is used only by XOAUTH2 and Basic; remove it "
                 "when auth.type is None", id="username-with-none"),
    pytest.param("MailConfig", {"auth.type": "OAuth2"},
                 'spec.auth.type: Unsupported value: "OAuth2": supported values: "XOAUTH2", "Basic", "None"',
                 id="auth-type-enum"),
    # MailConfig: the token URL
    pytest.param("MailConfig", {_TOKEN_URL: "http://login.example.com/token"},
                 "auth.xoauth2.tokenURL must use https://; http:// is accepted only for a loopback host "
                 "(localhost, 127.0.0.1, [::1])", id="token-url-http-remote"),
    pytest.param("MailConfig", {_TOKEN_URL: "http://127.0.0.2/token"},
                 "auth.xoauth2.tokenURL must use https://; http:// is accepted only for a loopback host "
                 "(localhost, 127.0.0.1, [::1])", id="token-url-http-other-local-address"),
    pytest.param("MailConfig", {_TOKEN_URL: "login.example.com/token"},
                 "auth.xoauth2.tokenURL must be an absolute https:// URL, e.g. "
                 "https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token", id="token-url-no-scheme"),
    pytest.param("MailConfig", {_TOKEN_URL: "/oauth2/token"},
                 "auth.xoauth2.tokenURL must be an absolute https:// URL", id="token-url-path-only"),
    pytest.param("MailConfig", {_TOKEN_URL: "ftp://login.example.com/token"},
                 "auth.xoauth2.tokenURL must be an absolute https:// URL", id="token-url-ftp"),
    pytest.param("MailConfig", {"auth.xoauth2.tokenURL": _DROP},
                 "spec.auth.xoauth2: Required value: auth.xoauth2 needs tokenURL and clientSecretRef, or "
                 "googleServiceAccount", id="token-url-missing"),
    pytest.param("MailConfig", {"auth.xoauth2.clientSecretRef": _DROP},
                 "spec.auth.xoauth2: Required value: auth.xoauth2 needs tokenURL and clientSecretRef, or "
                 "googleServiceAccount", id="client-secret-ref-missing"),
    # MailConfig: a Google service account, through kcmail's token bridge
    pytest.param("MailConfig", {"auth.xoauth2.googleServiceAccount": _GOOGLE},
                 "spec.auth.xoauth2: Forbidden: auth.xoauth2.googleServiceAccount goes without tokenURL and "
                 "clientSecretRef: kcmail's token bridge is the token endpoint, and kcmail makes the credentials "
                 "Keycloak presents to it", id="google-with-token-url"),
    pytest.param("MailConfig", {"auth.xoauth2": {"googleServiceAccount": _GOOGLE, "scope": "openid"}},
                 "auth.xoauth2.scope must be https://mail.google.com/ (or left out) with googleServiceAccount",
                 id="google-scope"),
    pytest.param("MailConfig", {"auth.xoauth2": {"googleServiceAccount": _GOOGLE}, "auth.username": "no-reply"},
                 "auth.username must be the Workspace mailbox (an address) with "
                 "auth.xoauth2.googleServiceAccount", id="google-username-not-an-address"),
    # MailConfig: probe
    pytest.param("MailConfig", {"probe.smtp": "Send"},
                 "spec.probe.recipient: Required value: probe.recipient is required when probe.smtp is Send",
                 id="probe-send-without-recipient"),
    pytest.param("MailConfig", {"probe.smtp": "Send", "probe.recipient": "mail-probe"},
                 "probe.recipient must be an email address such as mail-probe@acme.example",
                 id="probe-recipient-not-an-address"),
    pytest.param("MailConfig", {"probe.smtp": "off"},
                 'spec.probe.smtp: Unsupported value: "off": supported values: "Authenticate", "Send", "Off"',
                 id="probe-smtp-enum"),
    # MailConfig: SMTP server
    pytest.param("MailConfig", {"smtp.port": 0},
                 "spec.smtp.port in body should be greater than or equal to 1", id="port-zero"),
    pytest.param("MailConfig", {"smtp.port": 65536},
                 "spec.smtp.port in body should be less than or equal to 65535", id="port-too-high"),
    pytest.param("MailConfig", {"smtp.security": "TLS"},
                 'spec.smtp.security: Unsupported value: "TLS": supported values: "StartTLS", "SSL", "None"',
                 id="security-enum"),
    pytest.param("MailConfig", {"smtp.host": "smtp://smtp.office365.com"},
                 "smtp.host must be a host name or an IP address, without scheme, port or path "
                 "(e.g. smtp.office365.com)", id="host-with-scheme"),
    pytest.param("MailConfig", {"smtp.host": "smtp.office365.com:587"},
                 "smtp.host must be a host name or an IP address, without scheme, port or path",
                 id="host-with-port"),
    pytest.param("MailConfig", {"smtp.host": _DROP}, "spec.smtp.host: Required value", id="host-missing"),
    pytest.param("MailConfig", {"smtp.timeouts.connect": "500ms"},
                 "smtp.timeouts.connect must be between 1s and 10m", id="connect-timeout-too-short"),
    pytest.param("MailConfig", {"smtp.timeouts.read": "11m"},
                 "smtp.timeouts.read must be between 1s and 10m", id="read-timeout-too-long"),
    pytest.param("MailConfig", {"smtp.timeouts.write": "1h"},
                 "smtp.timeouts.write must be between 1s and 10m", id="write-timeout-too-long"),
    pytest.param("MailConfig", {"smtp.timeouts.connect": "ten seconds"},
                 "spec.smtp.timeouts.connect in body should match '^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$'",
                 id="timeout-not-a-duration"),
    # MailConfig: sender
    pytest.param("MailConfig", {"sender.from": "no-reply"},
                 "sender.from must be an email address such as no-reply@acme.example",
                 id="from-not-an-address"),
    pytest.param("MailConfig", {"sender.replyTo": "support at acme.example"},
                 "sender.replyTo must be an email address such as support@acme.example",
                 id="reply-to-not-an-address"),
    pytest.param("MailConfig", {"sender.envelopeFrom": "bounces@"},
                 "sender.envelopeFrom must be an email address such as bounces@acme.example",
                 id="envelope-from-not-an-address"),
    pytest.param("MailConfig", {"sender.from": _DROP}, "spec.sender.from: Required value", id="from-missing"),
    # MailConfig: the rest of spec
    pytest.param("MailConfig", {"interval": "10s"}, "interval must be between 30s and 24h",
                 id="interval-too-short"),
    pytest.param("MailConfig", {"interval": "25h"}, "interval must be between 30s and 24h",
                 id="interval-too-long"),
    pytest.param("MailConfig", {"interval": "10"},
                 "spec.interval in body should match '^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$'",
                 id="interval-not-a-duration"),
    pytest.param("MailConfig", {"deletionPolicy": "Delete"},
                 'spec.deletionPolicy: Unsupported value: "Delete": supported values: "Retain", "Clear"',
                 id="deletion-policy-enum"),
    pytest.param("MailConfig", {"connectionRef.kind": "Secret"},
                 'spec.connectionRef.kind: Unsupported value: "Secret": supported values: '
                 '"KeycloakConnection", "ClusterKeycloakConnection"', id="connection-kind-enum"),
    pytest.param("MailConfig", {"suspend": "yes"},
                 'spec.suspend: Invalid value: "string": spec.suspend in body must be of type boolean',
                 id="suspend-not-a-boolean"),
    pytest.param("MailConfig", {"realm": _DROP}, "spec.realm: Required value", id="realm-missing"),
    pytest.param("MailConfig", {"realm": ""}, "spec.realm in body should be at least 1 chars long",
                 id="realm-empty"),
    pytest.param("MailConfig", {"auth": _DROP}, "spec.auth: Required value", id="auth-missing"),
    # Both connection kinds
    *(pytest.param(kind, edits, message, id=f"{kind}-{case}")
      for kind in _CONNECTIONS for case, edits, message in (
        ("url-no-scheme", {"url": "keycloak.identity.svc:8443"},
         "url must be an absolute http:// or https:// URL, e.g. https://keycloak.identity.svc:8443"),
        ("url-ftp", {"url": "ftp://keycloak.identity.svc"},
         "url must be an absolute http:// or https:// URL"),
        ("url-missing", {"url": _DROP}, "spec.url: Required value"),
        ("ca-and-skip-verify", {"tls.insecureSkipVerify": True},
         "tls.caSecretRef has no effect when tls.insecureSkipVerify is true; remove one of them"),
        ("credentials-missing", {"credentialsSecretRef": _DROP}, "spec.credentialsSecretRef: Required value"),
        ("allowed-realms-empty", {"allowedRealms": []},
         "spec.allowedRealms in body should have at least 1 items"),
        ("allowed-realms-duplicate", {"allowedRealms": ["tenant-*", "tenant-*"]},
         'spec.allowedRealms[1]: Duplicate value: "tenant-*"'),
    )),
    # KeycloakConnection: its Secrets live in its own namespace, and it serves only that namespace
    pytest.param("KeycloakConnection", {"credentialsSecretRef.namespace": "kcmail-system"},
                 'strict decoding error: unknown field "spec.credentialsSecretRef.namespace"',
                 id="namespaced-credentials-namespace"),
    pytest.param("KeycloakConnection", {"tls.caSecretRef.namespace": "kcmail-system"},
                 'strict decoding error: unknown field "spec.tls.caSecretRef.namespace"',
                 id="namespaced-ca-namespace"),
    pytest.param("KeycloakConnection", {"allowedNamespaces": {"matchLabels": {"team": "a"}}},
                 'strict decoding error: unknown field "spec.allowedNamespaces"',
                 id="namespaced-allowed-namespaces"),
    # ClusterKeycloakConnection: Secrets need a namespace; allowedNamespaces is a label selector
    pytest.param("ClusterKeycloakConnection", {"credentialsSecretRef.namespace": _DROP},
                 "spec.credentialsSecretRef.namespace: Required value", id="cluster-credentials-namespace"),
    pytest.param("ClusterKeycloakConnection", {"tls.caSecretRef.namespace": _DROP},
                 "spec.tls.caSecretRef.namespace: Required value", id="cluster-ca-namespace"),
    pytest.param("ClusterKeycloakConnection",
                 {"allowedNamespaces.matchExpressions": [{"key": "team", "operator": "In"}]},
                 "allowedNamespaces.matchExpressions: values must be non-empty for In and NotIn and empty "
                 "for Exists and DoesNotExist", id="selector-in-without-values"),
    pytest.param("ClusterKeycloakConnection",
                 {"allowedNamespaces.matchExpressions": [{"key": "team", "operator": "Exists",
                                                          "values": ["a"]}]},
                 "allowedNamespaces.matchExpressions: values must be non-empty for In and NotIn and empty "
                 "for Exists and DoesNotExist", id="selector-exists-with-values"),
    pytest.param("ClusterKeycloakConnection",
                 {"allowedNamespaces.matchExpressions": [{"key": "team", "operator": "Equals",
                                                          "values": ["a"]}]},
                 'Unsupported value: "Equals": supported values: "In", "NotIn", "Exists", "DoesNotExist"',
                 id="selector-operator-enum"),
]


_REALM_RULE = ("must be one Keycloak realm name, not . or .., without / \\ ? # % ; or control characters and "
               "without spaces at either end")
_CONTROL = "must not contain control characters (CR, LF, NUL and the like)"
# Every free-text field refuses control characters, each with a message naming it (MailConfig field, value).
_CONTROL_FIELDS = {
    "MailConfig": [("connectionRef.name", "connectionRef.name"), ("smtp.host", "smtp.host"),
                   ("sender.from", "sender.from"),
                   ("sender.fromDisplayName", "sender.fromDisplayName"), ("sender.replyTo", "sender.replyTo"),
                   ("sender.replyToDisplayName", "sender.replyToDisplayName"),
                   ("sender.envelopeFrom", "sender.envelopeFrom"), ("auth.username", "auth.username"),
                   (_TOKEN_URL, _TOKEN_URL), ("auth.xoauth2.scope", "auth.xoauth2.scope"),
                   ("auth.xoauth2.clientSecretRef.name", "auth.xoauth2.clientSecretRef.name"),
                   ("auth.xoauth2.clientSecretRef.clientIDKey", "auth.xoauth2.clientSecretRef.clientIDKey"),
                   ("auth.xoauth2.clientSecretRef.clientSecretKey", "auth.xoauth2.clientSecretRef.clientSecretKey"),
                   ("probe.recipient", "probe.recipient")],
    "KeycloakConnection": [("url", "url"), ("credentialsSecretRef.name", "credentialsSecretRef.name"),
                           ("tls.caSecretRef.name", "tls.caSecretRef.name"),
                           ("tls.caSecretRef.key", "tls.caSecretRef.key")],
    "ClusterKeycloakConnection": [("url", "url"), ("credentialsSecretRef.name", "credentialsSecretRef.name"),
                                  ("credentialsSecretRef.namespace", "credentialsSecretRef.namespace"),
                                  ("tls.caSecretRef.name", "tls.caSecretRef.name"),
                                  ("tls.caSecretRef.namespace", "tls.caSecretRef.namespace"),
                                  ("tls.caSecretRef.key", "tls.caSecretRef.key")],
}


def _with_control(path: str) -> str:
    values = {"sender.from": "no-reply@acme.example\r\nBcc: all@acme.example", "sender.replyTo": "a@b\x00",
              "sender.envelopeFrom": "a@b\u2028", "probe.recipient": "a@b\x85", "url": "https://kc\n.example",
              _TOKEN_URL: "https://login.example/token\r\nX: y"}
    return values.get(path, "value\r\nInjected: header")


_BREAKING += [
    pytest.param(kind, {path: _with_control(path), **({"probe.smtp": "Send"} if path == "probe.recipient" else {})},
                 f"{field} {_CONTROL}", id=f"{kind}-{path}-control")
    for kind, cases in _CONTROL_FIELDS.items() for path, field in cases
] + [
    pytest.param("MailConfig", {"auth.xoauth2": {"googleServiceAccount": {"keySecretRef": {"name": "gmail\nkey"}}}},
                 f"auth.xoauth2.googleServiceAccount.keySecretRef.name {_CONTROL}", id="google-key-name-control"),
    pytest.param("MailConfig", {"auth.xoauth2": {"googleServiceAccount": {"keySecretRef": {"name": "gmail-key",
                                                                                          "key": "key\r.json"}}}},
                 f"auth.xoauth2.googleServiceAccount.keySecretRef.key {_CONTROL}", id="google-key-key-control"),
    pytest.param("MailConfig", {"auth.type": "Basic", "auth.xoauth2": _DROP,
                                "auth.basic": {"passwordSecretRef": {"name": "smtp\n", "key": "password"}}},
                 f"auth.basic.passwordSecretRef.name {_CONTROL}", id="basic-secret-name-control"),
    pytest.param("MailConfig", {"auth.type": "Basic", "auth.xoauth2": _DROP,
                                "auth.basic": {"passwordSecretRef": {"name": "smtp", "key": "pass\tword"}}},
                 f"auth.basic.passwordSecretRef.key {_CONTROL}", id="basic-secret-key-control"),
    *(pytest.param("MailConfig", {"realm": realm}, f"realm {_REALM_RULE}", id=f"realm-{label}")
      for label, realm in (("traversal", "fzr/../master"), ("dot-dot", ".."), ("dot", "."),
                           ("encoded-slash", "fzr%2F..%2Fmaster"), ("query", "fz-06?x=1"), ("fragment", "acme#x"),
                           ("matrix", "acme;x=1"), ("backslash", "fzr\\..\\master"), ("newline", "acme\n"),
                           ("leading-space", " acme"))),
    *(pytest.param(kind, {"adminRealm": "master/../other"}, f"adminRealm {_REALM_RULE}", id=f"{kind}-admin-realm")
      for kind in _CONNECTIONS),
    *(pytest.param(kind, {"allowedRealms": ["fzr/*"]},
                   "allowedRealms patterns match realm names, so they hold no / \\ # % ; or control characters",
                   id=f"{kind}-allowed-realms-slash") for kind in _CONNECTIONS),
    pytest.param("ClusterKeycloakConnection", {"allowedNamespaces.matchLabels": {"team": "a\nb"}},
                 f"allowedNamespaces.matchLabels values {_CONTROL}", id="selector-label-value-control"),
    pytest.param("ClusterKeycloakConnection",
                 {"allowedNamespaces.matchExpressions": [{"key": "te\nam", "operator": "Exists"}]},
                 f"allowedNamespaces.matchExpressions key {_CONTROL}", id="selector-key-control"),
    pytest.param("ClusterKeycloakConnection",
                 {"allowedNamespaces.matchExpressions": [{"key": "team", "operator": "In", "values": ["a\rb"]}]},
                 f"allowedNamespaces.matchExpressions values {_CONTROL}", id="selector-values-control"),
    # What Keycloak stores in a realm's smtpServer: 255 characters a value.
    *(pytest.param("MailConfig", {path: value}, f"spec.{path}: Too long: may not be more than 255",
                   id=f"{path}-too-long")
      for path, value in (("sender.fromDisplayName", "A" * 256), ("sender.replyToDisplayName", "R" * 256),
                          ("auth.username", "u" * 250 + "@acme.example"), ("auth.xoauth2.scope", "s" * 256),
                          (_TOKEN_URL, "https://login.example/" + "t" * 240))),
]


def test_every_cel_rule_has_a_breaking_case():
    expected = " ".join(param.values[2] for param in _BREAKING)
    for crd in load_crds():
        _, schema = stored_schema(crd)
        for rule in iter_rules(schema):
            if rule.rule == "self == oldSelf":
                continue  # transition rules: test_realm_is_immutable
            assert rule.message in expected, f"{crd['spec']['names']['kind']} {rule.path}: {rule.message}"


@pytest.mark.parametrize(("kind", "edits", "message"), _BREAKING)
def test_a_breaking_object_is_refused_with_its_message(kubectl, namespace, kind, edits, message):
    refused = _apply(kubectl, _edited(_VALID[kind](namespace), edits))
    assert refused.returncode != 0, f"accepted: {edits}"
    assert message in refused.stderr


def test_a_minimal_mail_config_gets_every_default(kubectl, namespace):
    applied = _apply(kubectl, _mail_config(namespace))
    assert applied.returncode == 0, applied.stderr

    spec = _get(kubectl, _mail_config(namespace))["spec"]
    assert spec["smtp"] == {"host": "smtp.office365.com", "port": 587, "security": "StartTLS",
                            "timeouts": {"connect": "10s", "read": "10s", "write": "10s"},
                            "allowUTF8": False, "debug": False}
    assert spec["auth"]["type"] == "XOAUTH2"
    assert spec["auth"]["xoauth2"]["clientSecretRef"] == {
        "name": "acme-smtp-oauth", "clientIDKey": "client-id", "clientSecretKey": "client-secret"}
    assert spec["probe"] == {"smtp": "Authenticate"}
    assert spec["interval"] == "10m"
    assert spec["suspend"] is False
    assert spec["deletionPolicy"] == "Retain"


def test_basic_auth_defaults_the_password_key(kubectl, namespace):
    basic = _edited(_mail_config(namespace), {"auth.type": "Basic", "auth.xoauth2": _DROP,
                                              "auth.basic": {"passwordSecretRef": {"name": "acme-smtp"}}})
    applied = _apply(kubectl, basic)
    assert applied.returncode == 0, applied.stderr
    assert _get(kubectl, basic)["spec"]["auth"]["basic"] == {"passwordSecretRef": {"name": "acme-smtp",
                                                                                   "key": "password"}}


@pytest.mark.parametrize("edits", [
    pytest.param({_TOKEN_URL: "http://127.0.0.1:8080/realms/issuer/protocol/openid-connect/token"},
                 id="http-ipv4"),
    pytest.param({_TOKEN_URL: "http://localhost:8080/token"}, id="http-localhost"),
    pytest.param({_TOKEN_URL: "http://[::1]:8080/token"}, id="http-ipv6"),
    pytest.param({"smtp.host": "192.0.2.25"}, id="host-ipv4"),
    pytest.param({"smtp.host": "::1"}, id="host-ipv6"),
    pytest.param({"smtp.port": 465, "smtp.security": "SSL"}, id="ssl"),
    pytest.param({"auth.type": "None", "auth.xoauth2": _DROP, "auth.username": _DROP}, id="no-auth"),
    pytest.param({"probe.smtp": "Send", "probe.recipient": "mail-probe@acme.example"}, id="probe-send"),
    pytest.param({"probe.smtp": "Off"}, id="probe-off"),
    pytest.param({"interval": "30s", "smtp.timeouts": {"connect": "1s", "read": "10m", "write": "1m30s"}},
                 id="duration-bounds"),
    pytest.param({"interval": "24h"}, id="interval-upper-bound"),
    pytest.param({"sender.replyTo": "support@acme.example", "sender.envelopeFrom": "bounces@acme.example",
                  "sender.fromDisplayName": "Acme", "sender.replyToDisplayName": "Acme Support"},
                 id="sender"),
    pytest.param({"connectionRef.kind": "KeycloakConnection", "deletionPolicy": "Clear", "suspend": True},
                 id="namespaced-connection"),
])
def test_a_valid_variant_is_accepted(kubectl, namespace, edits):
    applied = _apply(kubectl, _edited(_mail_config(namespace), edits))
    assert applied.returncode == 0, applied.stderr


def test_realm_is_immutable(kubectl, namespace):
    original = _mail_config(namespace)
    assert _apply(kubectl, original).returncode == 0

    moved = _apply(kubectl, _edited(original, {"realm": "globex"}))
    assert moved.returncode != 0
    assert ("spec.realm: Invalid value: \"globex\": realm is immutable; create a new MailConfig to manage "
            "another realm") in moved.stderr
    other_change = _apply(kubectl, _edited(original, {"smtp.port": 2525}))
    assert other_change.returncode == 0, other_change.stderr


def test_keycloak_connection_gets_its_defaults(kubectl, namespace):
    connection = _edited(_keycloak_connection(namespace), {"tls": _DROP})
    applied = _apply(kubectl, connection)
    assert applied.returncode == 0, applied.stderr

    spec = _get(kubectl, connection)["spec"]
    assert spec["adminRealm"] == "master"
    assert spec["tls"] == {"insecureSkipVerify": False}


def test_keycloak_connection_defaults_the_ca_key(kubectl, namespace):
    connection = _keycloak_connection(namespace)
    applied = _apply(kubectl, connection)
    assert applied.returncode == 0, applied.stderr
    assert _get(kubectl, connection)["spec"]["tls"] == {
        "caSecretRef": {"name": "keycloak-ca", "key": "ca.crt"}, "insecureSkipVerify": False}


def test_cluster_keycloak_connection_accepts_a_label_selector(kubectl, namespace):
    connection = _cluster_keycloak_connection(namespace)
    applied = _apply(kubectl, connection)
    assert applied.returncode == 0, applied.stderr

    spec = _get(kubectl, connection)["spec"]
    assert spec["allowedNamespaces"] == connection["spec"]["allowedNamespaces"]
    assert spec["tls"]["caSecretRef"] == {"name": "keycloak-ca", "namespace": "kcmail-system",
                                          "key": "ca.crt"}
    assert spec["adminRealm"] == "master"


@pytest.mark.parametrize("kind", _CONNECTIONS)
def test_insecure_skip_verify_without_a_ca_is_accepted(kubectl, namespace, kind):
    connection = _edited(_VALID[kind](namespace), {"tls": {"insecureSkipVerify": True},
                                                   "url": "http://127.0.0.1:8080"})
    applied = _apply(kubectl, connection)
    assert applied.returncode == 0, applied.stderr


def _ready(status: str, reason: str) -> dict[str, Any]:
    return {"conditions": [{"type": "Ready", "status": status, "reason": reason, "message": "checked",
                            "observedGeneration": 1, "lastTransitionTime": "2026-11-28T00:00:00Z"}],
            "observedGeneration": 1}


def _patch_status(kubectl, resource: str, namespace: str | None, status: dict[str, Any]):
    args = ["patch", resource, "--subresource=status", "--type=merge", "-p", json.dumps({"status": status})]
    return kubectl(*args, *(["-n", namespace] if namespace else []))


def test_mail_config_columns_show_realm_auth_and_ready(kubectl, namespace):
    assert _apply(kubectl, _mail_config(namespace)).returncode == 0
    status = {**_ready("False", "SecretNotFound"), "keycloakVersion": "26.7.3",
              "appliedSecretVersion": "0b7c/42", "lastAppliedTime": "2026-11-28T00:00:00Z",
              "lastProbeTime": "2026-11-28T00:00:00Z", "lastSuccessfulProbeTime": "2026-11-28T00:00:00Z",
              "tokenExpiresAt": "2026-11-28T01:00:00Z", "lastHandledRequestedAt": "2026-11-28T00:00:00Z"}
    patched = _patch_status(kubectl, "mailconfig/acme", namespace, status)
    assert patched.returncode == 0, patched.stderr

    listed = kubectl("get", "mc", "-n", namespace)
    assert listed.returncode == 0, listed.stderr
    header, row = (line.split() for line in listed.stdout.splitlines())
    assert header == ["NAME", "REALM", "AUTH", "READY", "REASON", "AGE"]
    assert row[:5] == ["acme", "acme", "XOAUTH2", "False", "SecretNotFound"]
    assert _get(kubectl, _mail_config(namespace))["status"] == status


def test_connection_columns_show_url_version_and_ready(kubectl, namespace):
    assert _apply(kubectl, _keycloak_connection(namespace)).returncode == 0
    status = {**_ready("False", "KeycloakUnreachable"), "keycloakVersion": "26.7.3",
              "tlsVerification": "Verified"}
    patched = _patch_status(kubectl, "keycloakconnection/main", namespace, status)
    assert patched.returncode == 0, patched.stderr

    listed = kubectl("get", "kcc", "-n", namespace, "-o", "wide")
    assert listed.returncode == 0, listed.stderr
    header, row = (line.split() for line in listed.stdout.splitlines())
    assert header == ["NAME", "URL", "VERSION", "READY", "REASON", "TLS", "AGE"]
    assert row[:6] == ["main", "https://keycloak.identity.svc:8443", "26.7.3", "False", "KeycloakUnreachable",
                       "Verified"]


def test_a_condition_reason_must_be_one_word(kubectl, namespace):
    assert _apply(kubectl, _mail_config(namespace)).returncode == 0
    patched = _patch_status(kubectl, "mailconfig/acme", namespace, _ready("False", "Secret not found"))
    assert patched.returncode != 0
    assert 'status.conditions[0].reason: Invalid value: "Secret not found"' in patched.stderr


def test_the_kcmail_category_lists_every_kind(kubectl, namespace):
    assert _apply(kubectl, _mail_config(namespace)).returncode == 0
    assert _apply(kubectl, _keycloak_connection(namespace)).returncode == 0
    assert _apply(kubectl, _cluster_keycloak_connection(namespace)).returncode == 0

    listed = kubectl("get", "kcmail", "-n", namespace, "-o", "name")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) >= {"mailconfig.kcmail.io/acme", "keycloakconnection.kcmail.io/main",
                                          f"clusterkeycloakconnection.kcmail.io/{namespace}"}
    for short_name in ("mc", "mailconf", "kcc"):
        assert kubectl("get", short_name, "-n", namespace).returncode == 0
    assert kubectl("get", "ckcc", namespace).returncode == 0


# Names built from what path attacks are made of, and ordinary ones: the API server's rule and kcmail's own
# check (spec.realm_name_problem, which the operator applies to objects stored before the rule) agree.
_NAME_ATOMS = ["/", "\\", ".", "..", "%", "%2e", "?", "#", ";", " ", "\t", "\n", "\x01", "\x85", "\u2028", "\uff0f",
               "master", "acme", "a", "-", "_", "~", "ä", "@", ":"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(realm=st.lists(st.sampled_from(_NAME_ATOMS), min_size=1, max_size=6).map("".join))
def test_the_api_server_and_kcmail_judge_realm_names_alike(kubectl, namespace, realm):
    obj = _edited(_mail_config(namespace), {"realm": realm})
    result = kubectl("create", "--dry-run=server", "-f", "-", stdin=json.dumps(obj))
    assert (result.returncode == 0) == (realm_name_problem(realm) is None), (realm, result.stderr)
