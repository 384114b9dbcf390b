"""The component builder names what is missing, with the fix, and reads upstream metadata correctly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kcmail.devenv import components

pytestmark = pytest.mark.unit


def test_a_missing_go_is_named_with_the_fix(tmp_path):
    env = {**os.environ, "KCMAIL_CACHE": str(tmp_path / "cache"), "PATH": str(Path(sys.executable).parent)}
    result = subprocess.run([sys.executable, "-m", "kcmail.cli", "dev", "build"], capture_output=True, text=True,
                            env=env, timeout=60, check=False)
    assert result.returncode == 2
    assert "missing prerequisite: go is not on PATH. Install Go 1.24 or newer" in result.stderr


def _fake_jdk(root: Path, name: str, version: str) -> Path:
    home = root / name
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "java").write_text("")
    (home / "release").write_text(f'IMPLEMENTOR="x"\nJAVA_VERSION="{version}"\n')
    return home


def test_java_home_prefers_the_release_keycloak_wants(tmp_path, monkeypatch):
    monkeypatch.delenv("KCMAIL_KEYCLOAK_JAVA_HOME", raising=False)
    _fake_jdk(tmp_path, "jdk17", "17.0.15")
    jdk25 = _fake_jdk(tmp_path, "jdk25", "25.0.1")
    assert components.find_java_home("26.7.3", tmp_path) == jdk25


def test_a_missing_jdk_is_named_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("KCMAIL_KEYCLOAK_JAVA_HOME", raising=False)
    _fake_jdk(tmp_path, "jdk11", "11.0.2")
    with pytest.raises(components.PrerequisiteMissing, match=r"needs a JDK of release 25 or 21; found \[11\]"):
        components.find_java_home("26.7.3", tmp_path)


def test_staging_modules_are_read_from_the_kubernetes_go_mod():
    gomod = """module k8s.io/kubernetes
require (
\tk8s.io/api v0.0.0
\tk8s.io/streaming v0.0.0
\tgithub.com/spf13/cobra v1.10.0
\tk8s.io/klog/v2 v2.130.1
)
replace k8s.io/api => ./staging/src/k8s.io/api
"""
    assert components._staging_modules(gomod) == ["k8s.io/api", "k8s.io/streaming"]


def test_version_stamp_covers_both_version_packages():
    flags = components._k8s_ldflags("1.35.4")
    assert "-X k8s.io/component-base/version.gitVersion=v1.35.4" in flags
    assert "-X k8s.io/client-go/pkg/version.gitMinor=35" in flags


def test_helm_stamp_sets_its_version_and_the_kubernetes_release_of_its_client_go():
    flags = components._helm_ldflags("3.21.4", "v0.35.2")
    assert "-X helm.sh/helm/v3/internal/version.version=v3.21.4" in flags
    # Without these, `helm template` assumes Kubernetes 1.20 and refuses charts that need more.
    for pkg in ("helm.sh/helm/v3/pkg/chartutil", "helm.sh/helm/v3/pkg/lint/rules"):
        assert f"-X {pkg}.k8sVersionMajor=1" in flags
        assert f"-X {pkg}.k8sVersionMinor=35" in flags


ARGOCD_GOMOD = """module github.com/argoproj/argo-cd/v3

go 1.27.0

require (
\tgithub.com/argoproj/argo-cd/gitops-engine/v3 v3.6.2 // Tagged as gitops-engine/vX.Y.Z at release time
\tk8s.io/api v0.37.0
)

replace (
\t// pinned for a reason upstream gives
\tgithub.com/golang/protobuf => github.com/golang/protobuf v1.5.4
\tk8s.io/api => k8s.io/api v0.37.0
)

replace github.com/argoproj/argo-cd/gitops-engine/v3 => ./gitops-engine
replace example.test/single v1.0.0 => example.test/fork v1.0.1
"""


def test_a_wrapper_repeats_the_replaces_that_name_a_module_and_drops_local_ones():
    assert components._module_replaces(ARGOCD_GOMOD) == [
        "-replace=github.com/golang/protobuf=github.com/golang/protobuf@v1.5.4",
        "-replace=k8s.io/api=k8s.io/api@v0.37.0",
        "-replace=example.test/single@v1.0.0=example.test/fork@v1.0.1",
    ]


def test_a_go_line_newer_than_the_machines_go_is_recognised():
    assert components._go_directive(ARGOCD_GOMOD) == (1, 27, 0)
    assert components._go_directive(ARGOCD_GOMOD) > components._go_release("go1.26.8")
    assert components._go_directive("module x\n\ngo 1.25.5\n") < components._go_release("go1.26.8")


def test_the_gitops_engine_import_path_follows_the_argocd_release():
    assert components._health_eval_tags(ARGOCD_GOMOD) == ""
    old = "module github.com/argoproj/argo-cd/v3\nrequire (\n\tgithub.com/argoproj/gitops-engine v0.7.1-0.2026\n)\n"
    assert components._health_eval_tags(old) == "gitops_engine_v0"
