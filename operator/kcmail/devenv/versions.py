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

# Argo CD whose own code judges the health checks in argocd/ (tests only): the newest release, and the
# newest one before 3.6 changed how an object being deleted looks. Argo CD 3.3 to 3.5 build gitops-engine
# from a directory of their repository that no Go module serves, so 3.2 stands for them: its util/lua and
# gitops-engine health code are theirs but for import paths (docs/argocd.md).
ARGOCD = "3.6.2"
ARGOCD_BEFORE_3_6 = "3.2.12"
ARGOCD_CHOICES = (ARGOCD, ARGOCD_BEFORE_3_6)
# The Go release a build takes when its modules need a newer Go than the machine's (Argo CD 3.6 needs 1.27);
# the go command fetches it as a module, for that build alone.
GO_TOOLCHAIN = "go1.27.3"
