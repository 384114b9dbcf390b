"""The ``kcmail`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from kcmail import defaults, metrics, probe_cli, redact
from kcmail.adopt import cli as adopt_cli
from kcmail.bridge import cli as bridge_cli
from kcmail.options import NAMESPACE_NAME, OBJECT_NAME, namespaced_name


def import_kopf_alone() -> None:
    """Import kopf and make its handler registry without loading the kubernetes client library.

    kopf imports the library whenever it is installed, to recognise its model objects (which kcmail never
    hands to kopf), and its default registry loads it to offer a login through it (kcmail has its own,
    ``handlers.login``). That would cost the operator about 12 MiB. While a ``None`` stands in
    ``sys.modules``, importing the library fails as if it were absent; it is taken out again afterwards,
    so that a login through a kubeconfig's exec plugin can still load it (``apisession.login_info``).
    """
    if "kopf" in sys.modules or "kubernetes" in sys.modules:
        return
    sys.modules["kubernetes"] = None  # type: ignore[assignment]
    try:
        import kopf

        kopf.set_default_registry(kopf.OperatorRegistry())
    finally:
        del sys.modules["kubernetes"]


def _run(args: argparse.Namespace) -> int:
    # Imported here: kopf registers its handlers on import, which only `run` wants.
    import_kopf_alone()
    import kopf

    from kcmail import handlers
    from kcmail.options import BridgeOptions, OperatorOptions, shard_selector

    if args.log_format == "json":
        # One JSON object per line; kopf's lines about one Kubernetes object carry it under "object".
        kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.JSON, log_refkey="object")
    else:
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Every line, kopf's included, passes kcmail's redaction: foreign text quoted in a message or a traceback.
    redact.install_log_filter()
    if not args.verbose:
        # One line per request or per handled event drowns what matters; kcmail logs its own actions.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if args.metrics_address is not None:
        host, port = args.metrics_address
        try:
            metrics.serve(host, port)
        except OSError as error:
            print(f"kcmail: cannot serve metrics on {host}:{port}: {error}", file=sys.stderr)
            return 2
    if (args.bridge_url is None) != (args.bridge_registry is None):
        print("kcmail: --bridge-url and --bridge-registry go together", file=sys.stderr)
        return 2
    bridge = None if args.bridge_url is None else BridgeOptions(args.bridge_url, *args.bridge_registry)
    namespaces = tuple(args.namespace or ())
    handlers.configure(OperatorOptions(namespaces=namespaces, ca_bundle=args.ca_bundle, liveness=args.liveness,
                                       probe_concurrency=args.probe_concurrency,
                                       keycloak_concurrency=args.keycloak_concurrency,
                                       namespaced_connections=not args.no_namespaced_connections,
                                       workers=args.workers,
                                       mailconfig_selector=shard_selector(args.shard,
                                                                          exclude_sharded=args.exclude_sharded),
                                       bridge=bridge))
    from kcmail import leader

    identity = leader.own_identity()
    options = kopf_options(namespaces, liveness=args.liveness, identity=identity)
    if args.no_leader_election:
        kopf.run(**options)
        return 0
    # Losing the Lease ends the process at once (exit status 3, kcmail.leader); stopped by a signal while
    # following, it exits 0 like a leader that stopped.
    asyncio.run(_lead(args, identity, lambda stop: kopf.operator(stop_flag=stop, **options)))
    return 0


def kopf_options(namespaces: tuple[str, ...], *, liveness: str | None, identity: str) -> dict[str, Any]:
    """What ``kopf.run``/``kopf.operator`` are given.

    Standalone: kopf peering would pause only kopf's own handlers, not kcmail's MailConfig watch and work
    queue (kcmail.controller); the Lease election (kcmail.leader) decides which process runs kopf at all.
    The identity is given too, the Lease's own: kopf would otherwise name itself after the user from the
    password database, and a container's numeric user (10001, or whatever ``runAsUser`` a cluster assigns)
    has no entry there, which ended every pod at start-up with ``getpwuid(): uid not found``.
    """
    return {"clusterwide": not namespaces, "namespaces": namespaces, "liveness_endpoint": liveness,
            "standalone": True, "identity": identity}


async def _lead(args: argparse.Namespace, identity: str,
                operate: Callable[[asyncio.Event], Awaitable[None]]) -> bool:
    from kcmail import leader
    from kcmail.apisession import logged_in_kube

    namespace = args.leader_election_namespace or leader.default_namespace(
        leader.SERVICE_ACCOUNT_NAMESPACE, defaults.LEADER_ELECTION_NAMESPACE)
    # Two connections: a renewal, and a release while one is in flight.
    async with logged_in_kube(connections=2) as kube:
        elector = leader.Elector(kube, namespace, lease_name(args.leader_election_id, args.shard),
                                 identity)
        return await leader.lead(elector, operate, liveness=args.liveness)


def lease_name(leader_election_id: str | None, shard: str | None) -> str:
    """The Lease of this process's election: each shard elects its own leader (pure)."""
    if leader_election_id is not None:
        return leader_election_id
    return defaults.LEADER_ELECTION_ID if shard is None else f"{defaults.LEADER_ELECTION_ID}-shard-{shard}"


