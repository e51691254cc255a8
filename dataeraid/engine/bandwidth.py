"""The daemon's bandwidth: fair links that every job's bytes pass through.

A job spends through its direction's link and then the shared one (:class:`Links`);
each link is shared evenly between clients, not jobs (:class:`FairBandwidth`).
Waiting uses Trio's clock, so tests fake time.
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field
from typing import Protocol

import trio


class Spender(Protocol):
    """What an engine's bytes pass through on their way: ``await spend(n)`` before sending ``n``."""

    async def spend(self, n: int) -> None: ...

    def burst_bytes(self) -> int | None:
        """The most one spend should ask for now, so that a limit feeds the link evenly (what
        it lets through in :data:`BURST_S`); None while nothing limits."""
        ...


#: How far ahead of the limit the link may be booked: a quarter second of burst at
#: most, so the limit holds over short windows too.
BURST_S = 0.25


@dataclass(eq=False)
class _Request:
    """One spend waiting for the link: ordered by its fair-queuing tag, then arrival."""

    tag: float
    seq: int
    size: int
    granted: bool = False
    wake: trio.Event = field(default_factory=trio.Event)

    def __lt__(self, other: _Request) -> bool:
        return (self.tag, self.seq) < (other.tag, other.seq)


class FairBandwidth:
    """The daemon-wide limit, shared fairly between clients and without waste.

    One link of ``rate`` bytes a second. While several clients want more than the
    link gives, it is shared evenly between the clients (not their jobs: a client
    with five jobs gets what a client with one gets), by start-time fair queuing:
    each spend gets a tag, its client's bytes so far counted from the link's
    virtual time, and the waiting spend with the lowest tag goes next. A client
    that wants less than its even share (a slow disk, a slow server, a paused
    job) leaves the rest to the others instead of wasting it. An unlimited daemon
    (rate 0) lets everything through.

    No task of its own: the first spend that has to wait paces the link for all
    the waiting ones until its own turn, then hands the pacing to the next.

    ``set_rate`` changes the rate at run time (the ``bwlimit`` timetable, a
    reload): what the link booked at the old rate is rescaled to the new one, and
    the spends waiting keep their tags, so their order, and the fairness, holds
    across the change. Turning the limit off lets every waiting spend through at once.
    """

    def __init__(self, rate_bps: int) -> None:
        self.rate = rate_bps
        self._changed = trio.Event()  # set (and replaced) by set_rate, to wake the pacer
        self._jobs: dict[str, int] = {}
        self._finish: dict[str, float] = {}  # client -> the tag its last spend finished at
        self._virtual = 0.0  # the tag of the spend the link took last
        self._booked_until = -math.inf  # when the link has sent every byte it took
        self._waiting: list[_Request] = []  # a heap
        self._arrivals = itertools.count()
        self._pacing = False

    def join(self, client: str) -> Spender:
        """What a job of ``client`` spends through; call ``leave`` when the job stops."""
        self._jobs[client] = self._jobs.get(client, 0) + 1
        return _ClientShare(self, client)

    def leave(self, client: str) -> None:
        self._jobs[client] -= 1
        if self._jobs[client] == 0:
            del self._jobs[client]
            self._finish.pop(client, None)
            if not self._jobs:
                self._virtual = 0.0  # the tags start again, so they never grow without end

    async def spend(self, client: str, n: int) -> None:
        if self.rate <= 0 or n <= 0:
            return
        tag = max(self._finish.get(client, 0.0), self._virtual) + n
        self._finish[client] = tag
        if not self._waiting and not self._pacing and self._link_ready():
            self._take(tag, n)
            return
        request = _Request(tag, next(self._arrivals), n)
        heapq.heappush(self._waiting, request)
        try:
            while not request.granted:
                if self._pacing:
                    await request.wake.wait()
                    request.wake = trio.Event()
                else:
                    await self._pace_until(request)
        finally:
            if not request.granted:  # cancelled while waiting
                self._waiting.remove(request)
                heapq.heapify(self._waiting)
                self._hand_over()

    def burst_bytes(self) -> int | None:
        return None if self.rate <= 0 else max(1, int(self.rate * BURST_S))

    def _link_ready(self) -> bool:
        return self._booked_until - trio.current_time() <= BURST_S

    def _take(self, tag: float, n: int) -> None:
        if self.rate > 0:
            self._booked_until = max(self._booked_until, trio.current_time()) + n / self.rate
        self._virtual = tag

    def set_rate(self, rate_bps: int) -> None:
        """From now on, ``rate_bps`` bytes a second (0: no limit), for the spends waiting too."""
        old, self.rate = self.rate, rate_bps
        if old == rate_bps:
            return
        now = trio.current_time()
        if old > 0 and rate_bps > 0 and self._booked_until > now:
            # The bytes booked but not yet "sent" go out at the new rate.
            self._booked_until = now + (self._booked_until - now) * old / rate_bps
        elif rate_bps <= 0:
            self._booked_until = -math.inf
        self._changed.set()
        self._changed = trio.Event()

    async def _pace_until(self, mine: _Request) -> None:
        """Grant the waiting spends, lowest tag first, at the link's rate, until ``mine``."""
        self._pacing = True
        try:
            while not mine.granted:
                while self.rate > 0 and not self._link_ready():
                    # Spends that arrive meanwhile join the heap, and the head is read after;
                    # a new rate wakes the pacer early, and the wait is measured again.
                    changed = self._changed
                    with trio.move_on_at(self._booked_until - BURST_S):
                        await changed.wait()
                request = heapq.heappop(self._waiting)
                self._take(request.tag, request.size)
                request.granted = True
                request.wake.set()
        finally:
            self._pacing = False
            self._hand_over()

    def _hand_over(self) -> None:
        """Wake the head of the waiting spends to pace the link, if nobody does."""
        if self._waiting and not self._pacing:
            self._waiting[0].wake.set()


