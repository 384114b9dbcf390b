"""Which events wake a MailConfig's loop: news, not what its first pass reads anyway."""

from __future__ import annotations

import pytest

from kcmail.kube import secret_version
from kcmail.runtime import Runtime, secret_is_news

pytestmark = pytest.mark.unit

CONNECTION = ("ClusterKeycloakConnection", None, "main")


def _runtime() -> Runtime:
    return Runtime(kube=None, clients=None, reconciler=None, probe_http=None)  # type: ignore[arg-type]


def test_a_connection_listed_at_start_up_wakes_nobody_but_its_later_changes_do():
    rt = _runtime()
    assert not rt.connection_changed(CONNECTION, 1, listed=True)
    assert not rt.connection_changed(CONNECTION, 1)
    assert rt.connection_changed(CONNECTION, 2)


def test_a_connection_created_after_start_up_wakes_the_mailconfigs_waiting_for_it():
    assert _runtime().connection_changed(CONNECTION, 1)


def test_a_secret_is_news_only_when_its_version_is_not_the_applied_one():
    assert not secret_is_news("uid-1", "41", secret_version("uid-1", "41"))
    assert secret_is_news("uid-1", "42", secret_version("uid-1", "41"))
    # Deleted and created again under the same name: a new uid, whatever the revision.
    assert secret_is_news("uid-2", "41", secret_version("uid-1", "41"))
    assert secret_is_news("uid-1", "41", None)
