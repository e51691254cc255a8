"""Schemathesis against a real server: every operation of its own OpenAPI document, with a write token.

A bounded, reproducible run (fixed seed, a few dozen requests per operation and mode, no
deadline) of ``tools/fuzz_server.py``, whose docstring says what is checked; ``make fuzz``
runs the longer campaign.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from dataerai_server.operations import OPERATIONS

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import fuzz_server

#: Requests per operation and generation mode; about 630 requests in all, 30 to 80 s
#: on the 2 busy cores (docs/reliability.md).
MAX_EXAMPLES = 12


def test_every_operation_survives_schemathesis(start_server: Any) -> None:
    server = start_server()
    token = server.add_user("fuzz@example.org").strip()
    objects = fuzz_server.seed_objects(server.url, token)
    report = fuzz_server.fuzz(server.url, token, objects, max_examples=MAX_EXAMPLES, seed=20_261_130)
    summary = "\n".join(report.lines())
    assert not report.failures, summary
    assert len(report.by_operation) == len(OPERATIONS), summary
    # The requests reached the handlers, not only the token check: successes and refusals alike.
    assert report.statuses[200] and report.statuses[201] and report.statuses[400] and report.statuses[404], summary
    assert not any(status >= 500 for status in report.statuses), summary
    print(summary)
