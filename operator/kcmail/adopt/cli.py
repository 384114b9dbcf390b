"""``kcmail audit`` and ``kcmail export``: read a Keycloak's realms through its admin API, never write."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from kcmail.adopt import target as targets
from kcmail.adopt.findings import Severity

EXIT_OK = 0
EXIT_FINDINGS = 1  # audit: findings at or above --fail-on; export: a realm had nothing to export
EXIT_CANNOT_RUN = 2  # bad options, or Keycloak (or the cluster) could not be read


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    audit = subparsers.add_parser(
        "audit", help="list every realm's mail settings and what is wrong with them",
        description="Read every realm's SMTP settings through Keycloak's admin API (it writes nothing) and report "
                    "the problems in them, each with a stable id and a severity. Exit 0: no finding at or above "
                    "--fail-on; 1: some; 2: the audit could not run.")
    targets.add_arguments(audit)
    audit.add_argument("-n", "--namespace", help="namespace of a KeycloakConnection given with --connection")
    audit.add_argument("--realm", action="append", default=[], metavar="NAME",
                       help="audit only this realm (repeat for several); default: every realm")
    audit.add_argument("--fail-on", choices=[s.value for s in Severity], default=Severity.ERROR.value,
                       help="exit 1 when a finding is at least this severe (default error)")
    audit.add_argument("--probe", action="store_true",
                       help="also meet each realm's token endpoint and SMTP server with its stored settings; "
                            "without --secrets-from it stops short of authenticating (the secrets are masked)")
    audit.add_argument("--secrets-from", type=Path, metavar="DIR",
                       help="directory of MailConfig and Secret YAML files (as `kcmail export -o DIR` writes them, "
                            "Secrets filled in) whose secrets let --probe authenticate; implies --probe")
    audit.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    audit.set_defaults(handler=audit_command)

    export = subparsers.add_parser(
        "export", help="write the MailConfig and Secret template that reproduce a realm's mail settings",
        description="Read realms' SMTP settings and write, per realm, a MailConfig that reproduces them and a "
                    "Secret template whose secret values say REPLACE-ME (Keycloak never shows them). Notes, as "
                    "YAML comments, say what the operator's first write would change.")
    targets.add_arguments(export)
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--realm", action="append", metavar="NAME", help="export this realm (repeat for several)")
    which.add_argument("--all", action="store_true", help="export every realm that has SMTP settings")
    export.add_argument("-n", "--namespace", required=True,
                        help="namespace of the generated MailConfigs and Secrets (and of a KeycloakConnection "
                             "given with --connection)")
    export.add_argument("--connection-ref", type=targets.connection_ref, metavar="[KIND/]NAME",
                        help="the Connection the MailConfigs refer to (default: the one given with --connection)")
    export.add_argument("-o", "--output-dir", type=Path, metavar="DIR",
                        help="write one file per realm, DIR/NAME.yaml, instead of printing to stdout")
    export.set_defaults(handler=export_command)


def _fail(command: str, message: str) -> int:
    print(f"kcmail {command}: {message}", file=sys.stderr)
    return EXIT_CANNOT_RUN


def audit_command(args: argparse.Namespace) -> int:
    return asyncio.run(_audit(args))


async def _audit(args: argparse.Namespace) -> int:
    # Imported here, as in target.py: registering the commands must not load the clients.
    from kcmail.adopt.audit import run_audit
    from kcmail.adopt.live_probe import ProvidedSecret, load_secrets
    from kcmail.adopt.report import render_json, render_text
    from kcmail.keycloak import KeycloakFailure
    from kcmail.probe_cli import InputError

    threshold = Severity(args.fail_on)
    probe = args.probe or args.secrets_from is not None
    try:
        where = await targets.target(args)
        secrets: dict[str, ProvidedSecret] = load_secrets(args.secrets_from) if args.secrets_from else {}
        tls = targets.trust(args.ca_bundle) if probe else None
    except (targets.TargetError, InputError) as error:
        return _fail("audit", str(error))
    keycloak = where.client()
    try:
        audit = await run_audit(keycloak, only=args.realm, probe=probe, secrets=secrets, tls=tls)
    except KeycloakFailure as error:
        return _fail("audit", f"{error.failure.reason.value}: {error.failure.message}")
    finally:
        await keycloak.aclose()
    sys.stdout.write(render_json(audit, threshold) if args.json else render_text(audit, threshold, probed=probe))
    return EXIT_FINDINGS if audit.failed(threshold) else EXIT_OK


def export_command(args: argparse.Namespace) -> int:
    return asyncio.run(_export(args))


async def _export(args: argparse.Namespace) -> int:
    from kcmail.adopt.audit import read_realms
    from kcmail.adopt.export import Export, export_realm, render_yaml
    from kcmail.keycloak import KeycloakFailure
    from kcmail.redact import redact
    from kcmail.smtp_settings import version_text

    try:
        where = await targets.target(args)
    except targets.TargetError as error:
        return _fail("export", str(error))
    connection_ref = args.connection_ref or where.connection
    if connection_ref is None:
        return _fail("export", "name the Connection the MailConfigs will use: --connection-ref KIND/NAME "
                               "(e.g. ClusterKeycloakConnection/main)")
    keycloak = where.client()
    try:
        version = await keycloak.version(fresh=True)
        realms = await read_realms(keycloak, args.realm or ())
    except KeycloakFailure as error:
        return _fail("export", f"{error.failure.reason.value}: {error.failure.message}")
    finally:
        await keycloak.aclose()
    exports: list[Export] = []
    status = EXIT_OK
    for realm, smtp, unreadable in realms:
        if smtp is None:
            print(f"kcmail export: realm {redact(realm)}: {unreadable}", file=sys.stderr)
            status = EXIT_FINDINGS
        elif not any(smtp.values()):
            print(f"kcmail export: realm {redact(realm)} has no SMTP settings: nothing to export", file=sys.stderr)
            status = status if args.all else EXIT_FINDINGS
        else:
            exports.append(export_realm(realm, smtp, version, namespace=args.namespace,
                                        connection_ref=connection_ref))
    source = f"{where.url.rstrip('/')} (Keycloak {version_text(version)})"
    if args.output_dir is None:
        sys.stdout.write(render_yaml(exports, source=source))
        return status
    try:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        for export in exports:
            path = args.output_dir / f"{export.name}.yaml"
            # Readable by its owner alone from the start, since it is meant to receive a secret; and never
            # over an existing file, which may hold a secret already filled in.
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                file.write(render_yaml([export], source=source))
            print(f"wrote {path}", file=sys.stderr)
    except FileExistsError as error:
        return _fail("export", f"{error.filename} exists and may hold a filled-in secret: move it away, or "
                               "give another -o")
    except OSError as error:
        return _fail("export", f"cannot write to {args.output_dir}: {error.strerror or error}")
    return status
