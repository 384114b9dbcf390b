"""The floor of measure 1: a bare operator, the least a tool must do to act on a change of a MailConfig.

``python -m bench.bare_operator`` lists and then watches one object through the environment's
kube-apiserver; when an event carries a generation it has not applied, it GETs the realm, sets its
``smtpServer`` from the spec (the very map kcmail writes), PUTs it back and merge-patches the status with
``observedGeneration`` and an Applied condition, as kcmail's status says it. No queue, no ownership, no
probe, no retry, no Events, no metrics: what it spends is the floor of the path PATCH → watch event →
GET+PUT → status write → the harness's watch.

Its object is of a copy of the MailConfig CRD under the benchmark's own group (``FloorMailConfig``,
``bench.kcmail.io``): the same schema, validation and status subresource, so the API server does the same
work for its writes, while kcmail, which watches only ``kcmail.io``, never sees it. A suspended
MailConfig would not do: kcmail still wakes for it and writes a Suspended status over the floor's.

:class:`BareOperator` starts and stops the script for the harness; :func:`main` is the script.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import ssl
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from bench import workload
from bench.cluster import LABEL, Cluster
from bench.floor import BareAdmin
from kcmail.devenv.environment import ENV_FILE, Environment
from kcmail.devenv.processes import ProcessRegistry
from kcmail.spec import GROUP, VERSION

FLOOR_GROUP = f"bench.{GROUP}"
FLOOR_KIND = "FloorMailConfig"
FLOOR_PLURAL = "floormailconfigs"
CRD_NAME = f"{FLOOR_PLURAL}.{FLOOR_GROUP}"
_CRD_FILE = Path(__file__).resolve().parent.parent / "crds" / "mailconfigs.yaml"
# The script ends on its own after this long, so that none outlives a harness that died without stopping it.
LIFETIME_SECONDS = 3600.0
# One watch request lasts at most this long (the server closes it); then the script watches again.
_WATCH_SECONDS = 60
# Enough watch requests for the lifetime even if each ended at once after a failure and its pause.
_MAX_WATCHES = int(LIFETIME_SECONDS) * 2
_RETRY_PAUSE_SECONDS = 0.5
_ESTABLISHED_TIMEOUT = 60.0
Object = dict[str, Any]


def floor_crd(mailconfig_crd: Mapping[str, Any]) -> Object:
    """The MailConfig CRD renamed into the benchmark's group: the schema and subresources as they are.

    No short names or categories (``kubectl get mc`` must stay kcmail's), and the benchmark's label instead
    of kcmail's, which ``kcmail dev`` and the tests select kcmail's CRDs by.
    """
    spec = json.loads(json.dumps(mailconfig_crd["spec"]))
    spec["group"] = FLOOR_GROUP
    spec["names"] = {"kind": FLOOR_KIND, "listKind": f"{FLOOR_KIND}List", "plural": FLOOR_PLURAL,
                     "singular": FLOOR_KIND.lower()}
    return {"apiVersion": mailconfig_crd["apiVersion"], "kind": mailconfig_crd["kind"],
            "metadata": {"name": CRD_NAME, "labels": {LABEL: "floor"}}, "spec": spec}


def floor_object(mailconfig: Mapping[str, Any]) -> Object:
    """``mailconfig`` (a manifest) as a FloorMailConfig: the same metadata and spec."""
    copied = json.loads(json.dumps(mailconfig))
    copied["apiVersion"] = f"{FLOOR_GROUP}/{VERSION}"
    copied["kind"] = FLOOR_KIND
    return dict(copied)


def due(obj: Mapping[str, Any], applied_generation: int | None) -> int | None:
    """The generation to apply, or None: the one applied already, or one the status says is applied.

    The status counts only before the script has applied anything itself (its first listing): after that,
    its own memory says what it did, as an operator's would.
    """
    generation = obj["metadata"].get("generation")
    if not isinstance(generation, int) or generation == applied_generation:
        return None
    if applied_generation is None:
        status = obj.get("status") or {}
        applied = [c for c in status.get("conditions") or []
                   if c.get("type") == "Applied" and c.get("status") == "True"]
        if status.get("observedGeneration") == generation and applied:
            return None
    return generation


def status_patch(generation: int, now: datetime.datetime) -> Object:
    """The merge patch of the status subresource once ``generation`` is in the realm."""
    stamp = now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"status": {"observedGeneration": generation, "conditions": [
        {"type": "Applied", "status": "True", "reason": "Applied",
         "message": "the realm holds the spec's SMTP settings", "observedGeneration": generation,
         "lastTransitionTime": stamp}]}}


def events(lines: Iterator[str]) -> Iterator[Object]:
    """The watch events of a stream of JSON lines (blank keep-alive lines skipped)."""
    for line in lines:
        if line.strip():
            yield dict(json.loads(line))


def install_crd(cluster: Cluster) -> None:
    """Create (or update) the FloorMailConfig CRD and wait until the API server serves it."""
    crd = floor_crd(yaml.safe_load(_CRD_FILE.read_text()))
    extensions = client.ApiextensionsV1Api(cluster.api)
    try:
        extensions.create_custom_resource_definition(crd)
    except ApiException as error:
        if error.status != 409:
            raise
        extensions.patch_custom_resource_definition(CRD_NAME, {"spec": crd["spec"]})
    deadline = time.monotonic() + _ESTABLISHED_TIMEOUT
    while True:
        status = cluster.api.sanitize_for_serialization(
            extensions.read_custom_resource_definition_status(CRD_NAME)).get("status") or {}
        if any(c.get("type") == "Established" and c.get("status") == "True" for c in status.get("conditions") or []):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{CRD_NAME} not Established within {_ESTABLISHED_TIMEOUT:.0f} s")
        time.sleep(0.2)


def delete_crd(cluster: Cluster, timeout: float = 60.0) -> None:
    """Remove the CRD and with it every FloorMailConfig (the API server removes them itself)."""
    extensions = client.ApiextensionsV1Api(cluster.api)
    deadline = time.monotonic() + timeout
    try:
        extensions.delete_custom_resource_definition(CRD_NAME)
        while time.monotonic() < deadline:
            extensions.read_custom_resource_definition(CRD_NAME)
            time.sleep(0.5)
    except ApiException as error:
        if error.status != 404:
            raise
        return
    raise TimeoutError(f"{CRD_NAME} still present after {timeout:.0f} s")


class BareOperator:
    """The script as its own process, as kcmail is; its log stays in ``state_dir``."""

    def __init__(self, env: Environment, state_dir: Path, namespace: str, name: str) -> None:
        env_file = env.state_dir / ENV_FILE
        if not env_file.exists():
            raise RuntimeError(f"{env_file} is missing: the bare operator reads the environment from it")
        self._registry = ProcessRegistry(state_dir)
        # The env file holds credentials; its path, never its content, is on the command line.
        self.process = self._registry.start("bare-operator", [
            sys.executable, "-m", "bench.bare_operator", "--env-file", str(env_file), "--namespace", namespace,
            "--name", name], env={"PYTHONUNBUFFERED": "1"})

    def check(self) -> None:
        if not self.process.alive():
            raise RuntimeError(f"the bare operator exited; log {self.process.log}")

    def stop(self) -> None:
        self._registry.stop_all()


def _kube_client(env: Environment) -> httpx.Client:
    """httpx to the API server with the kubeconfig's client certificate (the kubernetes library reads it)."""
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(env.kubeconfig), client_configuration=configuration)
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    context.load_cert_chain(configuration.cert_file, configuration.key_file)
    return httpx.Client(base_url=configuration.host, verify=context, timeout=30)


