"""The status of a KeycloakConnection or ClusterKeycloakConnection: can kcmail reach Keycloak and log in.

kopf runs the check (kcmail.handlers: on a change, on a timer, and after a MailConfig pass got through a
Connection whose last check failed); this module only computes what the status says.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from kcmail import conditions
from kcmail.conditions import Failure, Reason
from kcmail.connections import ConnectionFailure, KeycloakClients, resolve
from kcmail.keycloak import KeycloakFailure
from kcmail.kube import Kube, KubeError
from kcmail.observe import kube_failure
from kcmail.redact import redact
from kcmail.smtp_settings import version_text
from kcmail.spec import ConnectionKind


async def check_connection(kube: Kube, clients: KeycloakClients, kind: ConnectionKind, body: Mapping[str, Any],
                           now: datetime.datetime, *, refused: bool = False) -> dict[str, Any]:
    """Status of a Connection: can kcmail reach Keycloak and log in, and which version answers.

    ``refused``: the operator accepts no Connection of this kind; nothing is read and nothing contacted.
    """
    meta = body.get("metadata", {})
    spec = body.get("spec", {})
    status: dict[str, Any] = {"observedGeneration": int(meta.get("generation", 0))}
    url = str(spec.get("url", ""))
    if url.startswith("http://"):
        status["tlsVerification"] = "Plaintext"
    else:
        status["tlsVerification"] = "Skipped" if (spec.get("tls") or {}).get("insecureSkipVerify") else "Verified"
    ready: conditions.Condition
    failure: Failure | None = None
    if refused:
        failure = Failure(Reason.CONNECTION_NOT_ALLOWED, "this kcmail accepts no KeycloakConnection (it runs with "
                          "--no-namespaced-connections): ask for a ClusterKeycloakConnection instead")
    else:
        try:
            connection = await resolve(kube, kind, meta.get("name", ""), meta.get("namespace", ""))
            async with clients.using(connection) as keycloak:
                version = await keycloak.version(fresh=True)
        except (ConnectionFailure, KeycloakFailure) as error:
            failure = error.failure
        except KubeError as error:
            failure = kube_failure(error, "read the Connection's Secrets")
        except Exception as error:  # a Connection must never be left without status
            failure = Failure(Reason.INTERNAL_ERROR, f"the check failed unexpectedly: {type(error).__name__}: "
                              f"{redact(error)}")
        else:
            status["keycloakVersion"] = version_text(version)
    if failure is not None:
        ready = conditions.Condition(conditions.ConditionType.READY, conditions.Status.FALSE, failure.reason,
                                     failure.message)
    else:
        ready = conditions.Condition(conditions.ConditionType.READY, conditions.Status.TRUE, Reason.CONNECTED,
                                     f"logged in to Keycloak {status['keycloakVersion']} at {redact(url)}")
    status["conditions"] = conditions.merge(body.get("status", {}).get("conditions") or [], [ready],
                                            generation=status["observedGeneration"], now=now)
    return status
