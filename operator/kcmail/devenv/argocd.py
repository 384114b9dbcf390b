"""The Argo CD health checks in ``argocd/``, and their verdicts as Argo CD's own code gives them.

A health script is an ``argocd-cm`` resource customization. What Argo CD shows for an object is not the
script's answer alone: gitops-engine's ``GetResourceHealth`` decides for an object being deleted (3.5 and
earlier answer ``Progressing "Pending deletion"`` without running the script; 3.6 runs it but keeps that
answer unless the script sets ``deletionMessage``). So the verdicts come from ``argocd/health-eval``, a
small Go program built against each Argo CD release's own modules (``components.build_argocd_health_eval``)
that calls what the application controller calls, and a case in ``health_test.yaml`` says what each
release shows.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
CUSTOMIZATIONS = REPO / "argocd" / "resource_customizations"
GROUP = "kcmail.io"
KINDS = ("MailConfig", "KeycloakConnection", "ClusterKeycloakConnection")


class EvaluationFailed(RuntimeError):
    """health-eval could not run or read its input; the message carries its error output."""


@dataclass(frozen=True)
class Health:
    status: str
    message: str


@dataclass(frozen=True)
class HealthCase:
    """One case of a ``health_test.yaml``: Argo CD's own format, plus what older releases show.

    ``healthStatus`` is what the newest Argo CD shows. ``healthStatusUpTo`` maps a release line
    (``"3.5"``) to what that line and every earlier one show, where they differ.
    """

    kind: str
    input_path: Path
    expected: Health
    expected_up_to: Mapping[tuple[int, int], Health] = field(default_factory=dict)

    def expected_on(self, argocd_version: str) -> Health:
        """What Argo CD ``argocd_version`` shows for this case."""
        line = _release_line(argocd_version)
        for up_to in sorted(self.expected_up_to):
            if line <= up_to:
                return self.expected_up_to[up_to]
        return self.expected


def script_path(kind: str) -> Path:
    return CUSTOMIZATIONS / GROUP / kind / "health.lua"


def argocd_cm_key(kind: str) -> str:
    """The ``argocd-cm`` key that carries a kind's health script."""
    return f"resource.customizations.health.{GROUP}_{kind}"


def argocd_cm_data() -> dict[str, str]:
    """The ``argocd-cm`` data that installs every health script, as docs/argocd.md shows it."""
    return {argocd_cm_key(kind): script_path(kind).read_text() for kind in KINDS}


def cases(kind: str) -> list[HealthCase]:
    """The cases of a kind's ``health_test.yaml``."""
    folder = CUSTOMIZATIONS / GROUP / kind
    tests = yaml.safe_load((folder / "health_test.yaml").read_text())["tests"]
    return [HealthCase(kind=kind, input_path=folder / test["inputPath"], expected=_health(test["healthStatus"]),
                       expected_up_to={_release_line(line): _health(health)
                                       for line, health in (test.get("healthStatusUpTo") or {}).items()})
            for test in tests]


def evaluate(health_eval: Path, objects: Sequence[Mapping[str, Any]],
             argocd_cm: Mapping[str, str] | None = None) -> list[Health | None]:
    """The health Argo CD records for each of ``objects``, in one run of ``health_eval``.

    ``argocd_cm`` defaults to the data that installs this repository's scripts. None stands for an object
    Argo CD assesses no health for. A script that fails reads as Unknown with the error as its message,
    as the application controller records it.
    """
    request = {"argocdCM": dict(argocd_cm_data() if argocd_cm is None else argocd_cm),
               "objects": [json.loads(json.dumps(obj, default=str)) for obj in objects]}
    result = subprocess.run([str(health_eval)], input=json.dumps(request), capture_output=True, text=True,
                            timeout=60, check=False)
    if result.returncode != 0:
        raise EvaluationFailed(f"{health_eval} exited {result.returncode}: {result.stderr.strip()}")
    return [Health(answer["status"], answer["message"]) if answer["status"] else None
            for answer in json.loads(result.stdout)]


def _health(value: Mapping[str, str]) -> Health:
    return Health(value["status"], value.get("message", ""))


def _release_line(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)
