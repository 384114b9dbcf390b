"""Two MailConfigs for one realm of one Keycloak: the one the realm records as its owner (the first to write
it) keeps it, the other writes nothing and says so, and takes over within seconds once the owner is deleted
and has taken its record off the realm.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
import uuid

import pytest

from kcmail.devenv import operator_env
from kcmail.ownership import Owner, recorded_owner, with_owner

pytestmark = pytest.mark.e2e


def _conditions(obj):
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}


def _created(obj) -> datetime.datetime:
    return datetime.datetime.strptime(obj["metadata"]["creationTimestamp"], "%Y-%m-%dT%H:%M:%S%z")


def _next_second_after(moment: datetime.datetime) -> None:
    """Creation times have one-second resolution: wait so that the next object is visibly younger."""
    for _ in range(30):
        if datetime.datetime.now(datetime.UTC) >= moment + datetime.timedelta(seconds=1.1):
            return
        time.sleep(0.1)


@pytest.mark.parametrize("placement", ["other-namespace", "same-namespace"])
def test_the_recorded_owner_keeps_the_realm_and_the_other_takes_over_when_it_goes(operator, tenant, placement):
    tenant.apply(tenant.secret(), tenant.mailconfig(sender={"from": "no-reply@acme.example",
                                                            "fromDisplayName": "Older"}))
    older = tenant.wait_condition("True")
    assert tenant.smtp_server()["fromDisplayName"] == "Older"

    if placement == "other-namespace":
        # Another namespace, reaching the same Keycloak through a KeycloakConnection of its own whose URL
        # is spelled differently: still the same realm.
        other = dataclasses.replace(tenant, namespace=f"{tenant.namespace}-b")
        tenant.apply(operator_env.namespace(other.namespace))
        other.apply(*operator_env.keycloak_connection(tenant.env, other.namespace, "kc",
                                                      url=tenant.env.keycloak_url + "/"), other.secret())
        other.wait_connection("True")
        connection_ref = {"kind": "KeycloakConnection", "name": "kc"}
        name = "mail"
    else:
        other, connection_ref, name = tenant, {"kind": "ClusterKeycloakConnection", "name": "main"}, "mail-2"

    _next_second_after(_created(older))
    other.apply(other.mailconfig(name, connectionRef=connection_ref,
                                 sender={"from": "no-reply@acme.example", "fromDisplayName": "Newer"}))
    newer = other.wait_condition("False", "RealmConflict", name=name)
    conditions = _conditions(newer)
    owner = f"MailConfig {tenant.namespace}/mail (uid {older['metadata']['uid']}) owns this realm's mail settings"
    assert owner in conditions["Ready"]["message"]
    recorded = recorded_owner(tenant.admin.realm(tenant.realm))
    assert recorded == Owner(older["metadata"]["uid"], f"{tenant.namespace}/mail")
    assert conditions["Stalled"]["reason"] == "RealmConflict"
    assert "lastAppliedTime" not in newer["status"]
    assert any(e["reason"] == "RealmConflict" and e["type"] == "Warning" for e in other.events(name))

    # A pass asked for explicitly changes nothing either: the realm keeps the older one's settings.
    other.kubectl("annotate", "mailconfig", name, "--overwrite", f"kcmail.io/requested-at={time.time()}")
    again = other.wait_for(lambda o: (o.get("status") or {}).get("lastHandledRequestedAt")
                           == o["metadata"]["annotations"]["kcmail.io/requested-at"], name,
                           what="the requested pass")
    assert _conditions(again)["Ready"]["reason"] == "RealmConflict"
    assert tenant.smtp_server()["fromDisplayName"] == "Older"
    assert _conditions(tenant.get("mailconfig", "mail"))["Ready"]["status"] == "True"

    started = time.monotonic()
    deleted = tenant.kubectl("delete", "mailconfig", "mail", "--wait=false")
    assert deleted.returncode == 0, deleted.stderr
    taken_over = other.wait_condition("True", name=name, timeout=30)
    assert time.monotonic() - started < 15
    assert "Stalled" not in _conditions(taken_over)
    assert tenant.smtp_server()["fromDisplayName"] == "Newer"
    assert json.dumps(taken_over).count("RealmConflict") == 0
    assert recorded_owner(tenant.admin.realm(tenant.realm)).mailconfig == f"{other.namespace}/{name}"


def test_a_realm_owned_by_a_mailconfig_this_cluster_lacks_is_adopted_only_by_the_annotation(operator, tenant):
    # What another cluster's kcmail leaves in a realm of the same Keycloak, or one whose MailConfig was deleted
    # while no operator ran: a record naming a MailConfig that does not exist here.
    gone = Owner(uid=str(uuid.uuid4()), mailconfig=f"{tenant.namespace}/elsewhere")
    realm = tenant.admin.realm(tenant.realm)
    realm["smtpServer"] = {"host": "smtp.elsewhere.example", "from": "no-reply@acme.example",
                           "fromDisplayName": "Elsewhere"}
    assert tenant.admin.put_realm(tenant.realm, with_owner(realm, realm["smtpServer"], gone)).status_code == 204

    tenant.apply(tenant.secret(), tenant.mailconfig("heir", sender={"from": "no-reply@acme.example",
                                                                    "fromDisplayName": "Heir"}))
    waiting = tenant.wait_condition("False", "RealmConflict", name="heir")
    message = _conditions(waiting)["Ready"]["message"]
    assert f"names MailConfig {gone.mailconfig} (uid {gone.uid}), which does not exist in this cluster" in message
    assert f"kcmail.io/adopt={gone.uid}" in message
    # A wrong uid adopts nothing.
    tenant.kubectl("annotate", "mailconfig", "heir", "kcmail.io/adopt=not-the-owner",
                   f"kcmail.io/requested-at={time.time()}", "--overwrite")
    tenant.wait_for(lambda o: (o.get("status") or {}).get("lastHandledRequestedAt")
                    == o["metadata"]["annotations"]["kcmail.io/requested-at"], "heir", what="the requested pass")
    assert tenant.smtp_server()["fromDisplayName"] == "Elsewhere"
    assert recorded_owner(tenant.admin.realm(tenant.realm)) == gone

    tenant.kubectl("annotate", "mailconfig", "heir", f"kcmail.io/adopt={gone.uid}",
                   f"kcmail.io/requested-at={time.time()}", "--overwrite")
    adopted = tenant.wait_condition("True", name="heir")
    assert tenant.smtp_server()["fromDisplayName"] == "Heir"
    assert recorded_owner(tenant.admin.realm(tenant.realm)).uid == adopted["metadata"]["uid"]
    (event,) = [e for e in tenant.events("heir") if e["reason"] == "RealmAdopted"]
    assert event["type"] == "Warning"
    assert gone.uid in event["message"]
