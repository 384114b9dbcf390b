"""Outcomes of one reconcile → status conditions in metav1.Condition shape, and their transitions.

Pure functions. The reason catalogue is the one list of reasons the operator ever writes; the
troubleshooting guide has a row for each (a test keeps the two equal).
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kcmail.redact import redact

# A condition message: kcmail's words around at most a capped quote of a server's (kcmail.redact).
MESSAGE_LIMIT = 1024

class ConditionType(enum.StrEnum):
    READY = "Ready"
    CREDENTIALS_RESOLVED = "CredentialsResolved"
    APPLIED = "Applied"
    TOKEN_ACQUIRED = "TokenAcquired"
    SMTP_AUTHENTICATED = "SMTPAuthenticated"
    # kstatus "abnormal-true" conditions: present only while True.
    RECONCILING = "Reconciling"
    STALLED = "Stalled"


class Reason(enum.StrEnum):
    # Success.
    RESOLVED = "Resolved"
    IN_SYNC = "InSync"
    TOKEN_ISSUED = "TokenIssued"
    AUTHENTICATED = "Authenticated"
    DELIVERING = "Delivering"
    PROBES_DISABLED = "ProbesDisabled"
    SKIPPED = "Skipped"
    PROGRESSING = "Progressing"
    CONNECTED = "Connected"
    # Inputs.
    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_KEY_MISSING = "SecretKeyMissing"
    CONNECTION_NOT_FOUND = "ConnectionNotFound"
    CONNECTION_NOT_ALLOWED = "ConnectionNotAllowed"
    INVALID_SPEC = "InvalidSpec"
    INVALID_SECRET_VALUE = "InvalidSecretValue"
    INVALID_CA = "InvalidCA"
    # Kubernetes API.
    KUBERNETES_FORBIDDEN = "KubernetesForbidden"
    KUBERNETES_API_ERROR = "KubernetesAPIError"
    # Keycloak.
    KEYCLOAK_UNREACHABLE = "KeycloakUnreachable"
    KEYCLOAK_AUTH_FAILED = "KeycloakAuthFailed"
    UNSUPPORTED_KEYCLOAK_VERSION = "UnsupportedKeycloakVersion"
    REALM_NOT_FOUND = "RealmNotFound"
    KEYCLOAK_REJECTED = "KeycloakRejected"
    REALM_CONFLICT = "RealmConflict"
    REALM_MISMATCH = "RealmMismatch"
    CHANGE_HELD = "ChangeHeld"
    KEYCLOAK_ANSWER_INVALID = "KeycloakAnswerInvalid"
    # Token endpoint.
    TOKEN_ENDPOINT_UNREACHABLE = "TokenEndpointUnreachable"
    TOKEN_ENDPOINT_UNAVAILABLE = "TokenEndpointUnavailable"
    INVALID_CLIENT = "InvalidClient"
    INVALID_SCOPE = "InvalidScope"
    TOKEN_ENDPOINT_ERROR = "TokenEndpointError"
    # The kcmail bridge asked Google for the mailbox's token and Google refused (its own words follow).
    GOOGLE_REFUSED = "GoogleRefused"
    # A MailConfig needs kcmail's token bridge (googleServiceAccount), and this kcmail has none (or its
    # registry is unusable).
    BRIDGE_NOT_CONFIGURED = "BridgeNotConfigured"
    # SMTP server.
    SMTP_UNREACHABLE = "SMTPUnreachable"
    SMTP_CONVERSATION_FAILED = "SMTPConversationFailed"
    TLS_HANDSHAKE_FAILED = "TLSHandshakeFailed"
    CERTIFICATE_UNTRUSTED = "CertificateUntrusted"
    STARTTLS_NOT_OFFERED = "StartTLSNotOffered"
    XOAUTH2_NOT_OFFERED = "XOAUTH2NotOffered"
    AUTH_NOT_OFFERED = "AuthNotOffered"
    AUTHENTICATION_REJECTED = "AuthenticationRejected"
    AUTHENTICATION_DEFERRED = "AuthenticationDeferred"
    RECIPIENT_REJECTED = "RecipientRejected"
    SEND_FAILED = "SendFailed"
    # Operator.
    SUSPENDED = "Suspended"
    DELETION_BLOCKED = "DeletionBlocked"
    INTERNAL_ERROR = "InternalError"


# Probe failures that say the server is down or busy for now, not that anything is misconfigured: the
# probe is tried again with backoff inside the interval instead of waiting for its next slot.
TRANSIENT_PROBE_REASONS = frozenset({Reason.TOKEN_ENDPOINT_UNAVAILABLE, Reason.AUTHENTICATION_DEFERRED})


@dataclass(frozen=True)
class Failure:
    """Why a step failed. ``needs_person`` failures stall (no retry until something changes)."""

    reason: Reason
    message: str
    needs_person: bool = False


class Status(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


@dataclass(frozen=True)
class Condition:
    type: ConditionType
    status: Status
    reason: Reason
    message: str


class Probes(enum.Enum):
    OFF = "off"  # spec.probe.smtp is Off
    SMTP = "smtp"  # Basic or no auth: only the SMTP server is probed
    TOKEN_AND_SMTP = "token-and-smtp"  # XOAUTH2: the token endpoint, then the SMTP server


@dataclass(frozen=True)
class Outcome:
    """What one reconcile found, step by step. ``None`` for a step means it was not reached."""

    suspended: bool = False
    credentials: Failure | bool | None = None
    applied: Failure | bool | None = None
    probes: Probes = Probes.OFF
    token: Failure | bool | None = None
    smtp: Failure | bool | None = None


def _step(kind: ConditionType, result: Failure | bool | None, ok: Reason, ok_message: str,
          waiting_on: str) -> Condition:
    if isinstance(result, Failure):
        return Condition(kind, Status.FALSE, result.reason, result.message)
    if result is True:
        return Condition(kind, Status.TRUE, ok, ok_message)
    return Condition(kind, Status.UNKNOWN, Reason.PROGRESSING, f"waiting for {waiting_on}")


def _probe_conditions(outcome: Outcome) -> list[Condition]:
    if outcome.probes is Probes.OFF:
        return [Condition(ConditionType.SMTP_AUTHENTICATED, Status.UNKNOWN, Reason.PROBES_DISABLED,
                          "spec.probe.smtp is Off: kcmail does not check the SMTP server")]
    result = []
    if outcome.probes is Probes.TOKEN_AND_SMTP:
        result.append(_step(ConditionType.TOKEN_ACQUIRED, outcome.token, Reason.TOKEN_ISSUED,
                            "the token endpoint issued a token for the client and scope", "the token probe"))
    if isinstance(outcome.token, Failure) and outcome.smtp is None:
        # The conversation stopped before AUTH for want of a token: nothing is pending, the step was skipped.
        result.append(Condition(ConditionType.SMTP_AUTHENTICATED, Status.UNKNOWN, Reason.SKIPPED,
                                f"not checked: AUTH needs a token, and the token endpoint gave none "
                                f"(TokenAcquired: {outcome.token.reason}); connecting, TLS and EHLO worked"))
        return result
    result.append(_step(ConditionType.SMTP_AUTHENTICATED, outcome.smtp, Reason.AUTHENTICATED,
                        "the SMTP server accepted the credentials Keycloak will present", "the SMTP probe"))
    return result


def evaluate(outcome: Outcome) -> list[Condition]:
    """The conditions that describe ``outcome``; Ready summarises them."""
    credentials = _step(ConditionType.CREDENTIALS_RESOLVED, outcome.credentials, Reason.RESOLVED,
                        "the referenced Connection and Secret were read", "the credentials to be read")
    applied = _step(ConditionType.APPLIED, outcome.applied, Reason.IN_SYNC,
                    "the realm holds the desired SMTP settings", "the settings to be applied")
    result = [credentials, applied]
    if applied.status is Status.TRUE or applied.reason is Reason.CHANGE_HELD:
        # A held change leaves the realm as it was: the probe conditions still say how its mail goes.
        result += _probe_conditions(outcome)
    failure = next((c for c in result if c.status is Status.FALSE), None)
    probed = [c for c in result if c.type in (ConditionType.TOKEN_ACQUIRED, ConditionType.SMTP_AUTHENTICATED)]
    if outcome.suspended:
        ready = Condition(ConditionType.READY, Status.FALSE, Reason.SUSPENDED,
                          "spec.suspend is true: kcmail neither writes to Keycloak nor probes")
    elif failure is not None:
        ready = Condition(ConditionType.READY, Status.FALSE, failure.reason, failure.message)
    elif applied.status is Status.TRUE and outcome.probes is Probes.OFF:
        ready = Condition(ConditionType.READY, Status.TRUE, Reason.IN_SYNC,
                          "the realm holds the desired SMTP settings (probes are off)")
    elif applied.status is Status.TRUE and probed and all(c.status is Status.TRUE for c in probed):
        ready = Condition(ConditionType.READY, Status.TRUE, Reason.DELIVERING,
                          "the realm holds the desired SMTP settings and the SMTP server accepts them")
    else:
        ready = Condition(ConditionType.READY, Status.UNKNOWN, Reason.PROGRESSING, "reconciling")
    result.insert(0, ready)
    stalled = next((f for f in (outcome.credentials, outcome.applied)
                    if isinstance(f, Failure) and f.needs_person), None)
    if stalled is not None and not outcome.suspended:
        result.append(Condition(ConditionType.STALLED, Status.TRUE, stalled.reason, stalled.message))
    elif ready.status is Status.UNKNOWN:
        result.append(Condition(ConditionType.RECONCILING, Status.TRUE, Reason.PROGRESSING, ready.message))
    return result


_ABNORMAL_TRUE = {ConditionType.RECONCILING.value, ConditionType.STALLED.value}


def merge(existing: Iterable[Mapping[str, Any]], desired: Sequence[Condition], *, generation: int,
          now: datetime.datetime) -> list[dict[str, Any]]:
    """The new ``status.conditions`` list.

    ``lastTransitionTime`` moves only when a condition's status flips. Conditions no longer computed
    are dropped, which is how Reconciling and Stalled disappear once they stop being True.
    """
    previous = {c.get("type"): c for c in existing}
    stamp = now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    merged = []
    for condition in desired:
        before = previous.get(condition.type.value)
        unchanged = before is not None and before.get("status") == condition.status.value
        merged.append({
            "type": condition.type.value,
            "status": condition.status.value,
            "reason": condition.reason.value,
            "message": redact(condition.message, limit=MESSAGE_LIMIT),
            "observedGeneration": generation,
            "lastTransitionTime": before["lastTransitionTime"] if unchanged and before else stamp,
        })
    return merged


@dataclass(frozen=True)
class Transition:
    type: str
    old_status: str | None
    new_status: str
    reason: str
    message: str


def transitions(existing: Iterable[Mapping[str, Any]], merged: Iterable[Mapping[str, Any]]) -> list[Transition]:
    """Conditions whose status or reason changed: what deserves an Event."""
    previous = {c.get("type"): c for c in existing}
    changes = []
    for condition in merged:
        before = previous.get(condition["type"])
        if before and (before.get("status"), before.get("reason")) == (condition["status"], condition["reason"]):
            continue
        if before is None and condition["type"] in _ABNORMAL_TRUE:
            continue
        changes.append(Transition(type=condition["type"], old_status=before.get("status") if before else None,
                                  new_status=condition["status"], reason=condition["reason"],
                                  message=condition["message"]))
    return changes


def condition_true(status: Mapping[str, Any], kind: str) -> bool:
    """Whether ``status.conditions`` holds condition ``kind`` with status True (pure)."""
    return any(c.get("type") == kind and c.get("status") == "True" for c in status.get("conditions") or [])
