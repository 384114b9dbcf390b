"""Pinned versions of every component of the local environment: the one place to change them."""

KUBERNETES = "1.35.4"
ETCD = "3.6.8"
# The chart tests lint and render charts/kcmail with it.
HELM = "3.21.4"
KEYCLOAK = "26.7.3"
# An older Keycloak for version-gating tests (token auth since 26.2, timeout keys since 26.5).
KEYCLOAK_LEGACY = "26.4.7"
KEYCLOAK_CHOICES = (KEYCLOAK, KEYCLOAK_LEGACY)

# The Maven plugin that copies the Keycloak distribution out of the repository without a POM.
MAVEN_DEPENDENCY_PLUGIN = "3.8.1"

# Java feature release each Keycloak line runs on; the JDK search takes the first match present.
# 26.6+ supports Java 25 officially; 26.4 is built for 17/21.
KEYCLOAK_JAVA = {KEYCLOAK: (25, 21), KEYCLOAK_LEGACY: (21, 17)}
