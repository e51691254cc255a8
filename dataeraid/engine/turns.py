"""The order of part bodies to the repository's own part endpoint (``upload_order``)."""

from __future__ import annotations

from dataclasses import dataclass

import trio


@dataclass(frozen=True)
class Turn:
    """Part bodies in order: a part's body starts once ``after`` is set (the previous part's
    body was sent, or its attempt ended either way), and it sets ``done`` when its own body
    was sent or its attempt ended. A failed attempt never holds the next part back. The
    repository's own part endpoint hashes parts that arrive in order as they stream
    (``upload_order`` in docs/configuration.md)."""

    after: trio.Event
    done: trio.Event

    @classmethod
    def first(cls) -> Turn:
        ready = trio.Event()
        ready.set()
        return cls(ready, trio.Event())

    def next(self) -> Turn:
        return Turn(self.done, trio.Event())
