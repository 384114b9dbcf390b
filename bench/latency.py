"""Measures 1 and 2: how long a spec change and a Secret rotation take to reach Keycloak."""

from __future__ import annotations

import datetime
import time
from typing import Any

from bench import bare_operator, stats, workload
from bench.cluster import PLURAL, applied, ready
from bench.context import Bench, say
from kcmail.devenv import mail_spool
from kcmail.spec import GROUP, VERSION

CHANGE_NAMESPACE, CHANGE_REALM, FLOOR_REALM = "bench-change", "bench-change", "bench-change-floor"
# A second MailConfig with changePolicy Immediate (written, then probed), changed the same way.
IMMEDIATE_NAME, IMMEDIATE_REALM = "mail-immediate", "bench-change-immediate"
# A third, ProbeFirst like the first, whose change is one the probe must check first (its connect timeout):
# a display name is not, so the first is written at once. Beside Immediate it tells what probing first adds.
PROBED_NAME, PROBED_REALM = "mail-probed", "bench-change-probed"
# The realm of the lone GET+PUT, measure 1's floor before the bare operator: kept as a second reference.
LONE_REALM = "bench-change-lone"
ROTATION_NAMESPACE, ROTATION_REALM = "bench-rotation", "bench-rotation"
NAME = "mail"
CHANGE_GOAL = 1.5
ROTATION_GOAL_SECONDS = 2.0
_TIMEOUT = 60.0
# Let the operator finish what follows a status write (Events, the probe) before the next sample starts.
_SETTLE_SECONDS = 0.3


def extra_realms() -> list[str]:
    return [CHANGE_REALM, FLOOR_REALM, LONE_REALM, ROTATION_REALM, IMMEDIATE_REALM, PROBED_REALM]


