"""The running operator's /metrics: what Prometheus scrapes says what the operator did, and no secret.

The session operator serves every test's MailConfigs, so counters are compared before and after (they
may grow by more than one when other MailConfigs reconcile meanwhile); the per-MailConfig series name
this test's own namespace.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _scrape(operator) -> Samples:
    """Every sample, keyed by name and labels; parsing proves the exposition format is valid."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(operator.metrics()) for s in family.samples}


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _mine(samples: Samples, name: str, namespace: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: value for (sample, labels), value in samples.items()
            if sample == name and ("namespace", namespace) in labels}


def _wait_scrape(operator, predicate: Callable[[Samples], bool], what: str, timeout: float = 30) -> Samples:
    deadline = time.monotonic() + timeout
    samples = _scrape(operator)
    while not predicate(samples) and time.monotonic() < deadline:
        time.sleep(0.5)
        samples = _scrape(operator)
    assert predicate(samples), f"{what} not seen on /metrics in {timeout} s"
    return samples


def test_a_new_xoauth2_mailconfig_shows_in_the_operators_metrics(operator, tenant):
    before = _scrape(operator)
    tenant.apply(tenant.secret(), tenant.mailconfig())
    status = tenant.wait_condition("True", "Delivering")["status"]
    ready = {("name", "mail"), ("namespace", tenant.namespace), ("status", "True"), ("reason", "Delivering")}
    after = _wait_scrape(operator, lambda s: _mine(s, "kcmail_mailconfig_ready", tenant.namespace)
                         == {frozenset(ready): 1.0}, "the Ready series of the MailConfig")

    # Its first pass wrote the settings and the probe passed.
    applied = ("kcmail_reconciles_total", {"result": "applied", "reason": "Delivering"})
    assert _value(after, applied[0], **applied[1]) >= _value(before, applied[0], **applied[1]) + 1
    assert _value(after, "kcmail_reconcile_duration_seconds_count") > _value(
        before, "kcmail_reconcile_duration_seconds_count")
    assert _value(after, "kcmail_probes_total", result="passed", reason="Authenticated") >= _value(
        before, "kcmail_probes_total", result="passed", reason="Authenticated") + 1
    count = "kcmail_probe_duration_seconds_count"
    for stage in ("connect", "ehlo", "starttls", "auth"):
        assert _value(after, count, stage=stage) > _value(before, count, stage=stage), stage
        assert _value(after, "kcmail_probe_duration_seconds_sum", stage=stage) > 0, stage
    # Tokens are cached per credential, not per MailConfig: this tenant's Secret holds the issuer client
    # that earlier tests already used, so its token may come from the cache. A request was timed at least once.
    assert _value(after, count, stage="token") >= 1
    assert _value(after, "kcmail_probe_duration_seconds_sum", stage="token") > 0

    expiry = _mine(after, "kcmail_token_expiry_timestamp_seconds", tenant.namespace)
    assert list(expiry) == [frozenset({("namespace", tenant.namespace), ("name", "mail")})]
    expires = next(iter(expiry.values()))
    assert expires > time.time()
    stated = datetime.datetime.fromisoformat(status["tokenExpiresAt"].replace("Z", "+00:00")).timestamp()
    assert abs(expires - stated) < 1.5  # the status rounds to the second


def test_a_failing_mailconfig_is_counted_as_failed_and_its_series_go_with_it(operator, tenant):
    tenant.apply(tenant.secret(**{"client-id": tenant.env.issuer_client_id, "client-secret": "wrong-secret"}),
                 tenant.mailconfig())
    tenant.wait_condition("False", "InvalidClient")
    failed = {("name", "mail"), ("namespace", tenant.namespace), ("status", "False"), ("reason", "InvalidClient")}
    samples = _wait_scrape(operator, lambda s: _mine(s, "kcmail_mailconfig_ready", tenant.namespace)
                           == {frozenset(failed): 1.0}, "the failing MailConfig's Ready series")
    assert _value(samples, "kcmail_reconciles_total", result="failed", reason="InvalidClient") >= 1
    assert _value(samples, "kcmail_probes_total", result="failed", reason="InvalidClient") >= 1
    assert _value(samples, "kcmail_probe_duration_seconds_count", stage="token") >= 1
    # No token was issued, so there is no expiry to speak of.
    assert _mine(samples, "kcmail_token_expiry_timestamp_seconds", tenant.namespace) == {}

    deleted = tenant.kubectl("delete", "mailconfig", "mail", "--timeout=30s")
    assert deleted.returncode == 0, deleted.stderr
    _wait_scrape(operator, lambda s: not _mine(s, "kcmail_mailconfig_ready", tenant.namespace),
                 "the deleted MailConfig's series going away")


def test_metrics_carry_no_secret(operator, tenant):
    tenant.apply(tenant.secret(), tenant.mailconfig())
    tenant.wait_condition("True", "Delivering")
    text = operator.metrics()
    env = tenant.env
    for secret in (env.issuer_client_secret, env.issuer_other_client_secret, env.keycloak_admin_password,
                   env.smtp_basic_password):
        assert secret not in text
    for word in ("Bearer", "access_token", "eyJ"):  # eyJ: how every JWT (a token) starts
        assert word not in text
    # Only the labels documented: no message, URL or user name travels as a label.
    labels = {name for family in text_string_to_metric_families(text) if family.name.startswith("kcmail_")
              for sample in family.samples for name in sample.labels}
    assert labels <= {"result", "reason", "stage", "namespace", "name", "status", "le"}, json.dumps(sorted(labels))
