"""``kcmail bridge``: serve the Google token bridge (docs/guides/google.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kcmail.kube import Kube


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from kcmail.bridge import GOOGLE_TOKEN_URL
    from kcmail.options import namespaced_name

    bridge = subparsers.add_parser(
        "bridge", help="serve the token endpoint that lets Keycloak send through Gmail (Google Workspace)",
        description="An OAuth2 token endpoint for Keycloak's client-credentials request that answers with a Gmail "
                    "token from Google's JWT-bearer grant, made with a service account's key for one mailbox.")
    bridge.add_argument("--listen", default="0.0.0.0:8443", metavar="HOST:PORT",
                        help="address to serve HTTPS on (default %(default)s)")
    bridge.add_argument("--tls-cert", required=True, type=Path, help="PEM certificate chain the bridge presents")
    bridge.add_argument("--tls-key", required=True, type=Path, help="PEM private key of that certificate")
    clients = bridge.add_mutually_exclusive_group(required=True)
    clients.add_argument("--clients", type=Path,
                         help="JSON file of the clients, written by hand (read again when it changes)")
    clients.add_argument("--clients-secret", type=namespaced_name, metavar="NAMESPACE/NAME",
                         help="the registry Secret kcmail run --bridge-registry keeps, read through the API "
                              "(the pod's service account, else $KUBECONFIG)")
    bridge.add_argument("--google-token-url", default=GOOGLE_TOKEN_URL,
                        help="Google's token endpoint (default %(default)s); the key files' own token_uri is "
                             "never used")
    bridge.add_argument("--ca-bundle", type=Path,
                        help="PEM CAs trusted for the token endpoint instead of the system's")
    bridge.add_argument("--rate", type=float, default=5.0, metavar="N",
                        help="token requests a second allowed per client id, bursts of twice that "
                             "(default %(default)s); ten times that in total")
    bridge.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from kcmail import redact
    from kcmail.apisession import logged_in_kube
    from kcmail.bridge.google import GoogleTokens, google_grant
    from kcmail.bridge.registry import FileRegistry, Registry, SecretRegistry
    from kcmail.bridge.server import RateLimits, TokenEndpoint, serve, tls_context
    from kcmail.metrics import parse_address

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    redact.install_log_filter()
    try:
        address = parse_address(args.listen)
    except ValueError:
        address = None
    if address is None or args.rate <= 0:
        print("kcmail bridge: --listen needs HOST:PORT and --rate a positive number", file=sys.stderr)
        return 2
    try:
        context = tls_context(str(args.tls_cert), str(args.tls_key))
    except (OSError, ValueError) as error:
        print(f"kcmail bridge: cannot load the TLS certificate and key: {error}", file=sys.stderr)
        return 2
    verify: str | bool = str(args.ca_bundle) if args.ca_bundle else True

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            registry: Registry
            if args.clients_secret is None:
                registry = FileRegistry(args.clients)
            else:
                namespace, name = args.clients_secret
                kube = await stack.enter_async_context(logged_in_kube())
                registry = SecretRegistry(functools.partial(_secret_data, kube, namespace, name))
                await registry.refresh(missed=False)
            endpoint = TokenEndpoint(registry, GoogleTokens(google_grant(args.google_token_url, verify)),
                                     RateLimits(per_client=args.rate, total=args.rate * 10))
            await serve(endpoint, *address, context)

    asyncio.run(main())
    return 0


async def _secret_data(kube: Kube, namespace: str, name: str) -> Mapping[str, str] | None:
    secret = await kube.secret(namespace, name)
    return None if secret is None else secret.data
