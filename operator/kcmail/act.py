"""What a pass of the MailConfig reconcile does to the world once decide.py has decided: the realm write and
the probe. Nothing is decided here.

Each act records what happened in :class:`Done`, a failure included, and never raises what it met: decide.py
turns that into the pass's conditions and Events like any other outcome.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kcmail.conditions import Failure
from kcmail.decide import Probe
from kcmail.keycloak import KeycloakClient, KeycloakFailure
from kcmail.probes import ProbeOutcome, Prober


@dataclass(frozen=True)
class Done:
    """What the acts of a pass did."""

    wrote: bool = False
    # Keycloak refused the write.
    failure: Failure | None = None
    probe: ProbeOutcome | None = None
    probed_at: datetime.datetime | None = None


async def write(keycloak: KeycloakClient, realm: str, representation: Mapping[str, Any] | None) -> Done:
    """PUT ``representation`` (None: nothing to write). Made in the slot the realm was read in (observe.realm)."""
    if representation is None:
        return Done()
    try:
        await keycloak.write_realm(realm, representation)
    except KeycloakFailure as error:
        return Done(failure=error.failure)
    return Done(wrote=True)


async def probe(prober: Prober, planned: Probe, mailconfig: str, done: Done,
                now: Callable[[], datetime.datetime]) -> Done:
    """``done`` with the probe's outcome and the moment it began."""
    began = now()
    return dataclasses.replace(done, probe=await prober.probe(planned.spec, planned.credentials, mailconfig),
                               probed_at=began)
