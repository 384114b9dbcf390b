"""``kcmail dev``: bring the local environment of real servers up, down, or report on it."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from kcmail.devenv import components, environment, node, versions


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    dev = subparsers.add_parser("dev", help="the local environment of real servers (tests, demo, benchmarks)")
    dev.add_argument("--dir", type=Path, default=None,
                     help="state directory (default $KCMAIL_DEV_DIR or ~/.local/state/kcmail/dev)")
    actions = dev.add_subparsers(dest="dev_action", required=True)
    up = actions.add_parser("up", help="build what is missing, start every server, write dev.env")
    up.add_argument("--keycloak-version", choices=versions.KEYCLOAK_CHOICES, default=versions.KEYCLOAK)
    up.add_argument("--node", action="store_true",
                    help="also run a one-node cluster (kubelet, containerd) for the Helm chart; needs root and "
                         "Debian's containerd, runc and containernetworking-plugins; every server then serves "
                         "on the node's bridge address (docs/local-node.md)")
    build = actions.add_parser("build", help="only build or fetch the components into the cache")
    build.add_argument("--keycloak-version", choices=versions.KEYCLOAK_CHOICES, action="append",
                       help="repeat for several; default the pinned one")
    build.add_argument("--argocd-version", choices=versions.ARGOCD_CHOICES, action="append", default=[],
                       help="also build the Argo CD health evaluator the health-check tests run; repeat for several")
    build.add_argument("--node", action="store_true",
                       help="also build the kubelet, kube-controller-manager and kube-scheduler of `up --node`")
    actions.add_parser("image", help="build the operator's image from the Dockerfile with buildah (Debian bases "
                                     "made with mmdebstrap), cached, and export it for containerd")
    actions.add_parser("down", help="stop every server that `up` started")
    actions.add_parser("status", help="which servers are running")
    dev.set_defaults(handler=run)
    demo = subparsers.add_parser("demo", help="the operator's main job on the local environment, end to end")
    demo.add_argument("--dir", type=Path, default=None, help="state directory of the local environment")
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from kcmail.devenv import demo

    try:
        return demo.main(args.dir)
    except components.PrerequisiteMissing as error:
        print(f"kcmail demo: missing prerequisite: {error}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    try:
        return _dispatch(args)
    except components.PrerequisiteMissing as error:
        print(f"kcmail dev: missing prerequisite: {error}", file=sys.stderr)
        return 2
    except (components.BuildFailed, environment.AlreadyRunning, node.NodeUnavailable) as error:
        print(f"kcmail dev: {error}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.dev_action == "build":
        for version in args.keycloak_version or [versions.KEYCLOAK]:
            components.ensure_all(version)
        for version in args.argocd_version:
            components.build_argocd_health_eval(version)
        if args.node:
            components.build_kubernetes_node(versions.KUBERNETES)
        print(f"components cached under {components.cache_root() / 'components'}")
        return 0
    if args.dev_action == "image":
        from kcmail.devenv import image

        built = image.build()
        print(f"image {built.name}\n  docker-archive for containerd: {built.archive} (as {built.archive_name})")
        return 0
    if args.dev_action == "up":
        started = time.monotonic()
        env = environment.up(args.dir, keycloak_version=args.keycloak_version, with_node=args.node)
        print(f"The local environment is up ({time.monotonic() - started:.0f} s).\n"
              f"  Kubernetes {env.kubernetes_version}: {env.kube_api_url}\n"
              f"  Keycloak {env.keycloak_version}:   {env.keycloak_url}  (admin user {env.keycloak_admin_user})\n"
              f"  Token issuer:     {env.issuer_token_url}\n"
              f"  SMTP:             {env.smtp_host}:{env.smtp_starttls_port} (STARTTLS), "
              f"{env.smtp_host}:{env.smtp_tls_port} (TLS); received mail in {env.smtp_spool}\n"
              f"  Postfix+Dovecot:  {env.smtp_host}:{env.postfix_starttls_port} (STARTTLS), "
              f"{env.smtp_host}:{env.postfix_tls_port} (TLS), {env.smtp_host}:{env.postfix_short_line_port} "
              f"(STARTTLS, 2048-byte lines); received mail in {env.postfix_spool}\n"
              + (f"  Node {env.node_name}:  {env.node_address} (helm install: docs/local-node.md)\n"
                 if env.node_name else "")
              + f"Use it in this shell:  source {env.state_dir / environment.ENV_FILE}\n"
              f"Stop it:               kcmail dev down")
        return 0
    if args.dev_action == "down":
        stopped = environment.down(args.dir)
        print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
        return 0
    states = environment.status(args.dir)
    for name, alive in states.items():
        print(f"{name:16} {'running' if alive else 'stopped'}")
    if not states:
        print("nothing started")
    return 0 if states and all(states.values()) else 1
