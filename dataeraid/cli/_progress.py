"""What the CLI shows while it waits for a job: a tqdm bar on stderr, fed by the
SDK's ``ProgressEvent``s, and a notice each time the job waits (why, and when it
tries again) and when it goes on, fed by the SDK's ``on_state``."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from datetime import datetime
from types import TracebackType

import click
from dataerai import Job, ProgressEvent
from tqdm import tqdm

from ._output import as_dict, json_default

#: How a notice names a state in which the job does not move.
STATE_WORDS = {
    "waiting_for_network": "waiting for network",
    "waiting_for_auth": "waiting for auth",
    "scheduled": "scheduled",
    "paused": "paused",
}
#: The bar while the job waits: no rate (it would stand still), and the word.
_WAITING_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, waiting]"
_WAITING_FORMAT_NO_TOTAL = "{desc}: {n_fmt} [{elapsed}, waiting]"


def wanted(*, as_json: bool) -> bool:
    """A bar only for a person watching: stderr is a terminal and the output is not JSON."""
    return not as_json and sys.stderr.isatty()


def describe_wait(job: Job, now: datetime | None = None) -> str:
    """One line for a person about a job that does not move: what it waits for, why, and
    when it tries again, e.g. ``waiting for network: cannot reach http://…: connection
    refused (retrying in 8 s)``. A job that moves is just its state."""
    text = STATE_WORDS.get(job.state, job.state.replace("_", " "))
    why = why_it_waits(job, now)
    return f"{text}: {why}" if why else text


def why_it_waits(job: Job, now: datetime | None = None) -> str:
    """The reason a job waits and when it tries again; empty for a job that moves."""
    waiting = job.waiting
    if waiting is None:
        return f"`dataerai jobs resume {job.job_id}` goes on" if job.state == "paused" else ""
    text = waiting.reason or waiting.code
    seconds = waiting.retry_in_s(now)
    if job.state == "scheduled" and waiting.retry_at is not None:
        # Hours away, in the daemon's local time like the window itself: a clock time, not seconds.
        text += f"; starts at {waiting.retry_at.astimezone().strftime('%Y-%m-%d %H:%M %Z')}"
    elif seconds is not None:
        text += f" (retrying in {math.ceil(seconds)} s)" if seconds >= 0.5 else " (retrying now)"
    elif job.state == "waiting_for_auth" and "auth login" not in text:
        text += " (it goes on after `dataerai auth login`)"
    return text


class ProgressBar:
    """Draws a byte-scaled bar with the rate; ``callback`` is None when no bar is wanted.

    The bar appears with the first event, so a job that finishes at once draws nothing.
    While the job waits (:meth:`pause`) it shows no rate, and the time waited does not
    count into the rate once it goes on.
    """

    def __init__(self, *, enabled: bool, description: str | None = None) -> None:
        self._enabled = enabled
        self._description = description
        self._bar: tqdm[None] | None = None
        self._paused = False

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
            if self._paused:
                self._show_paused(bar)
        if bar.total != total:
            bar.total = total
        delta = event.bytes_done - bar.n
        if delta >= 0:
            bar.update(delta)
        else:  # the transfer started over (a retried part, a changed file): redraw from there
            bar.reset(total=total)
            bar.update(event.bytes_done)

    def pause(self) -> None:
        """The job waits: draw the bar without a rate."""
        self._paused = True
        if self._bar is not None:
            self._show_paused(self._bar)

    def go_on(self) -> None:
        """The job moves again: the rate comes back, counted from now."""
        if not self._paused:
            return
        self._paused = False
        if self._bar is not None:
            self._bar.bar_format = None
            self._bar.unpause()
            self._bar.refresh()

    def _show_paused(self, bar: tqdm[None]) -> None:
        bar.bar_format = _WAITING_FORMAT if bar.total else _WAITING_FORMAT_NO_TOTAL
        bar.refresh()

    def note(self, line: str) -> None:
        """A line on stderr, above the bar if there is one."""
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        else:
            click.echo(line, err=True)

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


class JobWatch:
    """All the CLI shows while it waits for one job, on stderr (stdout keeps the result).

    Each time the job stops moving (``waiting_for_network``, ``waiting_for_auth``,
    ``paused``), and each time it waits again with a new reason or retry time, one
    notice: a line (``describe_wait``) above the bar or alone, or with ``--json`` a
    JSON object ``{"job_id", "state", "waiting"}``. When it moves again, one more:
    ``running again`` (``{"job_id", "state": "running", "waiting": null}``).
    """

    def __init__(self, *, as_json: bool, description: str | None = None) -> None:
        self._as_json = as_json
        self.bar = ProgressBar(enabled=wanted(as_json=as_json), description=description)
        self._held = False

    def on_progress(self, event: ProgressEvent) -> None:
        if self.bar.callback is not None:
            self.bar.update(event)

    def on_state(self, job: Job) -> None:
        if job.state in STATE_WORDS:
            self._held = True
            self.bar.pause()
            self._notice(job, describe_wait(job))
        elif self._held and not job.is_terminal:
            self._held = False
            self.bar.go_on()
            self._notice(job, f"{STATE_WORDS.get(job.state, job.state.replace('_', ' '))} again")

    def _notice(self, job: Job, line: str) -> None:
        if self._as_json:
            waiting = as_dict(job.waiting) if job.waiting is not None else None
            notice = {"job_id": job.job_id, "state": job.state, "waiting": waiting}
            click.echo(json.dumps(notice, default=json_default, ensure_ascii=False), err=True)
        else:
            self.bar.note(line)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> JobWatch:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
