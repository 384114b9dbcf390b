"""The guides in docs/guides must match the code: the commands and flags they show exist, every audit
finding is documented with its severity, every reason they name is in the catalogue, every link resolves."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from kcmail import cli
from kcmail.adopt.findings import SEVERITY
from kcmail.conditions import Reason

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
GUIDES = REPO / "docs" / "guides"
PAGES = sorted(GUIDES.glob("*.md"))
# `kcmail SUBCOMMAND …` up to the end of the code, a comment, or a pipe.
_COMMAND = re.compile(r"(?:^|[\s$(/])kcmail\s+([a-z][a-z-]*)([^`#|;&\n]*)")
_FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def _code(text: str) -> list[str]:
    """Lines of fenced code blocks (continuation lines joined) and inline code spans."""
    pieces = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL):
        pieces += block.replace("\\\n", " ").splitlines()
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    pieces += re.findall(r"`([^`\n]+)`", prose)
    return pieces


def _options(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of ``parser`` and of the subcommands nested in it."""
    found: set[str] = set()
    for action in parser._actions:
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for nested in action.choices.values():
                found |= _options(nested)
    return found


def _subcommands() -> dict[str, set[str]]:
    # kcmail has no public handle on its parser; the private builder is the one `kcmail` itself runs.
    parser = cli._parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {name: _options(sub) for name, sub in subparsers.choices.items()}


def _commands() -> list[tuple[str, str, str]]:
    found = []
    for page in PAGES:
        for piece in _code(page.read_text()):
            for subcommand, rest in _COMMAND.findall(piece):
                found.append((page.name, subcommand, rest))
    return found


def test_the_guides_show_commands():
    used = {subcommand for _, subcommand, _ in _commands()}
    assert {"audit", "export", "probe"} <= used


def test_every_kcmail_command_and_flag_in_the_guides_exists():
    subcommands = _subcommands()
    wrong = []
    for page, subcommand, rest in _commands():
        if subcommand not in subcommands:
            wrong.append(f"{page}: kcmail {subcommand}")
            continue
        wrong += [f"{page}: kcmail {subcommand} {flag}" for flag in _FLAG.findall(rest)
                  if flag not in subcommands[subcommand]]
    assert wrong == []


def test_every_flag_named_on_its_own_is_an_option_of_a_kcmail_command():
    # Prose such as "`--fail-on info|warning|error` sets the severity" names a flag without its command.
    known = set().union(*_subcommands().values())
    named = [(page.name, span.split()[0]) for page in PAGES
             for span in re.findall(r"`(--[A-Za-z][^`\n]*)`", page.read_text())]
    assert len(named) >= 10
    assert [(page, flag) for page, flag in named if flag not in known] == []


def test_the_flag_check_would_see_a_flag_that_does_not_exist():
    assert _FLAG.findall(" --connection main --no-such-flag -o DIR") == ["--connection", "--no-such-flag", "-o"]
    assert "--no-such-flag" not in _subcommands()["audit"]


def test_every_finding_is_documented_once_with_its_severity():
    text = (GUIDES / "audit-and-export.md").read_text()
    rows = re.findall(r"^\| `([a-z0-9-]+)` \| (info|warning|error) \|", text, flags=re.MULTILINE)
    assert sorted(rows) == sorted((check.value, severity.value) for check, severity in SEVERITY.items())


def _column(text: str, header: str) -> list[str]:
    """The cells under ``header`` in every table of ``text`` that has that column."""
    cells = []
    for table in re.findall(r"((?:^\|.*\|\n)+)", text, flags=re.MULTILINE):
        lines = table.strip("\n").splitlines()
        headers = [h.strip() for h in lines[0].strip("|").split("|")]
        if header not in headers:
            continue
        index = headers.index(header)
        cells += [row.strip("|").split("|")[index].strip() for row in lines[2:]]
    return cells


def test_every_reason_the_guides_map_errors_to_is_in_the_catalogue():
    cells = [cell for page in PAGES for cell in _column(page.read_text(), "kcmail reason")]
    assert len(cells) >= 10
    catalogue = {reason.value for reason in Reason}
    assert [cell for cell in cells if cell.strip("`") not in catalogue or not cell.startswith("`")] == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text())
    missing = [t for t in targets if "://" not in t and not (page.parent / t).exists()]
    assert missing == []
