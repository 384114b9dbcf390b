"""The chart ships the repository's CRDs byte for byte: crds/ is the one source of the API schema."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def test_chart_crds_are_identical_to_the_repository_crds():
    source = {path.name: path.read_bytes() for path in (REPO / "crds").glob("*.yaml")}
    shipped = {path.name: path.read_bytes() for path in (REPO / "charts" / "kcmail" / "crds").iterdir()}
    assert source
    assert sorted(shipped) == sorted(source)
    assert [name for name in source if shipped[name] != source[name]] == []
