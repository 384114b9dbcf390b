"""What a GitOps tool sees: every example applies with client-side and server-side apply, and once the
operator has made a MailConfig Ready, applying the same manifest again changes nothing. kcmail adds only
its own bookkeeping (the kcmail.io/finalizer, kcmail.io/ annotations, status), so Argo CD finds no drift,
and Argo CD's own code reads the health of the live objects in each state as the docs say."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from kcmail.devenv import argocd, components, operator_env, versions
from kcmail.devenv.processes import free_port

pytestmark = pytest.mark.e2e

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
APPLY = {
    # kubectl's classic apply, and Argo CD's default: a three-way merge against last-applied-configuration.
    "client-side": ["apply"],
    # Server-side apply under Argo CD's field manager (ServerSideApply=true).
    "server-side": ["apply", "--server-side", "--field-manager=argocd-controller"],
}
DIFF = {"client-side": ["diff"], "server-side": ["diff", "--server-side", "--field-manager=argocd-controller"]}
FINALIZER = "kcmail.io/finalizer"


@pytest.mark.parametrize("mode", list(APPLY))
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.stem)
def test_every_example_applies_cleanly_in_both_apply_modes(example, mode, kcmail_installed):
    # The examples name servers outside this machine (Microsoft 365, sso.globex.example): applied for real,
    # the operator would connect to them. The server validates and admits them without storing them.
    env = kcmail_installed
    docs = [doc for doc in yaml.safe_load_all(example.read_text()) if doc]
    for namespace in {doc["metadata"]["namespace"] for doc in docs if doc["metadata"].get("namespace")}:
        operator_env.apply(env, operator_env.namespace(namespace))
    for doc in docs:
        # The environment has its own ClusterKeycloakConnection "main" and Secret kcmail-system/kcmail-admin;
        # an example of the same name is checked under a name of its own, not as an edit of those.
        meta = doc["metadata"]
        where = ["-n", meta["namespace"]] if meta.get("namespace") else []
        if operator_env.kubectl(env, "get", doc["kind"].lower(), meta["name"], *where).returncode == 0:
            meta["name"] = f"{meta['name']}-{uuid.uuid4().hex[:6]}"
    result = operator_env.kubectl(env, *APPLY[mode], "--dry-run=server", "-f", "-",
                                  stdin="\n".join(json.dumps(doc) for doc in docs))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(server dry run)") == len(docs)
    assert result.stderr == ""


def _paths(fields: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The leaf paths of a managedFields fieldsV1 tree."""
    found = []
    for key, child in fields.items():
        if key == ".":
            continue
        if child:
            found += _paths(child, (*prefix, key))
        else:
            found.append((*prefix, key))
    return found


def _is_kcmail_bookkeeping(path: tuple[str, ...]) -> bool:
    if path[0] == "f:status":
        return True
    if path[:2] == ("f:metadata", "f:annotations"):
        return path[2].startswith("f:kcmail.io/")
    return path[:2] == ("f:metadata", "f:finalizers") and path[2] == f'v:"{FINALIZER}"'


def _settled(tenant, name: str) -> dict[str, Any]:
    """The MailConfig once two reads a second apart agree: no write of the operator in flight."""
    previous = tenant.get("mailconfig", name)
    for _ in range(30):
        time.sleep(1)
        current = tenant.get("mailconfig", name)
        if current["metadata"]["resourceVersion"] == previous["metadata"]["resourceVersion"]:
            return current
        previous = current
    raise AssertionError("the MailConfig kept changing for 30 s")


