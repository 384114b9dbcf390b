"""The Kubernetes side of the benchmarks, on the official client in-process.

A ``kubectl`` process costs more to start than the operator takes to react, so every timed write is a
call of the Python client and every timed wait is a watch that resumes from the write's
resourceVersion: the clock stops on the watch event that carries the awaited status, not on a poll.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from kcmail.devenv.environment import Environment
from kcmail.spec import GROUP, VERSION

PLURAL = "mailconfigs"
LABEL = "kcmail.io/bench"
Object = dict[str, Any]


def condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == kind), None)


def applied(obj: Mapping[str, Any], generation: int | None = None) -> bool:
    """The status is about ``generation`` (default: the current one) and says the realm holds it."""
    wanted = generation if generation is not None else obj["metadata"].get("generation")
    status = obj.get("status") or {}
    found = condition(obj, "Applied")
    return (status.get("observedGeneration") == wanted and found is not None and found.get("status") == "True"
            and found.get("observedGeneration") == wanted)


def ready(obj: Mapping[str, Any]) -> bool:
    found = condition(obj, "Ready")
    return applied(obj) and found is not None and found.get("status") == "True"


def key(obj: Mapping[str, Any]) -> str:
    return f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"


class Cluster:
    """One API client with a connection pool wide enough for the creating threads."""

    def __init__(self, env: Environment, workers: int = 16) -> None:
        configuration = client.Configuration()
        config.load_kube_config(config_file=str(env.kubeconfig), client_configuration=configuration)
        configuration.connection_pool_maxsize = workers * 2
        self.workers = workers
        self.api = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    def close(self) -> None:
        self.api.close()

    def create(self, obj: Mapping[str, Any]) -> Object:
        """Create one Namespace, Secret or MailConfig; a Namespace that exists already is fine."""
        kind, namespace = obj["kind"], obj["metadata"].get("namespace", "")
        if kind == "Namespace":
            try:
                return self.api.sanitize_for_serialization(self.core.create_namespace(obj))
            except ApiException as error:
                if error.status == 409:
                    return dict(obj)
                raise
        if kind == "Secret":
            return self.api.sanitize_for_serialization(self.core.create_namespaced_secret(namespace, obj))
        return dict(self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, obj))

    def create_all(self, objects: Iterable[Mapping[str, Any]]) -> dict[str, float]:
        """Create ``objects`` from ``workers`` threads; returns each one's "namespace/name" → the
        ``perf_counter`` at which its create call was sent."""
        sent: dict[str, float] = {}

        def one(obj: Mapping[str, Any]) -> None:
            meta = obj["metadata"]
            sent[f"{meta.get('namespace', '')}/{meta['name']}"] = time.perf_counter()
            self.create(obj)

        with ThreadPoolExecutor(self.workers) as pool:
            list(pool.map(one, list(objects)))  # re-raises the first failure
        return sent

    def mailconfig(self, namespace: str, name: str) -> Object:
        return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))

    def patch_mailconfig(self, namespace: str, name: str, patch: Mapping[str, Any], *, group: str = GROUP,
                         plural: str = PLURAL) -> Object:
        """A JSON merge patch of the MailConfig (the python client sends dicts as merge patches); ``group`` and
        ``plural`` name another kind of the same schema (the bare operator's)."""
        return dict(self.custom.patch_namespaced_custom_object(group, VERSION, namespace, plural, name, patch))

    def patch_secret(self, namespace: str, name: str, string_data: Mapping[str, str]) -> Object:
        body = {"stringData": dict(string_data)}
        return self.api.sanitize_for_serialization(self.core.patch_namespaced_secret(name, namespace, body))

    def mailconfigs(self, selector: str) -> list[Object]:
        listed = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, label_selector=selector)
        return list(listed["items"])

    def wait_for(self, namespace: str, name: str, since: str, predicate: Callable[[Object], bool], *,
                 timeout: float, group: str = GROUP, plural: str = PLURAL) -> tuple[Object, float]:
        """Watch one MailConfig (or one of another kind: ``group``, ``plural``) from resourceVersion ``since``
        until ``predicate`` holds for it.

        Returns the object and the ``perf_counter`` at which its event arrived; TimeoutError after
        ``timeout`` seconds, with the last status seen.
        """
        deadline = time.monotonic() + timeout
        last: Object = {}
        resource_version = since
        while (remaining := deadline - time.monotonic()) > 0:
            stream = watch.Watch()
            try:
                for event in stream.stream(self.custom.list_namespaced_custom_object, group, VERSION, namespace,
                                           plural, field_selector=f"metadata.name={name}",
                                           resource_version=resource_version,
                                           timeout_seconds=max(int(remaining), 1),
                                           _request_timeout=remaining + 5):
                    obj = event["object"]
                    seen = time.perf_counter()
                    if isinstance(obj, dict) and event["type"] in ("ADDED", "MODIFIED"):
                        last = obj
                        resource_version = obj["metadata"]["resourceVersion"]
                        if predicate(obj):
                            return obj, seen
                    if time.monotonic() > deadline:
                        break
            finally:
                stream.stop()
        raise TimeoutError(f"{namespace}/{name}: not reached within {timeout:.0f} s; last status: "
                           f"{last.get('status')}")

    def delete_mailconfigs(self, namespaces: Iterable[str], selector: str, *, timeout: float) -> None:
        """Delete the labelled MailConfigs and wait until the operator has let them go (finalizers)."""
        for namespace in namespaces:
            self.custom.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                                   label_selector=selector)
        deadline = time.monotonic() + timeout
        while self.mailconfigs(selector):
            if time.monotonic() > deadline:
                raise TimeoutError(f"MailConfigs {selector} still present after {timeout:.0f} s")
            time.sleep(0.5)


