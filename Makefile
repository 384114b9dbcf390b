# The two commands of the README: `make demo` and `make test`. Everything else is a step they share.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint components mail-servers image-tools image node-tools down bench bench-quick

$(BIN)/kcmail: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# kube-apiserver, kubectl, etcd, helm, the one-node cluster's kubelet, scheduler and controller manager and
# the Argo CD health evaluators (built with Go; Argo CD 3.6 with the Go 1.27.3 toolchain, which the go command
# fetches) and Keycloak (fetched with Maven), cached per version.
components: $(BIN)/kcmail
	$(BIN)/kcmail dev build --keycloak-version 26.7.3 --keycloak-version 26.4.7 \
		--argocd-version 3.6.2 --argocd-version 3.2.12 --node

# Postfix and Dovecot, the environment's real MTA, are Debian's packages; installing them needs root.
mail-servers:
	@command -v postfix >/dev/null && command -v dovecot >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix dovecot-core; }

# The operator's image is built from the Dockerfile with buildah on Debian bases made by mmdebstrap
# (Debian's packages; no registry is reached), cached by a digest of its inputs.
image-tools:
	@command -v buildah >/dev/null && command -v mmdebstrap >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah mmdebstrap; }

image: image-tools $(BIN)/kcmail
	$(BIN)/kcmail dev image

# The one-node cluster the chart tests install on (kcmail dev up --node): Debian's container runtime and
# CNI plugins; the kubelet, scheduler and controller manager are built with Go like the API server.
node-tools:
	@command -v containerd >/dev/null && command -v runc >/dev/null && test -x /usr/lib/cni/bridge || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq containerd runc containernetworking-plugins; }

lint: $(BIN)/kcmail
	$(BIN)/ruff check operator tests bench

test: lint components mail-servers image node-tools
	$(BIN)/pytest

demo: components mail-servers
	$(BIN)/kcmail demo

down: $(BIN)/kcmail
	$(BIN)/kcmail dev down

# The benchmarks against their floors (docs/benchmarks.md): 30 to 60 minutes on 2 cores, in an environment
# of their own. bench-quick is the few-minute version the test suite runs as a smoke test.
bench: components
	$(BIN)/python -m bench

bench-quick: components
	$(BIN)/python -m bench --quick
