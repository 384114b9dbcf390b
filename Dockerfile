# syntax=docker/dockerfile:1
# The kcmail operator image: `kcmail run` on Python 3.11, as a numeric non-root user, with the runtime
# dependencies only (no compiler, no build or test tools). docs/install.md shows how to build and push it.
# RUNTIME_IMAGE is the final stage's base, the build stage's by default (python:3.11-slim, which keeps its
# own pip); `kcmail dev image` gives each stage a Debian base of its own, the final one without pip.
ARG PYTHON_IMAGE=python:3.11-slim
ARG RUNTIME_IMAGE=${PYTHON_IMAGE}

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
# The wheel, then a virtual environment holding it and its runtime dependencies (without the pip and
# setuptools venv brings), copied whole below.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && python3 -m venv /opt/kcmail \
    && /opt/kcmail/bin/pip install --no-cache-dir /wheels/kcmail-*.whl \
    && /opt/kcmail/bin/pip uninstall --yes setuptools pip

FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="kcmail" \
      org.opencontainers.image.description="Kubernetes operator for Keycloak realm SMTP settings with XOAUTH2" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/kcmail /opt/kcmail
# No bytecode written at run time: the root filesystem is read-only in the chart.
ENV PATH="/opt/kcmail/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A numeric user, so that Kubernetes can check runAsNonRoot without reading /etc/passwd.
USER 10001:10001
ENTRYPOINT ["kcmail"]
CMD ["run"]
