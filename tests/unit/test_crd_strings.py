"""Every string a tenant writes into a spec is held to a rule that refuses control characters: an enum, a
pattern of printable characters, or the CEL rule shared by the free-text fields. (The API server's answer to
each rule is in tests/integration/test_crds.py.)"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from kcmail.devenv.crd_reference import load_crds, stored_schema
from kcmail.spec import CONTROL_CHARACTERS

pytestmark = pytest.mark.unit

CONTROL_RULE = "!self.matches('[\\\\x00-\\\\x1f\\\\x7f-\\\\x9f\\\\x{2028}\\\\x{2029}]')"


def _strings(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if schema.get("type") == "string":
        yield path, schema
    for name, child in (schema.get("properties") or {}).items():
        yield from _strings(child, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _strings(schema[key], f"{path}[]")


def _spec_strings() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for crd in load_crds():
        _, schema = stored_schema(crd)
        kind = crd["spec"]["names"]["kind"]
        found += [(f"{kind} {path}", field) for path, field in _strings(schema["properties"]["spec"], "spec")]
    return found


def _refuses_controls(field: dict[str, Any]) -> bool:
    if "enum" in field:
        return True
    rules = " ".join(rule["rule"] for rule in field.get("x-kubernetes-validations") or [])
    if CONTROL_RULE in rules:
        return True
    pattern = field.get("pattern")
    # A pattern that is a whitelist of printable characters: no control character can match it.
    return pattern is not None and not any(re.fullmatch(pattern, f"a{c}b") or re.fullmatch(pattern, c)
                                           for c in "\x00\x01\n\r\t\x7f\x85")


@pytest.mark.parametrize(("where", "field"), _spec_strings(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_spec_string_refuses_control_characters(where, field):
    assert _refuses_controls(field), f"{where} accepts control characters"


def test_the_crds_rule_and_kcmails_own_check_refuse_the_same_characters():
    # The CRDs' class, read back from the rule text, against kcmail's own regular expression.
    crd_class = re.compile(CONTROL_RULE.split("'")[1].replace("\\\\", "\\").replace("\\x{2028}", "\u2028")
                           .replace("\\x{2029}", "\u2029"))
    for code in range(0x3000):
        char = chr(code)
        assert bool(crd_class.search(char)) == bool(CONTROL_CHARACTERS.search(char)), hex(code)
