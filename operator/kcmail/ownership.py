"""Who owns a realm's mail settings, recorded in the realm itself, and what a MailConfig may do about it.

The owner is written into the realm's ``kcmail.io/owner`` attribute in the same PUT as the settings, the
way external-dns keeps a TXT record beside each DNS name it manages. Whoever reads the realm can tell
which MailConfig owns its mail settings, across operator restarts, shards and clusters, without trusting
any process's memory: a MailConfig writes only a realm that names it, or names no one. A realm named by
another MailConfig is that one's until it is deleted (its finalizer takes the record away) or until a
person adopts the realm with the ``kcmail.io/adopt`` annotation, once its recorded owner is gone.

Pure functions: the reconcile reads the realm and looks the recorded owner up, then asks :func:`decide`.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kcmail.conditions import Failure, Reason
from kcmail.redact import redact

OWNER_ATTRIBUTE = "kcmail.io/owner"
ADOPT_ANNOTATION = "kcmail.io/adopt"


@dataclass(frozen=True)
class Owner:
    """A MailConfig as the realm records it: its uid (unique across clusters) and, for people, its name."""

    uid: str
    mailconfig: str  # namespace/name

    def record(self) -> str:
        return json.dumps({"uid": self.uid, "mailconfig": self.mailconfig}, separators=(",", ":"))

    @property
    def namespace(self) -> str:
        return self.mailconfig.partition("/")[0]

    @property
    def name(self) -> str:
        return self.mailconfig.partition("/")[2]


def recorded_owner(representation: Mapping[str, Any]) -> Owner | None:
    """The owner a realm representation records; None when it records none kcmail can read.

    Anyone with manage-realm can edit the attribute; a value that is not kcmail's record is no owner
    (such an admin could as well remove it).
    """
    attributes = representation.get("attributes")
    text = attributes.get(OWNER_ATTRIBUTE) if isinstance(attributes, Mapping) else None
    try:
        data = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    uid, mailconfig = data.get("uid"), data.get("mailconfig")
    if not isinstance(uid, str) or not uid or not isinstance(mailconfig, str) or mailconfig.count("/") != 1:
        return None
    return Owner(uid=uid, mailconfig=mailconfig)


def with_owner(representation: Mapping[str, Any], smtp_server: Mapping[str, str] | None,
               owner: Owner | None) -> dict[str, Any]:
    """The representation to PUT: the settings and the owner record (``owner`` None: the record removed).

    ``smtp_server`` None leaves the realm's settings as Keycloak holds them: a PUT without the key does not
    touch them, where sending back what a GET showed would send the masked secret.
    """
    result = dict(representation)
    if smtp_server is None:
        result.pop("smtpServer", None)
    else:
        result["smtpServer"] = dict(smtp_server)
    attributes = dict(result.get("attributes") or {})
    if owner is None:
        attributes.pop(OWNER_ATTRIBUTE, None)
    else:
        attributes[OWNER_ATTRIBUTE] = owner.record()
    result["attributes"] = attributes
    return result


class Lookup(enum.Enum):
    """What this cluster says of a recorded owner other than the MailConfig at hand."""

    EXISTS = "exists"  # a MailConfig of that namespace/name and uid
    ABSENT = "absent"  # none: deleted without releasing the realm, or another cluster's
    UNKNOWN = "unknown"  # it could not be looked up (the API server refused)


@dataclass(frozen=True)
class Decision:
    """May the MailConfig write the realm? ``conflict`` says why not; ``adopted`` is the owner it replaces."""

    conflict: Failure | None = None
    adopted: Owner | None = None


def decide(recorded: Owner | None, me: Owner, lookup: Lookup | None, adopt: str | None) -> Decision:
    """``lookup``: what this cluster says of ``recorded`` (None when ``recorded`` is none or ``me``);
    ``adopt``: the value of the MailConfig's ``kcmail.io/adopt`` annotation."""
    if recorded is None:
        return Decision()
    if recorded.uid == me.uid:
        return Decision()
    who = f"MailConfig {redact(recorded.mailconfig, limit=120)} (uid {redact(recorded.uid, limit=40)})"
    if lookup is Lookup.EXISTS:
        return Decision(conflict=Failure(
            Reason.REALM_CONFLICT, f"{who} owns this realm's mail settings (the realm's {OWNER_ATTRIBUTE} "
            "attribute names it); this one writes nothing until that one is deleted", needs_person=True))
    if lookup is Lookup.ABSENT and adopt == recorded.uid:
        return Decision(adopted=recorded)
    if lookup is Lookup.ABSENT:
        return Decision(conflict=Failure(
            Reason.REALM_CONFLICT, f"the realm's {OWNER_ATTRIBUTE} attribute names {who}, which does not exist "
            "in this cluster: it was deleted without releasing the realm, or another cluster manages this "
            f"Keycloak. If none does, annotate this MailConfig {ADOPT_ANNOTATION}={recorded.uid} to take the "
            "realm over", needs_person=True))
    return Decision(conflict=Failure(
        Reason.REALM_CONFLICT, f"the realm's {OWNER_ATTRIBUTE} attribute names {who}, which kcmail cannot look "
        f"up (the Kubernetes API refused); this one writes nothing. Grant kcmail get on mailconfigs in "
        f"{redact(recorded.namespace, limit=63)}, or delete that MailConfig", needs_person=True))
