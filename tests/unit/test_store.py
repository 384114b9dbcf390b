"""The MailConfigs as last seen: compact states under uid keys, and the indices that say who uses what."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from kcmail.decide import REQUESTED_AT
from kcmail.store import Key, MailConfigObject, MailConfigStore

pytestmark = pytest.mark.unit

BODY = {
    "apiVersion": "kcmail.io/v1alpha1", "kind": "MailConfig",
    "metadata": {"namespace": "team", "name": "mail", "uid": "u-1", "generation": 3,
                 "creationTimestamp": "2026-11-28T08:00:00Z", "resourceVersion": "77",
                 "annotations": {REQUESTED_AT: "t1",
                                 "kubectl.kubernetes.io/last-applied-configuration": "{" + "x" * 4000 + "}"},
                 "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {"f:realm": {}}}}] * 20,
                 "finalizers": ["kcmail.io/finalizer"]},
    "spec": {"realm": "acme", "connectionRef": {"name": "main"}, "smtp": {"host": "smtp.example", "port": 587},
             "sender": {"from": "noreply@example.com"},
             "auth": {"type": "XOAUTH2", "xoauth2": {"tokenURL": "https://idp.example/token",
                                                "clientSecretRef": {"name": "oauth"}}}},
    "status": {"observedGeneration": 3, "appliedSecretVersion": "s-uid/5",
               "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "mail works"},
                              {"type": "Applied", "status": "True", "reason": "Applied", "message": "ok"}]},
}


def _body(**meta: Any) -> dict[str, Any]:
    body = copy.deepcopy(BODY)
    body["metadata"].update(meta)
    return body


def test_the_kept_state_round_trips_and_holds_only_what_a_pass_reads():
    obj = MailConfigObject.from_body(BODY)
    packed = obj.pack()

    assert MailConfigObject.unpack(packed) == obj
    assert obj.annotations == {REQUESTED_AT: "t1"}
    assert (obj.namespace, obj.name, obj.uid, obj.generation) == ("team", "mail", "u-1", 3)
    assert obj.finalizers == ("kcmail.io/finalizer",)
    assert (obj.deleting, obj.resource_version) == (False, "77")
    assert obj.spec == BODY["spec"]
    assert obj.status == BODY["status"]
    # Neither managedFields nor kubectl's copy of the object: a fraction of the body's JSON.
    assert len(packed) * 5 < len(json.dumps(BODY))


def test_an_object_is_kept_under_its_uid_and_its_name_points_at_the_newest():
    store = MailConfigStore()
    old, previous, _ = store.put(BODY)
    assert old == Key("team", "mail", "u-1")
    assert previous is None
    _, previous, now = store.put(_body(generation=4))
    assert previous is not None
    assert (previous.generation, now.generation) == (3, 4)

    new, previous, _ = store.put(_body(uid="u-2"))  # deleted and created again, its DELETED not seen yet
    assert new != old
    assert previous is None
    assert store.current("team", "mail") == new
    store.remove(old)  # the old object's DELETED arrives late
    assert store.current("team", "mail") == new
    assert store.latest(new) is not None
    assert store.latest(old) is None


def test_the_indices_follow_each_objects_latest_spec_and_forget_removed_ones():
    store = MailConfigStore()
    key, _, _ = store.put(BODY)
    assert store.secret_users("team", "oauth") == [(key, "s-uid/5")]
    assert store.connection_users(("ClusterKeycloakConnection", None, "main")) == [key]
    assert [h.id for h in store.holders("acme")] == ["team/mail"]
    assert store.holders("acme")[0].applied is True

    moved = _body()
    moved["spec"] = {**BODY["spec"], "realm": "other", "connectionRef": {"kind": "KeycloakConnection", "name": "own"},
                     "auth": {"type": "XOAUTH2", "xoauth2": {"tokenURL": "https://idp.example/token",
                                                             "clientSecretRef": {"name": "rotated"}}}}
    store.put(moved)
    assert store.holders("acme") == []
    assert store.realm_users("other") == [key]
    assert store.secret_users("team", "oauth") == []
    assert store.secret_users("team", "rotated") == [(key, "s-uid/5")]
    assert store.connection_users(("ClusterKeycloakConnection", None, "main")) == []
    assert store.connection_users(("KeycloakConnection", "team", "own")) == [key]

    store.remove(key)
    assert (len(store), store.realm_users("other"), store.secret_users("team", "rotated")) == (0, [], [])


def test_a_spec_that_does_not_parse_is_kept_and_holds_no_secret():
    broken = _body()
    broken["spec"] = {"realm": "acme", "connectionRef": {"kind": "Nonsense", "name": "x"}, "auth": 7}
    store = MailConfigStore()
    key, _, _ = store.put(broken)
    assert store.latest(key) is not None
    assert store.holders("acme") == []  # a kind that is no ConnectionKind holds nothing
    assert store.realm_users("acme") == [key]
