"""The progress bar: tqdm on stderr, fed by the SDK's ``ProgressEvent``s."""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import TracebackType

from dataerai import ProgressEvent
from tqdm import tqdm


def wanted(*, as_json: bool) -> bool:
    """A bar only for a person watching: stderr is a terminal and the output is not JSON."""
    return not as_json and sys.stderr.isatty()


class ProgressBar:
    """Draws a byte-scaled bar with the rate; ``callback`` is None when no bar is wanted.

    The bar appears with the first event, so a job that finishes at once draws nothing.
    """

    def __init__(self, *, enabled: bool, description: str | None = None) -> None:
        self._enabled = enabled
        self._description = description
        self._bar: tqdm[None] | None = None

    @property
    def callback(self) -> Callable[[ProgressEvent], None] | None:
        return self.update if self._enabled else None

    def update(self, event: ProgressEvent) -> None:
        total = event.bytes_total or None
        bar = self._bar
        if bar is None:
            bar = self._bar = tqdm(
                total=total,
                desc=self._description or event.file_name or None,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                dynamic_ncols=True,
                leave=True,
            )
        if bar.total != total:
            bar.total = total
        delta = event.bytes_done - bar.n
        if delta >= 0:
            bar.update(delta)
        else:  # the transfer started over (a retried part, a changed file): redraw from there
            bar.reset(total=total)
            bar.update(event.bytes_done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
