"""The counters that survive restarts, kept in the queue database's ``counters`` table.

Two ways in, so that a count is never lost to a normal stop and never doubled:

- **Job ends** are counted inside the transaction that records the end (a ``Jobs``
  end listener): the count exists exactly when the end does, even across kill -9.
- **Bytes and retries** happen too often for a write each. They add to deltas in
  memory, which :meth:`Tally.serve` writes in one small transaction every
  :data:`FLUSH_INTERVAL_S` (and once more when the daemon stops). A crash (kill -9,
  a power cut) loses at most that interval's bytes and retries: the counters then
  under-count, they never jump backwards (docs/operations.md).

The totals served to a scrape are in memory: the table's rows at start plus what
was counted since; no scrape reads the table.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import sqlalchemy as sa
import trio
from dataerai.contract import TERMINAL_JOB_STATES
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from dataeraid import log, schema
from dataeraid.observe import catalogue
from dataeraid.observe.catalogue import Metric

_log = log.get("dataeraid.observe")

#: How often counted bytes and retries are written to the queue database, at most.
FLUSH_INTERVAL_S = 10.0

Key = tuple[str, tuple[str, ...]]


class Spends(Protocol):
    async def spend(self, n: int) -> None: ...

    def burst_bytes(self) -> int | None: ...


def _labels(metric: Metric, values: Sequence[str]) -> tuple[str, ...]:
    assert len(values) == len(metric.labels), f"{metric.name} takes {metric.labels}"
    return tuple(values)


def _add_rows(conn: Connection, deltas: dict[Key, float]) -> None:
    table = schema.counters
    for (name, labels), delta in deltas.items():
        row = {"name": name, "labels": json.dumps(list(labels)), "value": delta}
        statement = sqlite_insert(table).values(**row)
        conn.execute(statement.on_conflict_do_update(
            index_elements=[table.c.name, table.c.labels], set_={"value": table.c.value + delta}))


def job_end_counts(job: dict[str, Any], state: str) -> dict[Key, float]:
    """What one job's end adds to the counters."""
    kind = str(job["kind"])
    counts: dict[Key, float] = {(catalogue.JOBS_FINISHED.name, (kind, state)): 1}
    if state == "failed":
        counts[(catalogue.JOB_ERRORS.name, (str(job.get("error_code") or "internal"),))] = 1
    elif state == "completed":
        files = job.get("files")
        counts[(catalogue.TRANSFER_FILES.name, (kind,))] = len(files) if isinstance(files, list) and files else 1
    return counts


class _Counted:
    """A job's bandwidth share that counts the bytes passing through it."""

    def __init__(self, inner: Spends, tally: Tally, direction: str) -> None:
        self._inner = inner
        self._tally = tally
        self._key: Key = (catalogue.TRANSFER_BYTES.name, (direction,))

    async def spend(self, n: int) -> None:
        await self._inner.spend(n)
        if n > 0:
            self._tally._add(self._key, n)

    def burst_bytes(self) -> int | None:
        return self._inner.burst_bytes()


class Tally:
    """The persisted counters of :data:`catalogue.COUNTERS`. Trio-thread only, but for
    :meth:`record_job_end`, which runs in the store's thread and touches no memory."""

    def __init__(self) -> None:
        self._totals: dict[Key, float] = {}
        self._pending: dict[Key, float] = {}

    # --- counting -------------------------------------------------------------------

    def _add(self, key: Key, n: float) -> None:
        self._totals[key] = self._totals.get(key, 0) + n
        self._pending[key] = self._pending.get(key, 0) + n

    def add(self, metric: Metric, labels: Sequence[str], n: float = 1) -> None:
        """Count ``n`` (written with the next flush)."""
        assert metric in catalogue.COUNTERS, metric.name
        self._add((metric.name, _labels(metric, labels)), n)

    def counting(self, spender: Spends, direction: str) -> Spends:
        """``spender``, counting every byte spent through it as ``direction``'s."""
        return _Counted(spender, self, direction)

    def retried(self, kind: str, code: str) -> None:
        self.add(catalogue.RETRIES, (kind, code))

    def record_job_end(self, conn: Connection, _emit: object, job: dict[str, Any], state: str) -> str | None:
        """A ``Jobs`` end listener: a job's end counted in its own transaction."""
        if state not in TERMINAL_JOB_STATES:
            return None
        counts = job_end_counts(job, state)
        _add_rows(conn, counts)
        return json.dumps([[name, list(labels), n] for (name, labels), n in counts.items()])

    def job_ended(self, key: str) -> None:
        """The end's transaction committed: the in-memory totals follow."""
        for name, labels, n in json.loads(key):
            counted = (name, tuple(labels))
            self._totals[counted] = self._totals.get(counted, 0) + n

    # --- the table ----------------------------------------------------------------

    @staticmethod
    def read(conn: Connection) -> dict[Key, float]:
        rows = conn.execute(sa.select(schema.counters)).mappings()
        return {(r["name"], tuple(json.loads(r["labels"]))): float(r["value"]) for r in rows}

    @classmethod
    async def loaded(cls, store: Any) -> Tally:
        """A tally that goes on from the totals the table holds: made before any job can end."""
        tally = cls()
        tally._totals = await store.transaction(cls.read)
        return tally

    async def flush(self, store: Any) -> None:
        """Write what was counted since the last flush, in one transaction."""
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        try:
            await store.transaction(lambda conn: _add_rows(conn, batch))
        except BaseException:
            for key, n in batch.items():  # written next time
                self._pending[key] = self._pending.get(key, 0) + n
            raise

    async def serve(self, store: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Flush every :data:`FLUSH_INTERVAL_S`, and once more when cancelled (the daemon stops)."""
        task_status.started()
        try:
            while True:
                await trio.sleep(FLUSH_INTERVAL_S)
                await self.flush(store)
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await self.flush(store)
                except Exception:
                    _log.exception("could not write the last counts")

    # --- reading ----------------------------------------------------------------------

    def values(self, metric: Metric) -> Iterator[tuple[tuple[str, ...], float]]:
        """The metric's label values and totals, in a stable order."""
        for (name, labels), value in sorted(self._totals.items()):
            if name == metric.name:
                yield labels, value
