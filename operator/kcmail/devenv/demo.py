"""`kcmail demo`: the operator's main job, end to end, on the local environment of real servers.

Brings the environment up (or reuses the running one), installs the CRDs and a Connection, starts the
operator, applies a Secret and a MailConfig with kubectl, waits for Ready, has Keycloak send a mail and
shows it as the SMTP server received it, with the identity that authenticated over XOAUTH2.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from kcmail.devenv import environment, operator_env
from kcmail.devenv.clients import KeycloakAdminAPI
from kcmail.devenv.environment import ENV_FILE, Environment
from kcmail.devenv.mail_spool import wait_for_message
from kcmail.devenv.processes import ProcessRegistry

NAMESPACE = "tenant-acme"
NAME = "acme"
REALM = "acme"
READY_TIMEOUT = 120.0


def _say(text: str) -> None:
    print(text, flush=True)


def _environment(state_dir: Path) -> Environment:
    env_file = state_dir / ENV_FILE
    running = environment.status(state_dir)
    if env_file.exists() and running and all(running.values()):
        _say(f"Using the local environment already running in {state_dir}.")
        return Environment.load(env_file)
    _say("Starting the local environment of real servers (the first run builds them: several minutes).")
    return environment.up(state_dir)


def manifests(env: Environment) -> list[dict[str, Any]]:
    """The Secret and MailConfig a user would keep in Git, pointed at the local servers."""
    return [
        operator_env.namespace(NAMESPACE),
        operator_env.issuer_secret(env, NAMESPACE, "acme-smtp-oauth"),
        operator_env.xoauth2_mailconfig(env, NAMESPACE, NAME, REALM, secret_name="acme-smtp-oauth"),
    ]


def _wait_ready(env: Environment) -> dict[str, Any]:
    deadline = time.monotonic() + READY_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        result = operator_env.kubectl(env, "-n", NAMESPACE, "get", "mailconfig", NAME, "-o", "json")
        if result.returncode == 0:
            obj = json.loads(result.stdout)
            ready = next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == "Ready"), None)
            if ready and f"{ready['status']} {ready['reason']}" != last:
                last = f"{ready['status']} {ready['reason']}"
                _say(f"  Ready={ready['status']} ({ready['reason']}): {ready['message']}")
            if ready and ready["status"] == "True":
                return obj
        time.sleep(1)
    raise RuntimeError(f"MailConfig {NAMESPACE}/{NAME} not Ready within {READY_TIMEOUT:.0f} s")


def run(state_dir: Path | None = None) -> int:
    state_dir = (state_dir or environment.default_state_dir()).resolve()
    env = _environment(state_dir)
    kubectl = f"{env.kubectl} --kubeconfig={env.kubeconfig}"

    _say("\n1. Installing the CRDs and a ClusterKeycloakConnection to the local Keycloak.")
    operator_env.install_crds(env)
    operator_env.install_connection(env)

    registry = ProcessRegistry(state_dir)
    if not any(p.name == "operator" and p.alive() for p in registry.load()):
        process = operator_env.start_operator(env, registry)
        _say(f"\n2. Started the operator (`kcmail run`); its log: {process.log}")
    else:
        _say("\n2. The operator is already running.")

    manifest = state_dir / "demo-mailconfig.yaml"
    manifest.write_text(yaml.safe_dump_all(manifests(env), sort_keys=False))
    _say(f"\n3. Applying a Secret and a MailConfig:\n   {kubectl} apply -f {manifest}")
    result = operator_env.kubectl(env, "apply", "-f", str(manifest))
    if result.returncode != 0:
        raise RuntimeError(f"kubectl apply failed: {result.stderr.strip()}")
    _say("   " + result.stdout.strip().replace("\n", "\n   "))

    _say("\n4. Waiting for the MailConfig to become Ready:")
    _wait_ready(env)
    listing = operator_env.kubectl(env, "-n", NAMESPACE, "get", "mailconfig")
    _say("   " + listing.stdout.strip().replace("\n", "\n   "))

    admin = KeycloakAdminAPI(env)
    stored = admin.realm(REALM).get("smtpServer") or {}
    _say(f"\n5. Keycloak's realm '{REALM}' now holds (secret masked by Keycloak itself):")
    for key in ("host", "port", "starttls", "authType", "user", "authTokenUrl", "authTokenScope",
                "authTokenClientId", "authTokenClientSecret"):
        _say(f"   {key:22} {stored.get(key, '')}")

    _say("\n6. Asking Keycloak to send a test mail (it fetches a token from the issuer and uses XOAUTH2):")
    since = datetime.datetime.now(datetime.UTC)
    response = admin.request("POST", f"/{REALM}/testSMTPConnection", json=stored)
    if response.status_code != 204:
        raise RuntimeError(f"Keycloak could not send: {response.status_code} {response.text[:200]}")
    message = wait_for_message(env.smtp_spool, lambda m: m.received_at >= since
                               and env.keycloak_admin_email in m.rcpt_tos, timeout=30)
    auth = message.auth
    _say(f"   delivered at {message.received_at:%H:%M:%S} over {'TLS' if message.tls else 'plain text'}\n"
         f"   From: {message.mail_from}  To: {', '.join(message.rcpt_tos)}\n"
         f"   Subject: {message.subject}\n"
         f"   authenticated with {auth.mechanism if auth else 'nothing'} as {auth.user if auth else '-'}"
         f" (OAuth2 client {auth.client_id if auth else '-'})")

    _say(f"\nDone. The environment keeps running; try it:\n"
         f"   source {state_dir / ENV_FILE}\n"
         f"   {kubectl} -n {NAMESPACE} describe mailconfig {NAME}\n"
         f"Tear everything down (servers and operator):  .venv/bin/kcmail dev down")
    return 0


def main(state_dir: Path | None = None) -> int:
    try:
        return run(state_dir)
    except RuntimeError as error:
        print(f"kcmail demo: {error}", file=sys.stderr)
        return 1
