"""``dataerai status``: one screen on how everything is: the daemon, its queue, the watches, the last errors.

The last errors come from the daemon's stored events (``events.list``): jobs
that failed and watched files that were quarantined. Stored events are read
forward only, so the newest are found by reading windows of ids backwards from
the newest id (``daemon.status``'s ``last_event_id``) until enough were found
or ``LOOKBACK_EVENTS`` were looked at: a daemon with a long history costs a few
small requests, never all of it.
"""

from __future__ import annotations

from typing import Any

import click
from dataerai import DataeraiClient, Event

from dataeraid.bwlimit import format_size

from ._context import open_client, settings
from ._output import as_dict, iso, json_option, print_json
from ._watch import duration, state_of

#: How many of the last errors the summary shows.
LAST_ERRORS = 5
#: Events read per request while looking back, and the most looked at in all.
WINDOW_EVENTS = 200
LOOKBACK_EVENTS = 5000
#: The stored event types that can be errors, and the state that makes them one.
ERROR_STATES = {"job.state": "failed", "watch.file": "quarantined"}


def is_error(event: Event) -> bool:
    return ERROR_STATES.get(event.type) == event.state


def last_errors(client: DataeraiClient, last_event_id: int, count: int = LAST_ERRORS) -> list[Event]:
    """The newest ``count`` job failures and quarantined files among the stored events, oldest first."""
    found: list[Event] = []
    upper = last_event_id
    while upper > 0 and len(found) < count and last_event_id - upper < LOOKBACK_EVENTS:
        lower = max(0, upper - WINDOW_EVENTS)
        # The ids in (lower, upper] are at most upper - lower, and come first: newer events
        # that arrived meanwhile can only follow them.
        page = client.list_events(lower, types=list(ERROR_STATES), limit=upper - lower)
        found = [e for e in page if e.id <= upper and is_error(e)] + found
        upper = lower
    return found[-count:]


def error_of(event: Event) -> dict[str, Any]:
    """What a person (or a script) needs of one error event."""
    code = message = name = None
    if event.job is not None:
        name = event.job.file_name or event.job.local_path or event.job.asset_id
        if event.job.error is not None:
            code, message = event.job.error.code, event.job.error.message
    if event.file is not None and event.file.error is not None:
        code, message = event.file.error.code, event.file.error.message
    return {
        "event_id": event.id,
        "time": iso(event.time) if event.time is not None else None,
        "type": event.type,
        "job_id": event.job_id,
        "watch_id": event.watch_id,
        "path": event.path if event.type == "watch.file" else name,
        "code": code,
        "message": message,
    }


def describe_bandwidth(bandwidth: dict[str, Any]) -> str:
    """``daemon.status``'s ``bandwidth`` as one line: the limits in force and the timetable's next change."""
    def rate(key: str) -> str:
        value = bandwidth.get(key)
        return f"{format_size(value)}/s" if isinstance(value, int) and value > 0 else "no limit"

    text = f"upload {rate('upload_bps')}, download {rate('download_bps')}"
    if isinstance(bandwidth.get("shared_bps"), int) and bandwidth["shared_bps"] > 0:
        text += f", both together {rate('shared_bps')}"
    if bandwidth.get("bwlimit"):
        text += f"; timetable \"{bandwidth['bwlimit']}\""
        if bandwidth.get("next_change"):
            text += f", next change {bandwidth['next_change']}"
    return text


def describe_error(error: dict[str, Any]) -> str:
    what = f"job {error['job_id']}" if error["type"] == "job.state" else f"watch {error['watch_id']}"
    text = f"{error['time'] or '-'}  {what}"
    if error["path"]:
        text += f"  {error['path']}"
    text += " failed" if error["type"] == "job.state" else " quarantined"
    if error["code"]:
        text += f": [{error['code']}] {error['message'] or ''}".rstrip()
    return text


@click.command()
@json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show on one screen the daemon, its jobs by state, each watch folder and the last errors.

    A watch shows its state, its lag (the age of the oldest file not in the
    repository yet) and how many of its files are quarantined; the last errors
    are the latest failed jobs and quarantined files. Does not start a daemon:
    when none listens it exits 3.

    The bandwidth line gives the limits in force now and, with a ``bwlimit`` timetable,
    when they change next (local time).

    With --json: {"daemon": {"version", "pid", "socket", "last_event_id", "bandwidth"},
    "jobs": {STATE: COUNT, ...}, "watches": [WATCH, ...], "errors": [ERROR, ...]}.
    """
    socket = str(settings(ctx).paths.socket)
    with open_client(ctx, auto_start=False) as client:
        answer = client.call("daemon.status")
        answer = answer if isinstance(answer, dict) else {}
        watches = client.list_watches()
        last_id = answer.get("last_event_id")
        errors = [error_of(e) for e in last_errors(client, last_id)] if isinstance(last_id, int) else []
    jobs = answer.get("jobs")
    counts: dict[str, Any] = jobs if isinstance(jobs, dict) else {}
    if as_json:
        print_json({
            "daemon": {"version": answer.get("version"), "pid": answer.get("pid"), "socket": socket,
                       "last_event_id": last_id, "bandwidth": answer.get("bandwidth")},
            "jobs": counts,
            "watches": [as_dict(w) for w in watches],
            "errors": errors,
        })
        return
    click.echo(f"daemon: dataerai {answer.get('version', '?')}, pid {answer.get('pid', '?')}, socket {socket}")
    busy = ", ".join(f"{state} {n}" for state, n in counts.items() if n)
    click.echo(f"jobs: {busy or 'none'}")
    if isinstance(answer.get("bandwidth"), dict):
        click.echo(f"bandwidth: {describe_bandwidth(answer['bandwidth'])}")
    if not watches:
        click.echo("watches: none")
    else:
        click.echo("watches:")
        for w in watches:
            click.echo(f"  {w.watch_id}  {state_of(w)}  lag {duration(w.lag_s)}  pending {w.pending}"
                       f"  quarantined {w.quarantined}  {w.root}")
    if not errors:
        click.echo("last errors: none")
    else:
        click.echo("last errors:")
        for error in errors:
            click.echo(f"  {describe_error(error)}")