def run(env: Environment, namespace: str, name: str, lifetime: float) -> None:
    """List, then watch from the listing's resourceVersion; apply each new generation as it arrives."""
    deadline = time.monotonic() + lifetime
    collection = f"/apis/{FLOOR_GROUP}/{VERSION}/namespaces/{namespace}/{FLOOR_PLURAL}"
    selector = f"metadata.name={name}"
    applied: int | None = None
    with _kube_client(env) as kube, contextlib.closing(BareAdmin(env)) as admin:
        admin.warm()

        def act(obj: Object) -> None:
            nonlocal applied
            generation = due(obj, applied)
            if generation is None:
                return
            smtp_server = workload.desired(env, obj)

            def mutate(representation: dict[str, Any]) -> None:
                representation["smtpServer"] = smtp_server

            admin.get_put(obj["spec"]["realm"], mutate)
            response = kube.patch(f"{collection}/{name}/status",
                                  content=json.dumps(status_patch(generation, datetime.datetime.now(datetime.UTC))),
                                  headers={"Content-Type": "application/merge-patch+json"})
            response.raise_for_status()
            applied = generation
            # The admin token is renewed here, while the harness reads the status, never in the next change.
            admin.warm()
            print(f"applied generation {generation}", file=sys.stderr)

        version: str | None = None
        for _ in range(_MAX_WATCHES):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                if version is None:
                    listed = kube.get(collection, params={"fieldSelector": selector})
                    listed.raise_for_status()
                    body = listed.json()
                    for item in body["items"]:
                        act(item)
                    version = str(body["metadata"]["resourceVersion"])
                params = {"watch": "true", "fieldSelector": selector, "resourceVersion": version,
                          "timeoutSeconds": str(max(1, min(_WATCH_SECONDS, int(remaining))))}
                with kube.stream("GET", collection, params=params,
                                 timeout=httpx.Timeout(30, read=_WATCH_SECONDS + 30)) as response:
                    response.raise_for_status()
                    for event in events(response.iter_lines()):
                        obj = event["object"]
                        if event["type"] == "ERROR":  # typically 410 Gone: list again
                            version = None
                            break
                        version = str(obj["metadata"]["resourceVersion"])
                        if event["type"] in ("ADDED", "MODIFIED"):
                            act(obj)
            except httpx.HTTPError as error:  # of the API server or Keycloak: the generation is not applied yet
                print(f"{type(error).__name__}; listing again", file=sys.stderr)
                version = None
                time.sleep(_RETRY_PAUSE_SECONDS)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_operator", description=__doc__.split("\n")[0])
    parser.add_argument("--env-file", type=Path, required=True, help="the environment's dev.env")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--lifetime", type=float, default=LIFETIME_SECONDS, help="seconds before it exits")
    args = parser.parse_args(argv)
    run(Environment.load(args.env_file), args.namespace, args.name, args.lifetime)
    return 0


if __name__ == "__main__":
    sys.exit(main())
