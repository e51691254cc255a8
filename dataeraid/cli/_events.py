"""``dataerai events``: the daemon's event stream, printed or followed."""

from __future__ import annotations

import json

import click
from dataerai import Event
from dataerai.contract import EVENT_TYPES

from ._context import open_client
from ._errors import EXIT_INTERRUPTED
from ._output import json_option

EVENT_TYPE_CHOICE = click.Choice(list(EVENT_TYPES))


def describe_event(event: Event) -> str:
    """One line for a person: id, time, type, job or watch, and what happened."""
    raw = event.raw
    when = str(raw.get("time", ""))
    head = f"{event.id}  {when}  {event.type}"
    if event.job_id:
        head += f"  {event.job_id}"
    if event.type == "job.state":
        return f"{head}  {event.previous_state or '-'} -> {event.state}"
    if event.type == "job.progress" and event.progress is not None:
        p = event.progress
        return f"{head}  {p.bytes_done}/{p.bytes_total} bytes  {p.rate_mbps:.1f} MB/s"
    if event.type == "job.priority":
        return f"{head}  priority {raw.get('previous_priority')} -> {raw.get('priority')}"
    if event.type == "watch.state":
        return f"{head}  {event.watch_id}  {event.previous_state or '-'} -> {event.state or 'removed'}"
    if event.type == "watch.file":
        line = f"{head}  {event.watch_id}  {event.path}  {event.previous_state or '-'} -> {event.state}"
        if event.file is not None and event.file.error is not None:
            line += f"  [{event.file.error.code}] {event.file.error.message}"
        return line
    if event.type == "gap":
        return f"{head}  missed events {event.missed_from}..{event.missed_to} (replay with --since)"
    return head


def _emit(event: Event, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(event.raw, ensure_ascii=False))
    else:
        click.echo(describe_event(event))


@click.command()
@click.option("--follow", "-f", is_flag=True, help="Keep printing live events until Ctrl-C.")
@click.option("--since", type=click.IntRange(min=0), metavar="ID",
              help="Start after event ID (replayed from the store).")
@click.option("--job", "jobs", multiple=True, metavar="ID", help="Only events of this job; repeatable.")
@click.option("--type", "types", multiple=True, type=EVENT_TYPE_CHOICE, help="Only events of this type; repeatable.")
@json_option
@click.pass_context
def events(ctx: click.Context, follow: bool, since: int | None, jobs: tuple[str, ...], types: tuple[str, ...],
           as_json: bool) -> None:
    """Print the daemon's events: stored ones, or with --follow a live stream.

    Without --follow: the stored (durable) events after --since (default: all
    kept), then exit. With --follow: those after --since first (if given),
    then live ones, including progress, until Ctrl-C. A `gap` event means some
    were dropped because this reader fell behind; run again with --since.
    With --json: one JSON object per line, exactly as the daemon sent it.
    """
    with open_client(ctx) as client:
        if not follow:
            after = since or 0
            while True:
                page = client.list_events(after, jobs or None, types or None, limit=1000)
                for event in page:
                    _emit(event, as_json)
                if len(page) < 1000:
                    return
                after = page[-1].id
        try:
            with client.events(since=since, jobs=jobs or None, types=types or None) as stream:
                for event in stream:
                    _emit(event, as_json)
        except KeyboardInterrupt:
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