def _shard(value: str) -> str:
    """A shard's name: a label value that also fits in the name of its Lease."""
    if not NAMESPACE_NAME.fullmatch(value) or len(value) > 50:
        raise argparse.ArgumentTypeError(f"{value!r} is not a shard name (lower-case letters, digits and '-', at "
                                         "most 50, starting and ending with a letter or digit)")
    return value


def _metrics_address(value: str) -> tuple[str, int] | None:
    try:
        return metrics.parse_address(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _namespace(value: str) -> str:
    """A namespace's exact name: a pattern would watch nothing (kcmail's Secret watch asks for this name)."""
    if not NAMESPACE_NAME.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a namespace name (lower-case letters, digits and "
                                         "'-', at most 63, starting and ending with a letter or digit)")
    return value


def _object_name(value: str) -> str:
    if not OBJECT_NAME.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not an object name (lower-case letters, digits, '-' and "
                                         "'.', at most 253, starting and ending with a letter or digit)")
    return value


def _bridge_url(value: str) -> str:
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme != "https" or not parsed.hostname or len(value) > 255:
        raise argparse.ArgumentTypeError(f"{value!r} is not an https:// URL of at most 255 characters")
    return value


def _positive_int(value: str) -> int:
    """A bound on work at once: 0 or less would let nothing through."""
    problem = f"needs a whole number of 1 or more, not {value!r}"
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(problem) from None
    if number < 1:
        raise argparse.ArgumentTypeError(problem)
    return number


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kcmail", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    run = subparsers.add_parser("run", help="run the operator")
    run.add_argument("-n", "--namespace", action="append", type=_namespace,
                     help="watch only this namespace (repeat for several); default: all namespaces")
    run.add_argument("--ca-bundle", help="PEM file of extra CAs trusted for Keycloak, token endpoints and SMTP")
    run.add_argument("--probe-concurrency", type=_positive_int, default=defaults.PROBE_CONCURRENCY, metavar="N",
                     help="SMTP probes running at once across all MailConfigs (default %(default)s)")
    run.add_argument("--keycloak-concurrency", type=_positive_int, default=defaults.KEYCLOAK_CONCURRENCY,
                     metavar="N", help="Keycloak admin API calls in flight at once through each Connection; the "
                                       "others wait their turn in kcmail (default %(default)s)")
    run.add_argument("--no-namespaced-connections", action="store_true",
                     help="refuse KeycloakConnections (the namespaced kind): MailConfigs may use only "
                          "ClusterKeycloakConnections, so tenants cannot choose a Keycloak endpoint")
    run.add_argument("--liveness", help="serve a liveness endpoint, e.g. http://0.0.0.0:8081/healthz")
    run.add_argument("--metrics-address", type=_metrics_address, default=metrics.DEFAULT_ADDRESS,
                     help="serve Prometheus metrics at http://HOST:PORT/metrics; 'off' serves none "
                          f"(default {metrics.DEFAULT_ADDRESS})")
    run.add_argument("--leader-election-namespace", type=_namespace, metavar="NAMESPACE",
                     help="namespace of the Lease that elects the one acting operator; default: the pod's own, "
                          f"outside a cluster {defaults.LEADER_ELECTION_NAMESPACE}")
    run.add_argument("--leader-election-id", type=_object_name, default=None, metavar="NAME",
                     help="name of that Lease: every `kcmail run` with the same Lease takes part in one election "
                          f"(default {defaults.LEADER_ELECTION_ID}, or {defaults.LEADER_ELECTION_ID}-shard-NAME "
                          "with --shard)")
    run.add_argument("--workers", type=_positive_int, default=defaults.WORKERS, metavar="N",
                     help="MailConfig passes running at once (default %(default)s)")
    sharding = run.add_mutually_exclusive_group()
    sharding.add_argument("--shard", type=_shard, metavar="NAME",
                          help="act only on MailConfigs labelled kcmail.io/shard=NAME (the API server filters "
                               "them), with a Lease of the shard's own")
    sharding.add_argument("--exclude-sharded", action="store_true",
                          help="act only on MailConfigs without a kcmail.io/shard label: the default shard "
                               "beside operators run with --shard")
    bridge = run.add_argument_group("the Google token bridge (docs/guides/google.md)")
    bridge.add_argument("--bridge-url", type=_bridge_url, metavar="URL",
                        help="the token URL Keycloak and the probe use for MailConfigs with "
                             "auth.xoauth2.googleServiceAccount, e.g. https://kcmail-bridge.kcmail.svc:8443/token")
    bridge.add_argument("--bridge-registry", type=namespaced_name, metavar="NAMESPACE/NAME",
                        help="the Secret kcmail keeps the bridge's clients in (kcmail bridge --clients-secret); "
                             "made when missing")
    run.add_argument("--no-leader-election", action="store_true",
                     help="act at once without a Lease; only where no other kcmail can run (tests, benchmarks)")
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    run.add_argument("--log-format", choices=("text", "json"), default="text",
                     help="text lines (default) or one JSON object per line, for log collectors")
    run.set_defaults(handler=_run)
    probe_cli.register(subparsers)
    adopt_cli.register(subparsers)
    bridge_cli.register(subparsers)
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
