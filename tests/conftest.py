"""Settings for the whole suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# The harnesses every part of the suite may use (tools/stack.py, tools/rpc_strategies.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

# The suite runs two workers on two cores beside real server and daemon processes, so
# wall-clock time per example says nothing about the code under test: Hypothesis judges
# examples by what they find, not by how long a loaded machine took to make them.
settings.register_profile("dataerai", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("dataerai")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and its key for 127.0.0.1 (PEM files): TLS on loopback."""
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key