def change_latency(b: Bench) -> dict[str, Any]:
    """A spec change, until the status says Applied for the new generation; the realm is checked after.

    The same change of a FloorMailConfig, made by the bare operator, is the floor; each sample of one
    alternates with a sample of the other, and a lone GET+PUT follows both. The MailConfig measured has the
    default changePolicy, ProbeFirst; its change (a display name) is none the probe exercises, so it is
    written at once. A second one with Immediate is changed the same way; a third, ProbeFirst, changes its
    connect timeout, which is probed before it is written: it tells what probing first adds.
    """
    env = b.env
    b.cluster.create_all([workload.namespace(CHANGE_NAMESPACE)])
    b.cluster.create_all(workload.tenant(env, CHANGE_NAMESPACE, NAME, CHANGE_REALM, "change", interval="10m"))
    b.cluster.create_all(workload.tenant(env, CHANGE_NAMESPACE, IMMEDIATE_NAME, IMMEDIATE_REALM, "change",
                                         interval="10m", changePolicy="Immediate"))
    b.cluster.create_all(workload.tenant(env, CHANGE_NAMESPACE, PROBED_NAME, PROBED_REALM, "change", interval="10m"))
    first, _ = b.cluster.wait_for(CHANGE_NAMESPACE, NAME, "0", ready, timeout=_TIMEOUT)
    for name in (IMMEDIATE_NAME, PROBED_NAME):
        b.cluster.wait_for(CHANGE_NAMESPACE, name, "0", ready, timeout=_TIMEOUT)
    base = workload.desired(b.env, first)
    _secret, manifest = workload.tenant(env, CHANGE_NAMESPACE, NAME, FLOOR_REALM, "change", interval="10m")
    b.cluster.custom.create_namespaced_custom_object(bare_operator.FLOOR_GROUP, VERSION, CHANGE_NAMESPACE,
                                                     bare_operator.FLOOR_PLURAL, bare_operator.floor_object(manifest))
    bare = bare_operator.BareOperator(env, b.state_dir / "bare-operator", CHANGE_NAMESPACE, NAME)
    try:
        b.cluster.wait_for(CHANGE_NAMESPACE, NAME, "0", applied, timeout=_TIMEOUT, group=bare_operator.FLOOR_GROUP,
                           plural=bare_operator.FLOOR_PLURAL)
        before = b.counts.scrape()
        samples: dict[str, list[float]] = {"operator": [], "immediate": [], "probed": [], "floor": [], "lone": []}
        mismatches = {"operator": 0, "immediate": 0, "probed": 0, "floor": 0}

        def change(who: str, realm: str, group: str, plural: str, value: str, index: int) -> None:
            name = {"immediate": IMMEDIATE_NAME, "probed": PROBED_NAME}.get(who, NAME)
            if who == "probed":
                # 11 s and 12 s in turn: each sample a new value, each one a connect timeout that works.
                seconds = 11 + index % 2
                spec, key, value = {"smtp": {"timeouts": {"connect": f"{seconds}s"}}}, "connectionTimeout", \
                    str(seconds * 1000)
            else:
                spec, key = {"sender": {"fromDisplayName": value}}, "fromDisplayName"
            started = time.perf_counter()
            patched = b.cluster.patch_mailconfig(CHANGE_NAMESPACE, name, {"spec": spec}, group=group, plural=plural)
            generation = patched["metadata"]["generation"]
            try:
                _, seen = b.cluster.wait_for(CHANGE_NAMESPACE, name, patched["metadata"]["resourceVersion"],
                                             lambda o, g=generation: applied(o, g), timeout=_TIMEOUT, group=group,
                                             plural=plural)
            finally:
                bare.check()
            samples[who].append(seen - started)
            if (b.admin.realm(realm).get("smtpServer") or {}).get(key) != value:
                mismatches[who] += 1
            time.sleep(_SETTLE_SECONDS)

        for i in range(b.sizes.changes):
            value = f"change {i}"

            def lone_change(representation: dict[str, Any], value: str = value) -> None:
                representation["smtpServer"] = {**base, "fromDisplayName": value}

            # Alternate which goes first, so that neither always meets a Keycloak the other just warmed.
            order = [("operator", CHANGE_REALM, GROUP, PLURAL),
                     ("floor", FLOOR_REALM, bare_operator.FLOOR_GROUP, bare_operator.FLOOR_PLURAL),
                     ("immediate", IMMEDIATE_REALM, GROUP, PLURAL), ("probed", PROBED_REALM, GROUP, PLURAL)]
            for who, realm, group, plural in order if i % 2 == 0 else order[::-1]:
                change(who, realm, group, plural, value, i)
            samples["lone"].append(b.admin.get_put(LONE_REALM, lone_change))
            time.sleep(_SETTLE_SECONDS)
        delta = b.counts.delta(before)
    finally:
        bare.stop()
    operator, immediate, probed, floor, lone = (stats.summary(samples[who]) for who in (
        "operator", "immediate", "probed", "floor", "lone"))
    ratio = stats.ratio(operator["p50"], floor["p50"])
    added = probed["p50"] - immediate["p50"]
    say(f"change latency: operator p50 {operator['p50'] * 1000:.0f} ms (Immediate {immediate['p50'] * 1000:.0f} "
        f"ms, probed first {probed['p50'] * 1000:.0f} ms), bare operator p50 {floor['p50'] * 1000:.0f} ms, lone "
        f"GET+PUT p50 {lone['p50'] * 1000:.0f} ms")
    return {
        "operator": operator, "floor": floor, "floor_is": "bare operator", "lone_get_put": lone,
        "immediate": immediate, "probed_first": probed, "probe_first_added_p50": round(added, 4),
        "ratio_p50_probed_first": stats.ratio(probed["p50"], floor["p50"]),
        "ratio_p50": ratio, "ratio_p50_lone_get_put": stats.ratio(operator["p50"], lone["p50"]),
        "goal": f"operator p50 within {CHANGE_GOAL}x of the bare operator's p50",
        "met": ratio is not None and ratio <= CHANGE_GOAL and not any(mismatches.values()),
        "realm_mismatches": mismatches["operator"], "floor_realm_mismatches": mismatches["floor"],
        "immediate_realm_mismatches": mismatches["immediate"], "probed_realm_mismatches": mismatches["probed"],
        "keycloak_admin_requests": delta.admin_requests_by_uri(),
        "keycloak_requests_note": (f"includes the bare operator's {len(samples['floor'])} and the lone "
                                   f"{len(samples['lone'])} GET+PUT pairs, the Immediate and probed-first "
                                   f"MailConfigs' {len(samples['immediate']) + len(samples['probed'])} changes, "
                                   "and the harness's "
                                   f"{sum(len(samples[w]) for w in ('operator', 'floor', 'immediate', 'probed'))} "
                                   "confirming GETs"),
        "timing": ("clock starts before the merge patch of spec.sender.fromDisplayName (Python client, "
                   "in-process); stops when the watch, resumed from the patch's resourceVersion, delivers a "
                   "status with Applied=True and observedGeneration equal to the new generation; the realm is "
                   "then read to confirm it holds the new value. Floor: the bare operator "
                   "(`bench/bare_operator.py`), a script in its own process that watches a FloorMailConfig (the "
                   "MailConfig CRD copied into the group bench.kcmail.io, which kcmail does not watch) with httpx "
                   "and, when an event brings a new generation, does one GET and one PUT of another realm on a "
                   "warm admin token, the same smtpServer map, then merge-patches the status with "
                   "observedGeneration and an Applied condition; the same patch, watch and check time it, and its "
                   "samples alternate with the operator's. The operator's MailConfig has changePolicy ProbeFirst "
                   "(the default); a display name is nothing its probe exercises, so the change is written at "
                   "once and probed after. Immediate: a second MailConfig and realm with changePolicy Immediate, "
                   "changed the same way in turn (written, Applied reported, then probed). Probed first: a third, "
                   "ProbeFirst, whose spec.smtp.timeouts.connect goes 11 s, 12 s in turn: each change is probed "
                   "(a cached token, the SMTP conversation to AUTH) and the realm read again before the write; "
                   "probe_first_added_p50 is its p50 less Immediate's. Lone GET+PUT (the floor before): one GET "
                   "and one PUT of a realm with httpx, after each round, no Kubernetes at all."),
    }


