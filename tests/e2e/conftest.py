"""The whole operator (`kcmail run` as a process) against the local environment.

One operator serves the session; each test works in its own namespace and its own Keycloak realm, so
tests never see each other's objects.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from kcmail.devenv import operator_env
from kcmail.devenv.clients import KeycloakAdminAPI
from kcmail.devenv.environment import Environment
from kcmail.devenv.mail_spool import RecordedMessage, wait_for_message
from kcmail.devenv.processes import ProcessRegistry, ServerProcess, free_port, port_open, wait_until

REPO = Path(__file__).resolve().parents[2]


@dataclass
class QuickBench:
    """`python -m bench --quick`, started when collection ends: it brings up an environment of its own and
    spends most of its minutes waiting on it, so it runs beside the other tests rather than after them."""

    process: subprocess.Popen[str]
    out: Path

    @classmethod
    def start(cls) -> QuickBench:
        out = Path(tempfile.mkdtemp(prefix="kcmail-quick-bench-"))
        # Never the session's environment: another operator there would reconcile its MailConfigs.
        env = {key: value for key, value in os.environ.items() if key != "KCMAIL_DEVENV_FILE"}
        with (out / "bench.log").open("w") as log:
            process = subprocess.Popen([sys.executable, "-m", "bench", "--quick", "--state-dir", str(out / "state"),
                                        "--output", str(out / "benchmarks.md")], cwd=REPO, env=env, text=True,
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return cls(process, out)

    def result(self, timeout: float) -> tuple[int, str]:
        """Its exit status and the end of its output, once it has finished."""
        code = self.process.wait(timeout=timeout)
        return code, (self.out / "bench.log").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        """Interrupt a run the session no longer waits for; SIGINT lets it stop its environment first."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


_quick_bench: QuickBench | None = None


def pytest_collection_finish(session: pytest.Session) -> None:
    global _quick_bench
    wanted = any(item.nodeid.startswith("tests/e2e/test_bench_quick.py") for item in session.items)
    if wanted and not session.config.option.collectonly:
        _quick_bench = QuickBench.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _quick_bench is not None:
        _quick_bench.stop()
        shutil.rmtree(_quick_bench.out, ignore_errors=True)


@pytest.fixture(scope="session")
def quick_bench() -> QuickBench:
    if _quick_bench is None:
        pytest.fail("the quick benchmark was not started at collection (pytest_collection_finish)")
    return _quick_bench


@dataclass
class Operator:
    registry: ProcessRegistry
    process: ServerProcess
    env: Environment
    metrics_port: int
    # The token bridge the operator sends googleServiceAccount MailConfigs through (a process of its own).
    bridge: ServerProcess
    bridge_url: str

    def start(self) -> None:
        self.process = operator_env.start_operator(self.env, self.registry, metrics_port=self.metrics_port,
                                                   args=operator_env.bridge_args(self.bridge_url))

    def log(self) -> str:
        return self.process.log.read_text(errors="replace")

    def metrics(self) -> str:
        """What Prometheus would scrape from /metrics now (once the operator, perhaps just started, listens)."""
        wait_until(lambda: port_open(self.metrics_port), server=self.process, what="its metrics port", timeout=60)
        response = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10)
        response.raise_for_status()
        return response.text

    def restart(self, while_down: Callable[[], Any] | None = None) -> None:
        """Stop `kcmail run` and start a new one on the same metrics port; it appends to the same log.

        ``while_down`` runs between the two: what changes while no operator watches.
        """
        self.registry.stop_all()
        if while_down is not None:
            while_down()
        self.start()


@pytest.fixture(scope="session")
def kcmail_installed(devenv: Environment) -> Environment:
    operator_env.install_crds(devenv)
    operator_env.install_connection(devenv)
    return devenv


