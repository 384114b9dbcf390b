"""`kcmail run --shard NAME`, `--exclude-sharded` and `--workers`: what they hand the operator and the election."""

from __future__ import annotations

from pathlib import Path

import kopf
import pytest
import yaml

from kcmail import cli, defaults, handlers
from kcmail.options import SHARD_LABEL, OperatorOptions, shard_selector

CHART_VALUES = Path(__file__).resolve().parents[2] / "charts" / "kcmail" / "values.yaml"

pytestmark = pytest.mark.unit


def test_a_shard_watches_its_label_the_default_shard_the_unlabelled_and_no_shard_everything():
    assert shard_selector("blue") == f"{SHARD_LABEL}=blue"
    assert shard_selector(None, exclude_sharded=True) == f"!{SHARD_LABEL}"
    assert shard_selector(None) == ""


def test_each_shard_elects_on_a_lease_of_its_own_unless_one_is_named():
    assert cli.lease_name(None, None) == defaults.LEADER_ELECTION_ID
    assert cli.lease_name(None, "blue") == f"{defaults.LEADER_ELECTION_ID}-shard-blue"
    assert cli.lease_name("tenants", "blue") == "tenants"


def _run(monkeypatch, *args: str) -> OperatorOptions:
    given: list[OperatorOptions] = []
    monkeypatch.setattr(handlers, "configure", given.append)
    monkeypatch.setattr(kopf, "run", lambda **_: None)
    assert cli.main(["run", "-v", "--no-leader-election", "--metrics-address", "off", *args]) == 0
    (options,) = given
    return options


def test_run_hands_the_shard_selector_and_the_workers_to_the_operator(monkeypatch):
    assert _run(monkeypatch, "--shard", "blue", "--workers", "3").mailconfig_selector == f"{SHARD_LABEL}=blue"
    assert _run(monkeypatch, "--exclude-sharded").mailconfig_selector == f"!{SHARD_LABEL}"
    defaulted = _run(monkeypatch)
    assert (defaulted.mailconfig_selector, defaulted.workers) == ("", defaults.WORKERS)
    assert _run(monkeypatch, "--workers", "3").workers == 3


@pytest.mark.parametrize("args", [["--shard", "Blue"], ["--shard", "a/b"], ["--shard", "x" * 51],
                                  ["--shard", "blue", "--exclude-sharded"], ["--workers", "0"]])
def test_a_bad_shard_or_worker_count_is_refused_before_anything_starts(args, monkeypatch, capsys):
    monkeypatch.setattr(handlers, "configure", lambda options: pytest.fail(f"the operator was configured: {options}"))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", *args])
    assert exit_.value.code == 2
    assert "argument --" in capsys.readouterr().err


def test_the_chart_default_workers_are_the_operators():
    assert yaml.safe_load(CHART_VALUES.read_text())["workers"] == defaults.WORKERS
