"""The local API server behaves like a real cluster's: CEL validation, RBAC, the stamped version."""

from __future__ import annotations

import json
import uuid

import pytest

from kcmail.devenv.kube import write_kubeconfig

pytestmark = pytest.mark.integration

_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.smoke.kcmail.io}
spec:
  group: smoke.kcmail.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-validations:
            - rule: "self.port >= 1 && self.port <= 65535"
              message: "port must be between 1 and 65535"
            properties:
              port: {type: integer}
"""


def _widget(namespace: str, port: int) -> str:
    return json.dumps({"apiVersion": "smoke.kcmail.io/v1", "kind": "Widget",
                       "metadata": {"name": f"w{port}", "namespace": namespace}, "spec": {"port": port}})


def _wait_established(kubectl, crd: str) -> None:
    result = kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    assert result.returncode == 0, result.stderr


def test_version_is_the_stamped_release(kubectl, devenv):
    result = kubectl("version", "-o", "json")
    assert result.returncode == 0, result.stderr
    server = json.loads(result.stdout)["serverVersion"]
    assert server["gitVersion"] == f"v{devenv.kubernetes_version}"


def test_cel_rule_rejects_a_breaking_object_with_its_message(kubectl):
    applied = kubectl("apply", "-f", "-", stdin=_CRD)
    assert applied.returncode == 0, applied.stderr
    _wait_established(kubectl, "widgets.smoke.kcmail.io")
    namespace = f"smoke-{uuid.uuid4().hex[:8]}"
    assert kubectl("create", "namespace", namespace).returncode == 0

    good = kubectl("apply", "-f", "-", stdin=_widget(namespace, 587))
    assert good.returncode == 0, good.stderr

    bad = kubectl("apply", "-f", "-", stdin=_widget(namespace, 70000))
    assert bad.returncode != 0
    assert "port must be between 1 and 65535" in bad.stderr


def test_rbac_denies_a_user_without_rights(kubectl, devenv, tmp_path):
    from kcmail.devenv.certs import CertificateAuthority

    nobody = CertificateAuthority(devenv.ca_file.parent).issue("nobody", "nobody", client=True)
    config = write_kubeconfig(tmp_path / "nobody.kubeconfig", api_url=devenv.kube_api_url,
                              ca_file=devenv.ca_file, user="nobody", cert=nobody)

    denied = kubectl("get", "secrets", "-n", "default", kubeconfig=config)
    assert denied.returncode != 0
    assert 'User "nobody" cannot list resource "secrets"' in denied.stderr

    allowed = kubectl("auth", "can-i", "list", "secrets", "--as=nobody")
    assert allowed.stdout.strip() == "no"
    admin = kubectl("auth", "can-i", "list", "secrets")
    assert admin.stdout.strip() == "yes"


def test_kubectl_keeps_its_discovery_cache_in_the_state_dir(kubectl, devenv, tmp_path, monkeypatch):
    # A run whose home was the checkout once committed 26 cache files under .kube/ at the top level.
    from kcmail.devenv import operator_env

    monkeypatch.setenv("HOME", str(tmp_path))
    for result in (kubectl("api-resources", "--api-group=apiextensions.k8s.io"),
                   operator_env.kubectl(devenv, "api-resources", "--api-group=apiextensions.k8s.io")):
        assert result.returncode == 0, result.stderr
        assert "customresourcedefinitions" in result.stdout
    assert not (tmp_path / ".kube").exists()
    assert any(devenv.kube_cache.rglob("serverresources.json"))