# Package scope: the operator stops when the e2e tests end, so it never reconciles objects other tests own.
@pytest.fixture(scope="package")
def operator(kcmail_installed: Environment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    registry = ProcessRegistry(tmp_path_factory.mktemp("operator"))
    bridges = ProcessRegistry(tmp_path_factory.mktemp("bridge"))
    bridge, bridge_url = operator_env.start_bridge(kcmail_installed, bridges)
    operator = Operator(registry, bridge, kcmail_installed, free_port(), bridge, bridge_url)
    try:
        operator.start()
        yield operator
    finally:
        registry.stop_all()
        bridges.stop_all()


@dataclass
class Tenant:
    """A namespace and a realm of a test's own."""

    env: Environment
    namespace: str
    realm: str
    admin: KeycloakAdminAPI

    def apply(self, *objects: dict[str, Any]) -> None:
        operator_env.apply(self.env, *objects)

    def kubectl(self, *args: str, stdin: str | None = None):
        return operator_env.kubectl(self.env, "-n", self.namespace, *args, stdin=stdin)

    def secret(self, name: str = "smtp-oauth", **data: str) -> dict[str, Any]:
        if not data:
            return operator_env.issuer_secret(self.env, self.namespace, name)
        return operator_env.secret(self.namespace, name, data)

    def mailconfig(self, name: str = "mail", secret_name: str = "smtp-oauth", realm: str | None = None,
                   **spec: Any) -> dict[str, Any]:
        """``realm``: another realm than the test's own."""
        return operator_env.xoauth2_mailconfig(self.env, self.namespace, name, realm or self.realm,
                                               secret_name=secret_name, **spec)

    def get(self, kind: str, name: str) -> dict[str, Any]:
        result = self.kubectl("get", kind, name, "-o", "json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def condition(self, name: str, kind: str = "Ready") -> dict[str, Any] | None:
        status = self.get("mailconfig", name).get("status") or {}
        return next((c for c in status.get("conditions", []) if c["type"] == kind), None)

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], name: str = "mail", *,
                 timeout: float = 60, what: str = "the expected status",
                 resource: str = "mailconfig") -> dict[str, Any]:
        """Poll the MailConfig (or another ``resource``) until ``predicate(object)`` holds; fail with the last
        status seen."""
        deadline = time.monotonic() + timeout
        obj: dict[str, Any] = {}
        while time.monotonic() < deadline:
            obj = self.get(resource, name)
            if predicate(obj):
                return obj
            time.sleep(0.5)
        raise AssertionError(f"{what} not reached in {timeout} s; status: {json.dumps(obj.get('status'), indent=1)}")

    def wait_condition(self, status: str, reason: str | None = None, name: str = "mail", kind: str = "Ready", *,
                       timeout: float = 60) -> dict[str, Any]:
        def holds(obj: dict[str, Any]) -> bool:
            meta, st = obj["metadata"], obj.get("status") or {}
            cond = next((c for c in st.get("conditions", []) if c["type"] == kind), None)
            return (cond is not None and cond["status"] == status and (reason is None or cond["reason"] == reason)
                    and st.get("observedGeneration") == meta.get("generation"))
        return self.wait_for(holds, name, timeout=timeout, what=f"{kind}={status} ({reason})")

    def wait_connection(self, status: str, reason: str | None = None, name: str = "kc", *,
                        resource: str = "keycloakconnection", timeout: float = 60) -> dict[str, Any]:
        """Poll a KeycloakConnection (or ClusterKeycloakConnection) until its current spec is Ready=``status``."""
        def holds(obj: dict[str, Any]) -> bool:
            st = obj.get("status") or {}
            cond = next((c for c in st.get("conditions", []) if c["type"] == "Ready"), None)
            return (cond is not None and cond["status"] == status and (reason is None or cond["reason"] == reason)
                    and st.get("observedGeneration") == obj["metadata"].get("generation"))
        return self.wait_for(holds, name, timeout=timeout, what=f"{resource} {name} Ready={status} ({reason})",
                             resource=resource)

    def smtp_server(self) -> dict[str, str]:
        return dict(self.admin.realm(self.realm).get("smtpServer") or {})

    def send_test_mail(self, client_id: str) -> RecordedMessage:
        """Keycloak's own "Test connection" with the settings the realm holds (it fills in the stored secret),
        and the mail the SMTP server received from it with a token of ``client_id``."""
        since = datetime.datetime.now(datetime.UTC)
        sent = self.admin.request("POST", f"/{self.realm}/testSMTPConnection", json=self.smtp_server())
        assert sent.status_code == 204, sent.text
        return wait_for_message(self.env.smtp_spool, lambda m: m.received_at >= since
                                and self.env.keycloak_admin_email in m.rcpt_tos
                                and m.auth is not None and m.auth.client_id == client_id, timeout=30)

    def realm_writes(self) -> int:
        """PUTs of the realm so far, counted by Keycloak's admin events (after ``admin.record_admin_events``)."""
        return len(self.admin.admin_events(self.realm, operation="UPDATE", resource_type="REALM"))

    def events(self, name: str = "mail") -> list[dict[str, Any]]:
        result = self.kubectl("get", "events", "--field-selector", f"involvedObject.name={name}", "-o", "json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["items"]


@pytest.fixture
def rotation_client(tenant) -> str:
    """The issuer client whose secret this test may regenerate (the SMTP server lets it send as no-reply@)."""
    client_id = tenant.env.issuer_rotation_client_id
    assert client_id, "this environment predates the rotation client: restart it with `kcmail dev down` and `up`"
    return client_id


@pytest.fixture
def tenant(kcmail_installed: Environment, keycloak_admin: KeycloakAdminAPI) -> Iterator[Tenant]:
    suffix = uuid.uuid4().hex[:8]
    namespace, realm = f"t-{suffix}", f"realm-{suffix}"
    operator_env.apply(kcmail_installed, operator_env.namespace(namespace))
    operator_env.create_realm(kcmail_installed, realm)
    yield Tenant(env=kcmail_installed, namespace=namespace, realm=realm, admin=keycloak_admin)
    # Every realm adds roles to the master admin's token; a few hundred leftover realms push it past
    # Keycloak's request-header limit (HTTP 431). The MailConfigs go first so none reports a lost realm.
    operator_env.kubectl(kcmail_installed, "-n", namespace, "delete", "mailconfigs", "--all", "--wait=false")
    keycloak_admin.request("DELETE", f"/{realm}")


@pytest.fixture
def alone(operator) -> Iterator[None]:
    """The session's operator stopped for the test, and started again after it: the test's own operators
    are then the only ones acting."""
    operator.registry.stop_all()
    try:
        yield
    finally:
        operator.start()
