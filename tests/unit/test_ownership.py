"""Ownership recorded in the realm: who may write, who must wait, how a realm is adopted and released.

The decision is pure (``decide``); the reconcile around it runs against the small fakes of
reconcile_fakes.py. The real servers' side is in tests/e2e/test_conflicts.py and
tests/e2e/test_tenant_boundary.py.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from reconcile_fakes import (
    ME,
    NOW,
    FakeClients,
    FakeKeycloak,
    FakeKube,
    dataclass_with_status,
    mailconfig,
    ready,
    reconciler_for,
)

from kcmail.conditions import Failure, Reason
from kcmail.controller import Reconciler
from kcmail.keycloak import AdminCredentials, KeycloakClient, KeycloakFailure
from kcmail.ownership import (
    ADOPT_ANNOTATION,
    OWNER_ATTRIBUTE,
    Decision,
    Lookup,
    Owner,
    decide,
    recorded_owner,
    with_owner,
)
from kcmail.spec import ConnectionKind
from kcmail.store import Holder, MailConfigObject

pytestmark = pytest.mark.unit

OTHER = Owner(uid="uid-other", mailconfig="tenant-b/mail")


def test_a_realm_that_names_no_one_is_claimed():
    assert decide(None, ME, None, None) == Decision()


def test_a_realm_that_names_this_mailconfig_is_written():
    assert decide(ME, ME, None, None) == Decision()


def test_a_live_owner_keeps_its_realm_whatever_the_annotation_says():
    decision = decide(OTHER, ME, Lookup.EXISTS, OTHER.uid)
    assert decision.conflict is not None
    assert decision.conflict.reason is Reason.REALM_CONFLICT
    assert decision.conflict.needs_person
    assert "MailConfig tenant-b/mail (uid uid-other) owns this realm" in decision.conflict.message


def test_a_gone_owner_is_adopted_only_with_its_uid_in_the_annotation():
    refused = decide(OTHER, ME, Lookup.ABSENT, None)
    assert refused.conflict is not None
    assert f"annotate this MailConfig {ADOPT_ANNOTATION}=uid-other" in refused.conflict.message
    assert decide(OTHER, ME, Lookup.ABSENT, "uid-someone-else").conflict is not None
    adopted = decide(OTHER, ME, Lookup.ABSENT, "uid-other")
    assert (adopted.conflict, adopted.adopted) == (None, OTHER)


def test_an_owner_that_cannot_be_looked_up_is_never_adopted():
    decision = decide(OTHER, ME, Lookup.UNKNOWN, OTHER.uid)
    assert decision.conflict is not None
    assert "cannot look up" in decision.conflict.message


@given(st.one_of(st.none(), st.text(max_size=60), st.integers(), st.lists(st.text(max_size=5), max_size=3),
                 st.dictionaries(st.text(max_size=8), st.one_of(st.text(max_size=20), st.integers()), max_size=3)))
def test_a_record_kcmail_did_not_write_is_no_owner_and_never_an_error(value):
    attribute = value if isinstance(value, str) or value is None else json.dumps(value)
    owner = recorded_owner({"attributes": {OWNER_ATTRIBUTE: attribute}})
    assert owner is None or (owner.uid and owner.mailconfig.count("/") == 1)


def test_the_record_round_trips_and_leaves_other_attributes_alone():
    realm = {"realm": "acme", "attributes": {"frontendUrl": "https://sso"}, "smtpServer": {"host": "old"}}
    written = with_owner(realm, {"host": "new"}, ME)
    assert written["attributes"]["frontendUrl"] == "https://sso"
    assert recorded_owner(written) == ME
    assert written["smtpServer"] == {"host": "new"}
    released = with_owner(written, None, None)
    assert OWNER_ATTRIBUTE not in released["attributes"]
    # No smtpServer key: Keycloak keeps its settings as they are, and no masked secret travels back.
    assert "smtpServer" not in released
    assert realm["attributes"] == {"frontendUrl": "https://sso"}


# --- the reconcile around the decision ------------------------------------------------------------------

async def test_a_hand_configured_realm_is_claimed_in_the_same_put_as_the_settings():
    keycloak = FakeKeycloak()
    result = await reconciler_for(keycloak).reconcile(mailconfig())
    (written,) = keycloak.writes
    assert recorded_owner(written) == ME
    assert written["smtpServer"]["password"] == "smtp-password"
    assert written["attributes"]["frontendUrl"] == "https://sso"
    assert ready(result)[:2] == ("True", "InSync")


async def test_a_realm_owned_by_a_live_mailconfig_is_neither_written_nor_cleared():
    keycloak = FakeKeycloak(owner=OTHER)
    reconciler = reconciler_for(keycloak, FakeKube({OTHER.mailconfig: OTHER.uid}))
    result = await reconciler.reconcile(mailconfig())
    assert keycloak.writes == []
    assert ready(result)[:2] == ("False", "RealmConflict")
    assert (await reconciler.finalize(mailconfig(deletionPolicy="Clear"))).events == []
    assert keycloak.writes == []


async def test_a_claim_that_crossed_another_is_lost_at_the_next_pass_and_never_written_over():
    # Keycloak has no conditional write: another claim written right after this one's stays, and the next
    # pass's read (the one every pass makes) finds it. No read-back per claim: see docs/security.md.
    keycloak = FakeKeycloak(race=OTHER)
    reconciler = reconciler_for(keycloak, FakeKube({OTHER.mailconfig: OTHER.uid}))
    first = await reconciler.reconcile(mailconfig())
    assert (first.wrote, len(keycloak.writes)) == (True, 1)
    assert recorded_owner(keycloak.realm) == OTHER
    second = await reconciler.reconcile(dataclass_with_status(first.status))
    status, reason, message = ready(second)
    assert (status, reason) == ("False", "RealmConflict")
    assert "MailConfig tenant-b/mail (uid uid-other) owns this realm" in message
    assert len(keycloak.writes) == 1
    assert keycloak.realm["smtpServer"] == {"host": "theirs"}


async def test_adoption_takes_the_realm_over_from_a_gone_owner_and_says_so():
    keycloak = FakeKeycloak(owner=OTHER)
    waiting = await reconciler_for(keycloak).reconcile(mailconfig())
    assert ready(waiting)[:2] == ("False", "RealmConflict")
    assert keycloak.writes == []
    adopted = await reconciler_for(keycloak).reconcile(mailconfig({ADOPT_ANNOTATION: OTHER.uid}))
    assert recorded_owner(keycloak.realm) == ME
    assert ("Warning", "RealmAdopted") in [(e.type, e.reason) for e in adopted.events]
    assert ready(adopted)[0] == "True"


async def test_a_steady_owner_writes_nothing_and_an_upgrade_records_the_owner_once():
    keycloak = FakeKeycloak()
    reconciler = reconciler_for(keycloak)
    first = await reconciler.reconcile(mailconfig())
    keycloak.realm["attributes"].pop(OWNER_ATTRIBUTE)  # as a realm written by kcmail before ownership was recorded
    second = await reconciler.reconcile(dataclass_with_status(first.status))
    assert [e.reason for e in second.events] == ["OwnerRecorded"]
    third = await reconciler.reconcile(dataclass_with_status(second.status))
    assert (len(keycloak.writes), third.wrote, third.events) == (2, False, [])


@pytest.mark.parametrize("policy", ["Clear", "Retain"])
async def test_deletion_releases_the_realm_and_clear_also_empties_its_settings(policy):
    keycloak = FakeKeycloak(owner=ME)
    result = await reconciler_for(keycloak).finalize(mailconfig(deletionPolicy=policy))
    (written,) = keycloak.writes
    assert recorded_owner(written) is None
    assert written["attributes"]["frontendUrl"] == "https://sso"
    if policy == "Clear":
        assert written["smtpServer"] == {}
        assert [e.reason for e in result.events] == ["SettingsCleared"]
    else:
        assert "smtpServer" not in written
        assert keycloak.realm["smtpServer"] == {"host": "hand-made"}
        assert [e.reason for e in result.events] == ["OwnershipReleased"]


async def test_a_mailconfig_its_connection_does_not_allow_clears_nothing_on_deletion():
    # The squatter of the issue: it never could write the realm, so its deletion must not clear it either.
    keycloak = FakeKeycloak(owner=None)
    reconciler = reconciler_for(keycloak, FakeKube(allowed_realms=["tenant-*"]))
    result = await reconciler.finalize(mailconfig(deletionPolicy="Clear"))
    assert (keycloak.writes, result.events, result.retry) == ([], [], False)


async def test_a_realm_answer_that_names_another_realm_is_never_written():
    # A case-insensitive database collation, or a proxy rewriting the path: the answer is another realm's.
    client = KeycloakClient("https://keycloak.example", "master", AdminCredentials(username="admin", password="pw"))
    puts: list[str] = []

    async def get(path: str, **_: Any) -> httpx.Response:
        if path == "admin/serverinfo":
            return httpx.Response(200, json={"systemInfo": {"version": "26.7.3"}})
        return httpx.Response(200, json={"realm": "ACME", "attributes": {}})

    async def put(path: str, data: str, **_: Any) -> httpx.Response:
        puts.append(path)
        return httpx.Response(204)

    async def logged_in() -> None:
        return None

    client._ensure_token = logged_in  # type: ignore[method-assign]

    async def send(method: str, path: str, body: Any) -> httpx.Response:
        return await (put(path, json.dumps(body)) if method == "PUT" else get(path))

    client._send = send  # type: ignore[method-assign]
    try:
        reconciler = Reconciler(FakeKube(), FakeClients(client), now=lambda: NOW)  # type: ignore[arg-type]
        result = await reconciler.reconcile(mailconfig())
        cleared = await reconciler.finalize(mailconfig(deletionPolicy="Clear"))
    finally:
        await client.aclose()
    assert puts == []
    status, reason, message = ready(result)
    assert (status, reason) == ("False", "RealmMismatch")
    assert "asked for realm 'acme', Keycloak answered with realm 'ACME'" in message
    assert cleared.events == []


def _holder(created: str, applied: bool, connection: str = "kc") -> Holder:
    return Holder(namespace="tenant-b", name="mail", uid="uid-other", created=created,
                  connection_kind=ConnectionKind.NAMESPACED, connection_name=connection, applied=applied)


@pytest.mark.parametrize(("holder", "waits"), [
    # The owner a kcmail from before owner records chose: older, Applied, same Keycloak (any spelling).
    (_holder("2026-12-06T08:00:00Z", applied=True), True),
    (_holder("2026-12-06T08:00:00Z", applied=True, connection="kc-spelled"), True),
    # A squatter never wrote the realm; a younger one or one on another Keycloak holds nothing back.
    (_holder("2026-12-06T08:00:00Z", applied=False), False),
    (_holder("2026-12-06T10:00:00Z", applied=True), False),
    (_holder("2026-12-06T08:00:00Z", applied=True, connection="elsewhere"), False),
])
async def test_an_unrecorded_realm_waits_for_the_older_mailconfig_that_wrote_it(holder, waits):
    keycloak = FakeKeycloak()
    result = await reconciler_for(keycloak).reconcile(mailconfig(), holders=lambda realm: [holder])
    if waits:
        assert keycloak.writes == []
        status, reason, message = ready(result)
        assert (status, reason) == ("False", "RealmConflict")
        assert "MailConfig tenant-b/mail (older) wrote this realm before kcmail recorded owners" in message
    else:
        assert recorded_owner(keycloak.realm) == ME


async def test_a_recorded_realm_is_decided_by_its_record_not_by_the_index():
    keycloak = FakeKeycloak(owner=ME)
    older = _holder("2026-12-06T08:00:00Z", applied=True)
    result = await reconciler_for(keycloak).reconcile(mailconfig(), holders=lambda realm: [older])
    assert ready(result)[0] == "True"


async def test_a_mailconfig_that_never_wrote_waits_for_no_keycloak_on_deletion():
    class Refusing(FakeKeycloak):
        async def read_realm(self, realm: str) -> dict[str, Any]:
            raise KeycloakFailure(Failure(Reason.KEYCLOAK_AUTH_FAILED, "refused", needs_person=True))

    never_wrote = await reconciler_for(Refusing()).finalize(mailconfig(deletionPolicy="Clear"))
    assert (never_wrote.retry, never_wrote.events) == (False, [])
    wrote = dataclass_with_status({"lastAppliedTime": "2026-12-06T09:00:00Z"})
    blocked = await reconciler_for(Refusing()).finalize(MailConfigObject(**{**wrote.__dict__, "spec": {
        **wrote.spec, "deletionPolicy": "Clear"}}))
    assert blocked.retry is True
    assert ready(blocked)[:2] == ("False", "DeletionBlocked")
