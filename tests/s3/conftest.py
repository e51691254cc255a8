"""Fixtures for the scale-out tests: SeaweedFS and PostgreSQL (``tests/server/backends.py``),
and the stack tools (``tools/``)."""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_TESTS.parent / "tools"))
sys.path.insert(0, str(_TESTS / "server"))

from backends import postgres_database, s3_bucket, seaweed  # noqa: E402, F401 - fixtures
