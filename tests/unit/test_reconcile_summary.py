"""The one log line per reconcile says where Ready stands and whether Keycloak was written."""

from __future__ import annotations

import pytest

from kcmail.decide import Result

pytestmark = pytest.mark.unit


def _ready(status: str, reason: str) -> dict[str, str]:
    return {"type": "Ready", "status": status, "reason": reason, "message": "the server's own words"}


def test_summary_of_a_pass_that_wrote():
    result = Result(status={"conditions": [_ready("True", "InSync")]}, wrote=True)
    assert result.summary() == "Ready=True (InSync), wrote to Keycloak"


def test_summary_of_a_pass_that_did_not_write_leaves_the_message_out():
    result = Result(status={"conditions": [{"type": "Applied", "status": "False", "reason": "RealmNotFound"},
                                           _ready("False", "RealmNotFound")]})
    assert result.summary() == "Ready=False (RealmNotFound), no write to Keycloak"


def test_summary_without_conditions():
    assert Result(status={}).summary() == "no Ready condition, no write to Keycloak"