def rotation_latency(b: Bench) -> dict[str, Any]:
    """A new client secret in the Secret, until the status says it was applied; a real send confirms it."""
    env = b.env
    client_id = env.issuer_rotation_client_id
    if not client_id:
        raise RuntimeError("this environment predates the rotation client: restart it")
    b.cluster.create_all([workload.namespace(ROTATION_NAMESPACE)])
    secret = _regenerate(b, client_id)
    secret_name = f"{NAME}-oauth"
    secret_object = workload.labelled(
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
         "metadata": {"name": secret_name, "namespace": ROTATION_NAMESPACE},
         "stringData": {"client-id": client_id, "client-secret": secret}}, "rotation")
    b.cluster.create_all(workload.tenant(env, ROTATION_NAMESPACE, NAME, ROTATION_REALM, "rotation", interval="10m",
                                         secret=secret_object))
    b.cluster.wait_for(ROTATION_NAMESPACE, NAME, "0", ready, timeout=_TIMEOUT)
    last_token = _send(b, client_id, previous_token=None)
    samples: list[float] = []
    confirmations: list[float] = []
    for _ in range(b.sizes.rotations):
        current = b.cluster.mailconfig(ROTATION_NAMESPACE, NAME)
        secret = _regenerate(b, client_id)
        started = time.perf_counter()
        patched = b.cluster.patch_secret(ROTATION_NAMESPACE, secret_name, {"client-secret": secret})
        version = f"{patched['metadata']['uid']}/{patched['metadata']['resourceVersion']}"

        def holds(obj: dict[str, Any], version: str = version) -> bool:
            return (obj.get("status") or {}).get("appliedSecretVersion") == version and applied(obj)

        _, seen = b.cluster.wait_for(ROTATION_NAMESPACE, NAME, current["metadata"]["resourceVersion"], holds,
                                     timeout=_TIMEOUT)
        samples.append(seen - started)
        sent = time.perf_counter()
        last_token = _send(b, client_id, previous_token=last_token)
        confirmations.append(time.perf_counter() - sent)
        time.sleep(_SETTLE_SECONDS)
    result = stats.summary(samples)
    say(f"rotation latency: p50 {result['p50'] * 1000:.0f} ms, p95 {result['p95'] * 1000:.0f} ms")
    return {
        "operator": result, "confirming_send": stats.summary(confirmations),
        "goal": f"p50 under {ROTATION_GOAL_SECONDS:.0f} s", "met": result["p50"] < ROTATION_GOAL_SECONDS,
        "timing": ("the issuer regenerates the client's secret (the old one stops working), then the clock "
                   "starts before the patch of the Secret; it stops when the watch delivers a status whose "
                   "appliedSecretVersion is the Secret's new uid/resourceVersion with Applied=True (the "
                   "operator writes that status after its probe with the new secret has run). Then Keycloak's "
                   "own test send must reach the SMTP server with a token it has not used before: Keycloak "
                   "caches its token per secret, so a new token proves it holds the new secret "
                   "(confirming_send: the time that took, not part of the latency)."),
    }


def _regenerate(b: Bench, client_id: str) -> str:
    issuer = b.env.issuer_realm
    found = b.admin.request("GET", f"/{issuer}/clients", params={"clientId": client_id})
    found.raise_for_status()
    (client,) = found.json()
    response = b.admin.request("POST", f"/{issuer}/clients/{client['id']}/client-secret")
    response.raise_for_status()
    return str(response.json()["value"])


def _send(b: Bench, client_id: str, *, previous_token: str | None) -> str:
    """Keycloak's own test mail with the settings the realm holds; returns the token id the server saw."""
    since = datetime.datetime.now(datetime.UTC)
    smtp_server = b.admin.realm(ROTATION_REALM).get("smtpServer") or {}
    sent = b.admin.request("POST", f"/{ROTATION_REALM}/testSMTPConnection", json=smtp_server)
    if sent.status_code != 204:
        raise RuntimeError(f"Keycloak's test send failed: {sent.status_code} {sent.text[:200]}")
    message = mail_spool.wait_for_message(
        b.env.smtp_spool, lambda m: (m.received_at >= since and m.auth is not None and m.auth.client_id == client_id
                                     and m.auth.token_id not in (None, previous_token)), timeout=30)
    token_id = message.auth.token_id if message.auth is not None else None
    if token_id is None:
        raise RuntimeError("Keycloak's test send reached the SMTP server without an XOAUTH2 token")
    return token_id
