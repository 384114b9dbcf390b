"""What Keycloak itself counted: its /metrics on the management port, read before and after a measure.

Two families matter. ``http_server_requests_seconds_count{method, uri, status}`` counts every request
Keycloak served, with the path as a template (``/admin/realms/{realm}``), so reads and writes of realms
are counted by the server, whoever sent them. ``keycloak_user_events_total{realm, client_id, event}``
counts token grants per client (``client_login`` is the client-credentials grant).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from kcmail.devenv.certs import client_context

REQUESTS = "http_server_requests_seconds_count"
USER_EVENTS = "keycloak_user_events_total"
REALM = "/admin/realms/{realm}"
WRITE_METHODS = frozenset({"PUT", "POST", "DELETE", "PATCH"})

_LINE = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+\S+)?$")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')

Series = tuple[str, frozenset[tuple[str, str]]]


def parse(text: str, names: frozenset[str] = frozenset({REQUESTS, USER_EVENTS})) -> Counter[Series]:
    """The samples of the families ``names`` in a Prometheus text exposition (pure)."""
    samples: Counter[Series] = Counter()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None or match["name"] not in names:
            continue
        labels = frozenset(_LABEL.findall(match["labels"] or ""))
        samples[(match["name"], labels)] += float(match["value"])
    return samples


@dataclass(frozen=True)
class Delta:
    """What Keycloak counted between two scrapes."""

    counts: Mapping[Series, float]

    def requests(self, *, method: str | None = None, uri: str | None = None) -> int:
        return int(sum(v for (name, labels), v in self.counts.items() if name == REQUESTS
                       and _matches(dict(labels), method=method, uri=uri)))

    def realm_reads(self) -> int:
        """GETs of a realm's representation: the read a reconcile makes."""
        return self.requests(method="GET", uri=REALM)

    def admin_writes(self) -> int:
        """Every request that can change something through the admin API (PUT, POST, DELETE, PATCH)."""
        return int(sum(v for (name, labels), v in self.counts.items() if name == REQUESTS
                       and dict(labels).get("method") in WRITE_METHODS
                       and dict(labels).get("uri", "").startswith("/admin/")))

    def admin_requests_by_uri(self) -> dict[str, int]:
        """Every admin API request, as "METHOD uri" → count: the whole picture behind the two numbers above."""
        found: Counter[str] = Counter()
        for (name, labels), value in self.counts.items():
            label = dict(labels)
            if name == REQUESTS and label.get("uri", "").startswith("/admin/") and value:
                found[f"{label.get('method')} {label.get('uri')}"] += int(value)
        return dict(sorted(found.items()))

    def token_grants(self, realm: str, client_id: str | None = None) -> int:
        """Tokens issued by ``realm`` (to ``client_id``) through the client-credentials grant."""
        return int(sum(v for (name, labels), v in self.counts.items() if name == USER_EVENTS
                       and dict(labels).get("realm") == realm and dict(labels).get("event") == "client_login"
                       and dict(labels).get("error", "") == ""
                       and (client_id is None or dict(labels).get("client_id") == client_id)))

    def admin_logins(self) -> int:
        """Logins to the master realm: what an admin client spends on its own token."""
        return int(sum(v for (name, labels), v in self.counts.items() if name == USER_EVENTS
                       and dict(labels).get("realm") == "master"
                       and dict(labels).get("event") in ("login", "client_login", "refresh_token")))


def _matches(labels: Mapping[str, str], *, method: str | None, uri: str | None) -> bool:
    return (method is None or labels.get("method") == method) and (uri is None or labels.get("uri") == uri)


class KeycloakCounts:
    """Scrapes one Keycloak's /metrics; ``delta(before)`` is what it counted since ``before``."""

    def __init__(self, management_url: str, ca_file: Path) -> None:
        if not management_url:
            raise RuntimeError("this environment predates Keycloak's management URL in dev.env: restart it with "
                               "`kcmail dev down` and `kcmail dev up`")
        self._http = httpx.Client(base_url=management_url, verify=client_context(ca_file), timeout=30)

    def close(self) -> None:
        self._http.close()

    def scrape(self) -> Counter[Series]:
        response = self._http.get("/metrics")
        response.raise_for_status()
        samples = parse(response.text)
        if not any(name == REQUESTS for name, _ in samples):
            raise RuntimeError("Keycloak serves no http_server_requests metrics: it was started without "
                               "--metrics-enabled; restart the environment")
        return samples

    def requests(self, *, method: str | None = None, uri: str | None = None) -> int:
        """Requests Keycloak has answered since it started, by method and URI template."""
        return Delta(self.scrape()).requests(method=method, uri=uri)

    def delta(self, before: Counter[Series]) -> Delta:
        after = self.scrape()
        return Delta({key: after[key] - before.get(key, 0.0) for key in after})
