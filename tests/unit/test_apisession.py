"""How many connections kopf's API session may open: every watch stream, plus a share for requests."""

from __future__ import annotations

from kcmail.apisession import CLUSTER_STREAMS, REQUEST_CONNECTIONS, STREAMS_PER_NAMESPACE, connection_limit


def test_cluster_wide_counts_one_stream_per_kind() -> None:
    assert connection_limit(()) == STREAMS_PER_NAMESPACE + CLUSTER_STREAMS + REQUEST_CONNECTIONS


def test_each_watched_namespace_adds_its_streams_and_requests_keep_their_share() -> None:
    one, three = connection_limit(("a",)), connection_limit(("a", "b", "c"))

    assert three - one == 2 * STREAMS_PER_NAMESPACE
    assert three - 3 * STREAMS_PER_NAMESPACE - CLUSTER_STREAMS == REQUEST_CONNECTIONS