@pytest.mark.parametrize("mode", list(APPLY))
def test_reapplying_a_ready_mailconfig_changes_nothing(mode, operator, tenant, tmp_path):
    secret, mailconfig = tenant.secret(), tenant.mailconfig()
    manifest = tmp_path / "mail.yaml"
    manifest.write_text(yaml.safe_dump_all([secret, mailconfig]))
    first = tenant.kubectl(*APPLY[mode], "-f", str(manifest))
    assert first.returncode == 0, first.stderr
    tenant.wait_condition("True", "Delivering")
    before = _settled(tenant, "mail")
    secret_before = tenant.get("secret", "smtp-oauth")

    diff = tenant.kubectl(*DIFF[mode], "-f", str(manifest))
    assert (diff.returncode, diff.stdout) == (0, ""), diff.stdout + diff.stderr
    again = tenant.kubectl(*APPLY[mode], "-f", str(manifest))
    assert again.returncode == 0, again.stderr
    if mode == "client-side":
        # (kubectl reports a Secret written with stringData as "configured" every time; the server
        # stores nothing new, as its unchanged resourceVersion below shows.)
        assert "mailconfig.kcmail.io/mail unchanged" in again.stdout, again.stdout
    shown = tenant.kubectl("get", "mailconfig", "mail", "-o", "json", "--show-managed-fields")
    assert shown.returncode == 0, shown.stderr
    after = json.loads(shown.stdout)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert tenant.get("secret", "smtp-oauth")["metadata"]["resourceVersion"] == \
        secret_before["metadata"]["resourceVersion"]

    # kcmail never wrote the spec (the generation counts spec changes) nor a label.
    assert after["metadata"]["generation"] == 1
    assert after["metadata"].get("labels") is None
    assert after["metadata"]["finalizers"] == [FINALIZER]
    annotations = set(after["metadata"].get("annotations") or {}) - {"kubectl.kubernetes.io/last-applied-configuration"}
    # kopf's copy of the last handled spec is kept for Connections only: a MailConfig needs none.
    assert "kcmail.io/last-handled-configuration" not in annotations
    assert all(key.startswith("kcmail.io/") for key in annotations), annotations
    # Every field another manager owns is kcmail's bookkeeping; the spec belongs to the applier alone.
    appliers = {"kubectl-client-side-apply", "argocd-controller"}
    foreign = [(entry["manager"], path) for entry in after["metadata"]["managedFields"]
               if entry["manager"] not in appliers
               for path in _paths(entry.get("fieldsV1") or {}) if not _is_kcmail_bookkeeping(path)]
    assert foreign == [], json.dumps(after["metadata"]["managedFields"], indent=1)
    spec_owners = {entry["manager"] for entry in after["metadata"]["managedFields"]
                   if "f:spec" in (entry.get("fieldsV1") or {})}
    assert spec_owners
    assert spec_owners <= appliers


def _on_each_release(*objects: dict[str, Any]) -> dict[str, list[argocd.Health | None]]:
    """What each Argo CD release the tests build records for ``objects``."""
    return {version: argocd.evaluate(components.build_argocd_health_eval(version), objects)
            for version in versions.ARGOCD_CHOICES}


def test_argocd_health_checks_read_live_objects_as_healthy(operator, tenant):
    tenant.apply(tenant.secret(), tenant.mailconfig())
    ready = tenant.wait_condition("True", "Delivering")
    connection = json.loads(operator_env.kubectl(tenant.env, "get", "clusterkeycloakconnection",
                                                 operator_env.CONNECTION, "-o", "json").stdout)
    for version, (mail_health, connection_health) in _on_each_release(ready, connection).items():
        assert mail_health is not None, version
        assert mail_health.status == "Healthy", (version, mail_health)
        assert mail_health.message.startswith("Delivering: "), (version, mail_health)
        assert connection_health is not None, version
        assert connection_health.status == "Healthy", (version, connection_health)

    tenant.apply(tenant.mailconfig(suspend=True))
    suspended = tenant.wait_condition("False", "Suspended")
    paused = argocd.Health("Suspended", "spec.suspend is true: kcmail neither writes to Keycloak nor probes")
    assert _on_each_release(suspended) == {version: [paused] for version in versions.ARGOCD_CHOICES}


def test_argocd_shows_a_blocked_deletion_as_each_release_does(operator, tenant):
    # deletionPolicy Clear behind a connection of the test's own, whose Keycloak then goes away.
    own = {"kind": "KeycloakConnection", "name": "kc"}
    tenant.apply(*operator_env.keycloak_connection(tenant.env, tenant.namespace, "kc"), tenant.secret(),
                 tenant.mailconfig(connectionRef=own, deletionPolicy="Clear"))
    tenant.wait_condition("True")
    closed = {"spec": {"url": f"https://127.0.0.1:{free_port()}"}}
    assert tenant.kubectl("patch", "keycloakconnection", "kc", "--type=merge", "-p", json.dumps(closed)).returncode == 0
    tenant.wait_condition("False", "KeycloakUnreachable")
    assert tenant.kubectl("delete", "mailconfig", "mail", "--wait=false").returncode == 0
    blocked = tenant.wait_condition("False", "DeletionBlocked", timeout=30)
    reason = next(c for c in blocked["status"]["conditions"] if c["type"] == "Ready")

    assert _on_each_release(blocked) == {
        versions.ARGOCD: [argocd.Health("Degraded", f"DeletionBlocked: {reason['message']}")],
        versions.ARGOCD_BEFORE_3_6: [argocd.Health("Progressing", "Pending deletion")],
    }

    # Let the deletion finish rather than leave a finalizer behind for the tenant's cleanup.
    retain = {"spec": {"deletionPolicy": "Retain"}}
    assert tenant.kubectl("patch", "mailconfig", "mail", "--type=merge", "-p", json.dumps(retain)).returncode == 0
