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

# The Lease that elects one acting operator (`kcmail run --leader-election-id`). Every `kcmail run` with the
# same Lease takes part in one election, so the chart and a laptop run share these defaults.
LEADER_ELECTION_ID = "kcmail"
# Outside a cluster, where no service account names the pod's namespace: the namespace docs/install.md
# installs the chart into.
LEADER_ELECTION_NAMESPACE = "kcmail-system"

# Passes of different MailConfigs running at once (the work queue's workers). A pass holds its worker while
# it waits for Keycloak and then for its probe, so fewer workers than KEYCLOAK_CONCURRENCY + PROBE_CONCURRENCY
# leave Keycloak's bound unfilled in a burst: the full benchmark run with 24 missed its scale goal at 1.53x
# (bench/findings.md). An idle worker costs a parked task.
WORKERS = 64
