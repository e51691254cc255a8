"""docs/job-states.md lists exactly the contract's job states and ``jobs.TRANSITIONS``."""

from __future__ import annotations

import re
from pathlib import Path

from dataerai import contract

from dataeraid import jobs

DOC = (Path(__file__).parents[2] / "docs" / "job-states.md").read_text()


def _table(header: str) -> list[list[str]]:
    """The rows of the Markdown table whose header row starts with ``header``."""
    lines = DOC.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_the_state_table_lists_every_state_of_the_contract_in_its_order() -> None:
    states = [re.sub(r"`", "", row[0]) for row in _table("| state | meaning |")]
    assert tuple(states) == contract.JOB_STATES


def test_the_transition_table_is_transitions() -> None:
    documented = {}
    for source, targets in _table("| from | to |"):
        documented[source] = frozenset() if targets == "\u2013" else frozenset(
            re.sub(r"\s*\(.*?\)", "", t).strip() for t in re.sub(r"\(.*?\)", "", targets).split(","))
    assert documented == dict(jobs.TRANSITIONS)
    assert "## Transfer windows" in DOC and contract.OUTSIDE_WINDOW in DOC
