"""Settings for the whole suite."""

from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

# The harnesses every part of the suite may use (tools/stack.py, tools/rpc_strategies.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

# The suite runs two workers on two cores beside real server and daemon processes, so
# wall-clock time per example says nothing about the code under test: Hypothesis judges
# examples by what they find, not by how long a loaded machine took to make them.
settings.register_profile("dataerai", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("dataerai")
