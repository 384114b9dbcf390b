"""The ``kcmail`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kcmail", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    try:
        from kcmail.devenv import cli as dev_cli
    except ImportError:
        dev_cli = None
    if dev_cli is not None:
        dev_cli.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