class AppliedWatch:
    """Watches every MailConfig matching a label selector from a thread and notes when each is applied.

    ``applied_at`` maps "namespace/name" to the ``perf_counter`` of the first event whose status says
    Applied for the object's generation.
    """

    def __init__(self, cluster: Cluster, selector: str) -> None:
        self._cluster = cluster
        self._selector = selector
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.applied_at: dict[str, float] = {}
        self.error: BaseException | None = None
        listed = cluster.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, label_selector=selector)
        self._resource_version = listed["metadata"]["resourceVersion"]
        self._thread = threading.Thread(target=self._run, name="applied-watch", daemon=True)

    def __enter__(self) -> AppliedWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=40)

    def count(self) -> int:
        with self._lock:
            return len(self.applied_at)

    def wait(self, expected: int, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.count() < expected:
            if self.error is not None:
                raise RuntimeError(f"the watch failed: {self.error}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.count()} of {expected} MailConfigs applied within {timeout:.0f} s")
            time.sleep(0.05)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                stream = watch.Watch()
                with contextlib.closing(_Closer(stream)):
                    for event in stream.stream(self._cluster.custom.list_cluster_custom_object, GROUP, VERSION,
                                               PLURAL, label_selector=self._selector,
                                               resource_version=self._resource_version, timeout_seconds=30,
                                               _request_timeout=40):
                        obj = event["object"]
                        seen = time.perf_counter()
                        if not isinstance(obj, dict):
                            continue
                        self._resource_version = obj["metadata"]["resourceVersion"]
                        if event["type"] in ("ADDED", "MODIFIED") and applied(obj):
                            with self._lock:
                                self.applied_at.setdefault(key(obj), seen)
                        if self._stop.is_set():
                            break
        except BaseException as error:  # reported to the waiting thread, which fails the measure
            self.error = error


class _Closer:
    def __init__(self, stream: watch.Watch) -> None:
        self._stream = stream

    def close(self) -> None:
        self._stream.stop()
