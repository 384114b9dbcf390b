"""The ``kcmail`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def _run(args: argparse.Namespace) -> int:
    # Imported here: kopf registers its handlers on import, which only `run` wants.
    import kopf

    from kcmail import handlers
    from kcmail.runtime import OperatorOptions

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if not args.verbose:
        # One line per request or per handled event drowns what matters; kcmail logs its own actions.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    namespaces = tuple(args.namespace or ())
    handlers.configure(OperatorOptions(namespaces=namespaces, ca_bundle=args.ca_bundle, liveness=args.liveness,
                                       probe_concurrency=args.probe_concurrency))
    kopf.run(clusterwide=not namespaces, namespaces=namespaces, liveness_endpoint=args.liveness,
             standalone=not args.peering)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kcmail", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    run = subparsers.add_parser("run", help="run the operator")
    run.add_argument("-n", "--namespace", action="append",
                     help="watch only this namespace (repeat for several); default: all namespaces")
    run.add_argument("--ca-bundle", help="PEM file of extra CAs trusted for Keycloak, token endpoints and SMTP")
    run.add_argument("--probe-concurrency", type=int, default=10,
                     help="SMTP probes running at once across all MailConfigs (default 10)")
    run.add_argument("--liveness", help="serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("--peering", action="store_true",
                     help="coordinate with other replicas through kopf peering instead of running standalone")
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    run.set_defaults(handler=_run)
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
