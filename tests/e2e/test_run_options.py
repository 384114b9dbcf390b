"""`kcmail run` options: ``-n`` limits what it watches, ``--liveness`` serves a health check, SIGTERM stops it.

Each test starts its own ``kcmail run -v -n <namespace>``. The session operator may run beside it (it
watches every namespace, so it reconciles these objects too); the assertions therefore rest on what
this process itself logged and on what it did or did not change, never on who wrote a status.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from kcmail.devenv import operator_env
from kcmail.devenv.environment import Environment
from kcmail.devenv.processes import ProcessRegistry, ServerProcess, free_port, wait_until

pytestmark = pytest.mark.e2e

# kopf serves the Connections; kcmail watches MailConfigs and Secrets itself (kcmail.controller, secretwatch).
NAMESPACED_KINDS = {"keycloakconnections.v1alpha1.kcmail.io"}
WATCH_STARTED = re.compile(r"Starting the watch-stream for (\S+) (?:in '([^']+)'|(cluster-wide))")
# kcmail's own watch of the Secrets' metadata (kcmail.secretwatch), not kopf's.
SECRET_WATCH = re.compile(r"Secret watch (\S+): listing")
MAILCONFIG_WATCH = re.compile(r"MailConfig watch (\S+): listing")


@dataclass
class NamespacedOperator:
    process: ServerProcess
    namespace: str
    liveness: str

    def log(self) -> str:
        return self.process.log.read_text(errors="replace")


def _space(env: Environment) -> tuple[str, str]:
    """A new namespace and a new realm of the session Keycloak named ``realm-<namespace>``."""
    suffix = uuid.uuid4().hex[:8]
    namespace, realm = f"ro-{suffix}", f"realm-ro-{suffix}"
    operator_env.apply(env, operator_env.namespace(namespace))
    operator_env.create_realm(env, realm)
    return namespace, realm


def _mail(env: Environment, namespace: str, realm: str) -> list[dict]:
    return [operator_env.issuer_secret(env, namespace, "smtp-oauth"),
            operator_env.xoauth2_mailconfig(env, namespace, "mail", realm, secret_name="smtp-oauth")]


def _get(env: Environment, namespace: str, name: str = "mail") -> dict:
    result = operator_env.kubectl(env, "-n", namespace, "get", "mailconfig", name, "-o", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _wait_ready(env: Environment, namespace: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    obj: dict = {}
    while time.monotonic() < deadline:
        obj = _get(env, namespace)
        ready = next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == "Ready"), None)
        current = obj["status"].get("observedGeneration") == obj["metadata"]["generation"] if ready else False
        if ready and ready["status"] == "True" and current:
            return obj
        time.sleep(0.5)
    raise AssertionError(f"{namespace}/mail not Ready in {timeout} s: {json.dumps(obj.get('status'))}")


@pytest.fixture
def namespaced_operator(kcmail_installed: Environment, tmp_path_factory) -> Iterator[NamespacedOperator]:
    namespace, _ = _space(kcmail_installed)
    registry = ProcessRegistry(tmp_path_factory.mktemp("operator-namespaced"))
    liveness = f"http://127.0.0.1:{free_port()}/healthz"
    process = operator_env.start_operator(kcmail_installed, registry, name="operator-namespaced",
                                          args=["-v", "-n", namespace, "--liveness", liveness])
    try:
        wait_until(lambda: "MailConfigs listed" in process.log.read_text(errors="replace"),
                   server=process, what="its listing of MailConfigs", timeout=60)
        yield NamespacedOperator(process, namespace, liveness)
    finally:
        registry.stop_all()


def test_run_with_namespace_watches_only_that_namespace(kcmail_installed, namespaced_operator):
    env, own = kcmail_installed, namespaced_operator.namespace
    own_realm = f"realm-{own}"
    other, other_realm = _space(env)
    # The other namespace's MailConfig comes first: a watch over all namespaces would report it before ours.
    operator_env.apply(env, *_mail(env, other, other_realm))
    operator_env.apply(env, *_mail(env, own, own_realm))
    _wait_ready(env, own)
    wait_until(lambda: f"/namespaces/{own}/secrets/smtp-oauth" in namespaced_operator.log(),
               server=namespaced_operator.process, what=f"reading the Secret of {own}/mail", timeout=60)
    # More activity in the other namespace while this operator runs.
    operator_env.apply(env, operator_env.secret(other, "smtp-oauth", {"client-id": env.issuer_client_id,
                                                                      "client-secret": "changed"}))
    operator_env.kubectl(env, "-n", other, "annotate", "--overwrite", "mailconfig", "mail",
                         f"kcmail.io/requested-at={uuid.uuid4()}")
    time.sleep(2)

    log = namespaced_operator.log()
    watches = {(m.group(1), m.group(2) or m.group(3)) for m in WATCH_STARTED.finditer(log)}
    # Besides these, kopf watches namespaces and CRDs cluster-wide to discover what to serve, and the
    # cluster-scoped Connection kind can only be watched cluster-wide.
    assert {(kind, where) for kind, where in watches if kind in NAMESPACED_KINDS} == {
        (kind, own) for kind in NAMESPACED_KINDS}, sorted(watches)
    assert not any(kind.startswith("secrets") for kind, _ in watches), sorted(watches)
    assert set(SECRET_WATCH.findall(log)) == {f"/api/v1/namespaces/{own}/secrets"}
    assert set(MAILCONFIG_WATCH.findall(log)) == {f"/apis/kcmail.io/v1alpha1/namespaces/{own}/mailconfigs"}
    # It reads cluster-scoped Connections wherever they are, but nothing of the other namespace.
    assert other not in log


def test_liveness_endpoint_answers_200_while_running(namespaced_operator):
    deadline = time.monotonic() + 30
    response = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(namespaced_operator.liveness, timeout=5)
        except httpx.TransportError:
            time.sleep(0.5)
            continue
        if response.status_code == 200:
            break
        time.sleep(0.5)
    assert response is not None, f"nothing answered at {namespaced_operator.liveness}"
    assert response.status_code == 200, response.text
    assert response.json()["keycloak-clients"] == "ok"


def test_sigterm_stops_the_operator_within_seconds_and_leaves_finalizers(kcmail_installed, namespaced_operator):
    env, own = kcmail_installed, namespaced_operator.namespace
    own_realm = f"realm-{own}"
    operator_env.apply(env, *_mail(env, own, own_realm))
    _wait_ready(env, own)
    wait_until(lambda: f"MailConfig {own}/mail: reconciled: " in namespaced_operator.log(),
               server=namespaced_operator.process, what="a pass of the MailConfig", timeout=60)
    # A steady object: nothing writes to it while nothing changes.
    before = _get(env, own)
    for _ in range(20):
        time.sleep(1)
        now = _get(env, own)
        if now["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]:
            break
        before = now
    assert "kcmail.io/finalizer" in before["metadata"]["finalizers"]

    pid = namespaced_operator.process.pid
    started = time.monotonic()
    os.killpg(pid, signal.SIGTERM)
    status = None
    while time.monotonic() - started < 15:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(raw)
            break
        time.sleep(0.1)
    took = time.monotonic() - started

    assert status is not None, f"still running 15 s after SIGTERM; log:\n{namespaced_operator.log()[-3000:]}"
    assert took < 10, f"took {took:.1f} s to stop"
    assert status == 0, namespaced_operator.log()[-3000:]
    assert "Signal SIGTERM is received" in namespaced_operator.log()
    assert "MailConfig watch and work queue stopped" in namespaced_operator.log()
    after = _get(env, own)
    assert after["metadata"]["finalizers"] == before["metadata"]["finalizers"]
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
