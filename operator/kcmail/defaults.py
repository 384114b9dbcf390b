"""Defaults of ``kcmail run``'s bounds, shared by its command line, its runtime options and its clients.

Nothing is imported here: ``kcmail --help`` and ``kcmail probe`` read these without loading the Keycloak and
Kubernetes clients they configure.
"""

# SMTP probes running at once across all MailConfigs.
PROBE_CONCURRENCY = 10
# Admin calls in flight at a time through one Keycloak client (one per Connection). The bound keeps an Argo
# CD sync of thousands of MailConfigs from opening a connection to Keycloak's admin API for each of them at
# once. 32: on the benchmark machine, Keycloak's CPU time per realm GET and PUT falls as more calls are in
# flight, and a burst is served cheapest per call at around 32 (`python -m bench --keycloak-concurrency N`
# measures another bound).
KEYCLOAK_CONCURRENCY = 32