@dataclass
class _ClientShare:
    limit: FairBandwidth
    client: str

    async def spend(self, n: int) -> None:
        await self.limit.spend(self.client, n)

    def burst_bytes(self) -> int | None:
        return self.limit.burst_bytes()


@dataclass
class _ChainedShare:
    shares: tuple[Spender, ...]

    async def spend(self, n: int) -> None:
        for share in self.shares:
            await share.spend(n)

    def burst_bytes(self) -> int | None:
        bursts = [b for b in (share.burst_bytes() for share in self.shares) if b is not None]
        return min(bursts, default=None)


class Links:
    """The daemon's bandwidth: one fair link over both directions (``bandwidth_limit_bps``)
    and one per direction (``bwlimit``'s upload:download). A job spends through its
    direction's link and then the shared one; config.toml sets at most one of the two
    kinds, so only one of them limits at a time, and an unlimited link lets spends
    straight through. The links exist whatever the settings, so a reload that
    switches from one kind to the other changes rates, never the jobs' links."""

    def __init__(self, shared_bps: int = 0, up_bps: int = 0, down_bps: int = 0) -> None:
        self.shared = FairBandwidth(shared_bps)
        self.up = FairBandwidth(up_bps)
        self.down = FairBandwidth(down_bps)

    def _direction(self, kind: str) -> FairBandwidth:
        return self.up if kind == "upload" else self.down

    def join(self, client: str, kind: str) -> Spender:
        """What a job of ``client`` of ``kind`` (upload, download) spends through; ``leave`` when it stops."""
        return _ChainedShare((self._direction(kind).join(client), self.shared.join(client)))

    def leave(self, client: str, kind: str) -> None:
        self._direction(kind).leave(client)
        self.shared.leave(client)

    def set_rates(self, shared_bps: int, up_bps: int, down_bps: int) -> None:
        self.shared.set_rate(shared_bps)
        self.up.set_rate(up_bps)
        self.down.set_rate(down_bps)
