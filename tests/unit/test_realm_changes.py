"""The realm comparison the end-to-end tests rely on reports real changes and only those."""

from __future__ import annotations

import pytest

from kcmail.devenv.clients import realm_changes

pytestmark = pytest.mark.unit

BEFORE = {"displayName": "Acme", "clientSessionIdleTimeout": 0, "scimApiEnabled": False,
          "oauth2DeviceCodeLifespan": 900, "attributes": {"oauth2DeviceCodeLifespan": "900"},
          "smtpServer": {}}


def test_smtp_server_and_materialised_defaults_are_not_changes():
    after = {**BEFORE, "smtpServer": {"host": "h"},
             "attributes": {**BEFORE["attributes"], "clientSessionIdleTimeout": "0", "scimApiEnabled": "false"}}
    assert realm_changes(BEFORE, after) == []


def test_a_reset_setting_is_reported():
    after = {**BEFORE, "oauth2DeviceCodeLifespan": 600, "attributes": {"oauth2DeviceCodeLifespan": "600"}}
    assert realm_changes(BEFORE, after) == [
        "oauth2DeviceCodeLifespan: 900 -> 600", "attributes.oauth2DeviceCodeLifespan: '900' -> '600'"]


def test_a_new_attribute_with_another_value_is_reported():
    after = {**BEFORE, "attributes": {**BEFORE["attributes"], "clientSessionIdleTimeout": "30"}}
    assert realm_changes(BEFORE, after) == ["attributes.clientSessionIdleTimeout: None -> '30'"]


def test_kcmails_owner_record_is_not_a_change_but_any_other_new_attribute_is():
    after = {**BEFORE, "attributes": {**BEFORE["attributes"], "kcmail.io/owner": '{"uid":"u","mailconfig":"a/b"}'}}
    assert realm_changes(BEFORE, after) == []
    after["attributes"]["kcmail.io/other"] = "x"
    assert realm_changes(BEFORE, after) == ["attributes.kcmail.io/other: None -> 'x'"]
