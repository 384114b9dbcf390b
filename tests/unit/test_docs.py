"""Documentation that must match the code: a troubleshooting row for every condition reason."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kcmail.conditions import Reason

pytestmark = pytest.mark.unit

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _documented_reasons() -> list[str]:
    text = (DOCS / "troubleshooting.md").read_text()
    return re.findall(r"^\| `([A-Za-z0-9]+)` \|", text, flags=re.MULTILINE)


def test_every_reason_has_exactly_one_troubleshooting_row():
    documented = _documented_reasons()
    assert sorted(documented) == sorted(r.value for r in Reason)


def test_events_named_in_the_docs_are_the_ones_the_operator_posts():
    source = (Path(__file__).resolve().parents[2] / "operator" / "kcmail" / "decide.py").read_text()
    posted = set(re.findall(r'Event\(\s*"(?:Normal|Warning)", "([A-Za-z]+)"', source))
    text = (DOCS / "troubleshooting.md").read_text()
    events_section = text.split("## Events", 1)[1]
    assert posted
    assert all(f"`{name}`" in events_section for name in posted)
