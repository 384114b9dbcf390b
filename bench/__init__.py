"""Benchmarks of kcmail against its floors, on the local environment of real servers.

``python -m bench`` (or ``make bench``) measures the operator's change and rotation latency, its scale,
its steady-state load on Keycloak, its memory and its probe load, each next to its floor measured in the
same run on the same machine, and writes ``docs/benchmarks.md`` and ``docs/benchmarks.json``.
``--quick`` is the small version CI runs as a smoke test.
"""
