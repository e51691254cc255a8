"""The event bus: one increasing id sequence, durable state events, transient
progress, per-subscriber bounded buffers with gap markers, replay from the store.

Ids: state events get their ids inside the transaction that stores them, under
the bus lock, so ids are published in increasing order. Progress events take an
id only when no commit is in flight (else they are skipped; they are throttled
samples anyway). Ids are handed out from blocks reserved in the database, so
they keep increasing across restarts even though progress events are not stored.

A subscriber that cannot keep up never slows anyone: past ``buffer_size``
queued events, further events are dropped for it and it receives one ``gap``
event that names the missed range, which it can replay with ``since``.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import trio
from sqlalchemy.engine import Connection

from dataeraid.store import Store

T = TypeVar("T")
Event = dict[str, Any]
Emit = Callable[[str, "str | None", dict[str, Any]], Event]

ID_BLOCK = 1_000_000
_RESERVED_KEY = "event_ids_reserved_until"
DEFAULT_BUFFER = 1024


class Subscription:
    """One subscriber's view of the bus: replayed durable events, then live ones."""

    def __init__(self, bus: EventBus, jobs: Sequence[str] | None, buffer_size: int,
                 types: Sequence[str] | None = None) -> None:
        self._bus = bus
        self._jobs = frozenset(jobs) if jobs else None
        self._types = frozenset(types) if types else None
        self._buffer: collections.deque[Event] = collections.deque()
        self._buffer_size = buffer_size
        self._wakeup = trio.Event()
        self._replay_after: int | None = None
        self._replay_until = 0
        self._pending: collections.deque[Event] = collections.deque()
        self._last_id = 0
        self.closed = False

    def wants(self, event: Event) -> bool:
        """Whether the filters let ``event`` through (``gap`` markers always pass)."""
        if event["type"] == "gap":
            return True
        if self._types is not None and event["type"] not in self._types:
            return False
        return self._jobs is None or event.get("job_id") in self._jobs

    def offer(self, event: Event) -> None:
        """Queue a live event without ever blocking; overflow becomes a gap marker."""
        if self.closed or not self.wants(event):
            return
        last = self._buffer[-1] if self._buffer else None
        if last is not None and last["type"] == "gap" and len(self._buffer) >= self._buffer_size:
            last["missed_to"] = event["id"]
            last["id"] = event["id"]
        elif len(self._buffer) >= self._buffer_size:
            self._buffer.append(
                {"id": event["id"], "type": "gap", "time": event["time"], "missed_from": event["id"],
                 "missed_to": event["id"]}
            )
        else:
            self._buffer.append(event)
        self._wakeup.set()

    def close(self) -> None:
        self.closed = True
        self._bus._subscribers.discard(self)
        self._wakeup.set()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self.closed:
                raise StopAsyncIteration
            if not self._pending and self._replay_after is not None:
                page = await self._bus.store.events_since(
                    self._replay_after, list(self._jobs or ()), limit=256, types=list(self._types or ()))
                page = [e for e in page if e["id"] <= self._replay_until]
                if page:
                    self._replay_after = page[-1]["id"]
                    self._pending.extend(page)
                else:
                    self._replay_after = None
            if self._pending:
                event: Event = self._pending.popleft()
                self._last_id = event["id"]
                return event
            if self._buffer:
                event = self._buffer.popleft()
                if event["id"] <= self._last_id and event["type"] != "gap":
                    continue  # already delivered by the replay
                self._last_id = event["id"]
                return event
            self._wakeup = trio.Event()
            await self._wakeup.wait()


class EventBus:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = trio.Lock()
        self._next_id = 1
        self._reserved_until = 0
        self._subscribers: set[Subscription] = set()

    async def start(self) -> None:
        """Continue the id sequence after everything any earlier run handed out."""

        def reserve(conn: Connection) -> int:
            reserved = int(Store.read_setting(conn, _RESERVED_KEY) or 0)
            Store.write_setting(conn, _RESERVED_KEY, str(reserved + ID_BLOCK))
            return reserved

        start = await self.store.transaction(reserve)
        self._next_id = start + 1
        self._reserved_until = start + ID_BLOCK

    @property
    def last_id(self) -> int:
        return self._next_id - 1

    def _event(self, event_id: int, type_: str, job_id: str | None, payload: dict[str, Any]) -> Event:
        event: Event = {"id": event_id, "type": type_, "time": time.time()}
        if job_id is not None:
            event["job_id"] = job_id
        event.update(payload)
        return event

    async def commit(self, write: Callable[[Connection, Emit], T]) -> T:
        """Run ``write(conn, emit)`` in one transaction and publish what it emitted.

        ``emit(type, job_id, payload)`` stores an event in that same transaction,
        so an event exists exactly when the change it reports was committed.
        """
        async with self._lock:
            emitted: list[Event] = []
            grew = False

            def work(conn: Connection) -> T:
                nonlocal grew
                emitted.clear()

                def emit(type_: str, job_id: str | None, payload: dict[str, Any]) -> Event:
                    event = self._event(self._next_id + len(emitted), type_, job_id, payload)
                    emitted.append(event)
                    return event

                result = write(conn, emit)
                # Stored at the end of the same transaction: nothing in a write reads back the
                # events it emitted, and one statement for all of them is what makes a batch cheap.
                Store.insert_events(conn, emitted)
                if self._next_id + len(emitted) + ID_BLOCK // 2 > self._reserved_until:
                    Store.write_setting(conn, _RESERVED_KEY, str(self._reserved_until + ID_BLOCK))
                    grew = True
                return result

            result = await self.store.transaction(work)
            if grew:
                self._reserved_until += ID_BLOCK
            self._next_id += len(emitted)
            for event in emitted:
                self._fan_out(event)
            return result

    def publish_transient(self, type_: str, job_id: str | None, payload: dict[str, Any]) -> bool:
        """Publish a progress-like event that is not stored. False if it was skipped."""
        if self._lock.locked() or self._next_id >= self._reserved_until:
            return False
        event = self._event(self._next_id, type_, job_id, payload)
        self._next_id += 1
        self._fan_out(event)
        return True

    def followed_jobs(self) -> frozenset[str]:
        """The jobs some subscriber names in its filter (``job.wait``, the SDK waiting): never pruned."""
        return frozenset(job for sub in self._subscribers if sub._jobs for job in sub._jobs)

    def _fan_out(self, event: Event) -> None:
        for subscriber in list(self._subscribers):
            subscriber.offer(event)

    async def subscribe(
        self, since: int | None = None, jobs: Sequence[str] | None = None, buffer_size: int = DEFAULT_BUFFER,
        types: Sequence[str] | None = None,
    ) -> Subscription:
        """Register a subscriber. With ``since``, stored events after it come first.

        ``jobs`` and ``types`` filter (``gap`` markers always come through). The
        subscription never blocks the bus: see ``Subscription.offer``.
        """
        subscription = Subscription(self, jobs, buffer_size, types)
        async with self._lock:
            self._subscribers.add(subscription)
            if since is not None:
                subscription._replay_after = since
                subscription._replay_until = self.last_id
        return subscription
