"""The README's demo command does what the README says, on the session's environment."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kcmail.devenv.processes import ProcessRegistry

pytestmark = pytest.mark.integration


def test_demo_ends_with_a_ready_mailconfig_and_a_delivered_mail(devenv):
    registry = ProcessRegistry(devenv.state_dir)
    try:
        result = subprocess.run([sys.executable, "-m", "kcmail.cli", "demo", "--dir", str(devenv.state_dir)],
                                capture_output=True, text=True, timeout=300, check=False)
    finally:
        # The demo leaves its operator running for the user; the tests after this one bring their own.
        registry.stop("operator")
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "Using the local environment already running" in out
    assert "Ready=True (Delivering)" in out
    assert "authTokenClientSecret  **********" in out
    assert "authenticated with XOAUTH2 as no-reply@acme.example (OAuth2 client smtp-app)" in out
    assert "kcmail dev down" in out
    assert devenv.issuer_client_secret not in out + result.stderr
    assert devenv.keycloak_admin_password not in out + result.stderr
