"""``kcmail bridge``: serve the Google token bridge (docs/guides/google.md)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from kcmail.bridge.google import GOOGLE_TOKEN_URL

    bridge = subparsers.add_parser(
        "bridge", help="serve the token endpoint that lets Keycloak send through Gmail (Google Workspace)",
        description="An OAuth2 token endpoint for Keycloak's client-credentials request that answers with a Gmail "
                    "token from Google's JWT-bearer grant, made with a service account's key for one mailbox.")
    bridge.add_argument("--listen", default="0.0.0.0:8443", metavar="HOST:PORT",
                        help="address to serve HTTPS on (default %(default)s)")
    bridge.add_argument("--tls-cert", required=True, type=Path, help="PEM certificate chain the bridge presents")
    bridge.add_argument("--tls-key", required=True, type=Path, help="PEM private key of that certificate")
    bridge.add_argument("--clients", required=True, type=Path,
                        help="JSON registry of the clients (written by kcmail; read again when it changes)")
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
    from kcmail.bridge.google import GoogleTokens, google_grant
    from kcmail.bridge.registry import Registry
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
    endpoint = TokenEndpoint(Registry(args.clients), GoogleTokens(google_grant(args.google_token_url, verify)),
                             RateLimits(per_client=args.rate, total=args.rate * 10))
    asyncio.run(serve(endpoint, *address, context))
    return 0
