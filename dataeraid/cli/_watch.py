"""``dataerai watch``: folders whose complete files the daemon uploads by itself, each exactly once.

The commands only steer and report: the daemon holds the watches, notices the
files, decides when each is complete and queues its upload (docs/watch.md).
``watch add`` reads a metadata template (TOML) here, so the daemon gets a plain
object and a mistake in the file is reported before anything is sent.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

import click
from dataerai import Watch, WatchFile
from dataerai.contract import (
    MAX_PRIORITY,
    MAX_RESCAN_INTERVAL_S,
    MIN_PRIORITY,
    MIN_RESCAN_INTERVAL_S,
    WATCH_FILE_STATES,
)

from ._context import open_client
from ._errors import Failure
from ._output import as_dict, emit, human, json_option, print_json

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: How many files ``watch status`` lists unless told otherwise.
DEFAULT_STATUS_FILES = 100


def duration(seconds: float | None) -> str:
    """A lag for a person: ``45s``, ``12m05s``, ``3h02m``, ``2d04h``; ``-`` for none."""
    if seconds is None:
        return "-"
    whole = max(0, int(seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def state_of(watch: Watch) -> str:
    """The watch's state, with why when it is unavailable."""
    if watch.problem is not None:
        return f"{watch.state} ({watch.problem.code}: {watch.problem.message})"
    return watch.state


def read_template(path: Path) -> dict[str, Any]:
    """The metadata template in the TOML file ``path``, as the object ``watch.add`` takes."""
    try:
        with path.open("rb") as file:
            template: dict[str, Any] = tomllib.load(file)
            return template
    except FileNotFoundError:
        raise Failure("not_found", f"no such file: {path}") from None
    except OSError as exc:
        raise Failure("io_error", f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise Failure("invalid_argument", f"--metadata-template: {path} is not valid TOML: {exc}") from None


def describe_watch(watch: Watch) -> list[str]:
    """A watch as ``key: value`` lines, leaving out what is unset."""
    lines = [f"watch_id: {watch.watch_id}", f"root: {watch.root}", f"state: {state_of(watch)}"]
    mode = watch.mode + (f" ({watch.mode_reason.code}: {watch.mode_reason.message})" if watch.mode_reason else "")
    lines.append(f"mode: {mode}")
    optional: list[tuple[str, Any]] = [
        ("project_id", watch.project_id),
        ("collection_id", watch.collection_id),
        ("prefix", watch.prefix),
        ("complete_when", watch.complete_when),
        ("after_upload", watch.after_upload),
        ("excludes", watch.excludes),
        ("tags", watch.tags),
        ("metadata_template", watch.metadata_template),
        ("priority", watch.priority),
        ("rescan_interval_s", watch.rescan_interval_s),
        ("free_space_below", watch.free_space_below),
        ("window", watch.window),
    ]
    lines.extend(f"{key}: {human(value)}" for key, value in optional if value not in (None, "", [], {}))
    counts = ", ".join(f"{state} {n}" for state, n in watch.files.items() if n)
    lines.append(f"files: {counts or 'none'}")
    lines.append(f"lag: {duration(watch.lag_s)}"
                 + (f" (the oldest waiting: {watch.oldest_pending})" if watch.oldest_pending else ""))
    if watch.last_scan_at is not None:
        lines.append(f"last_scan_at: {human(watch.last_scan_at)}")
    return lines


def describe_file(f: WatchFile) -> str:
    """One line of ``watch status``: state, size, asset, path, and the error that quarantined it."""
    size = "-" if f.size is None else str(f.size)
    line = f"{f.state:<11}  {size:>12}  {f.asset_id or '-':<20}  {f.path}"
    if f.kind == "dataset":
        line += "/"
    if f.error is not None:
        line += f"  [{f.error.code}] {f.error.message}"
    return line


@click.group()
def watch() -> None:
    """Watch folders: the daemon uploads each complete file in them, exactly once."""


@watch.command("add")
@click.argument("root")
@click.option("--project", "project_id", required=True, metavar="ID", help="The project the assets go into.")
@click.option("--collection", "collection_id", metavar="ID", help="The collection the assets go into.")
@click.option("--prefix", metavar="P", help="The repository path the assets' paths go under.")
@click.option("--complete-when", metavar="RULE",
              help="When a file is complete: close, stable:DURATION (30s, 5m, 1h30m) or sentinel:NAME "
                   "(each directory is one dataset, complete once NAME appears in it). [default: the daemon's]")
@click.option("--after-upload", default="keep", show_default=True, metavar="keep|move:DIR|delete",
              help="What to do with a file once the repository verified it.")
@click.option("--exclude", "excludes", multiple=True, metavar="PATTERN",
              help="Do not upload files matching PATTERN; repeatable. Added to the default excludes.")
@click.option("--no-default-excludes", is_flag=True,
              help="Do not exclude the daemon's defaults (editor, partial-download and lock files).")
@click.option("--tag", "tags", multiple=True, metavar="T", help="A tag for every asset; repeatable.")
@click.option("--metadata-template", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE.toml",
              help="Metadata for every asset, from a TOML template.")
@click.option("--priority", type=click.IntRange(MIN_PRIORITY, MAX_PRIORITY), default=0, show_default=True,
              metavar="N", help="The priority of its upload jobs (higher starts first).")
@click.option("--rescan-interval", type=click.FloatRange(MIN_RESCAN_INTERVAL_S, MAX_RESCAN_INTERVAL_S),
              metavar="SECONDS", help="Scan the whole tree again this often. [default: the daemon's]")
@click.option("--polling", is_flag=True,
              help="Scan the tree instead of using file events (for network file systems).")
@click.option("--free-space-below", metavar="SIZE|PERCENT",
              help="The watched disk's free-space threshold, a size (20G) or a share (15%); what the daemon "
                   "does below it is in docs/watch.md.")
@click.option("--window", metavar="WINDOW",
              help="Its uploads move bytes only inside this transfer window, in the daemon's local time: "
                   "20:00-06:00, 'Mon-Fri 20:00-06:00,Sat-Sun 00:00-24:00' (docs/job-states.md).")
@json_option
@click.pass_context
def add(ctx: click.Context, root: str, project_id: str, collection_id: str | None, prefix: str | None,
        complete_when: str | None, after_upload: str, excludes: tuple[str, ...], no_default_excludes: bool,
        tags: tuple[str, ...], metadata_template: Path | None, priority: int, rescan_interval: float | None,
        polling: bool, free_space_below: str | None, window: str | None, as_json: bool) -> None:
    """Watch the directory ROOT: upload each of its files, once complete, exactly once.

    Each file becomes an asset of the project at its path under ROOT (below
    --prefix). Prints the new watch's id (with --json: the watch object).
    """
    template = read_template(metadata_template) if metadata_template is not None else None
    with open_client(ctx) as client:
        added = client.add_watch(
            root,
            project_id=project_id,
            collection_id=collection_id,
            prefix=prefix,
            complete_when=complete_when,
            after_upload=after_upload,
            excludes=list(excludes) or None,
            default_excludes=not no_default_excludes,
            tags=list(tags) or None,
            metadata_template=template,
            priority=priority,
            rescan_interval_s=rescan_interval,
            force_polling=polling,
            free_space_below=free_space_below,
            window=window,
        )
    emit(added, as_json, added.watch_id)
    if not as_json and added.mode_reason is not None:
        click.echo(f"note: {added.watch_id} polls: {added.mode_reason.message}", err=True)


@watch.command("ls")
@json_option
@click.pass_context
def ls(ctx: click.Context, as_json: bool) -> None:
    """List the watch folders: id, state, mode, files pending and quarantined, lag and root.

    The lag is the age of the oldest file not in the repository yet.
    With --json: {"watches": [WATCH, ...]}.
    """
    with open_client(ctx) as client:
        found = client.list_watches()
    if as_json:
        print_json({"watches": [as_dict(w) for w in found]})
        return
    if not found:
        click.echo("no watch folders (add one: dataerai watch add ROOT --project ID)")
        return
    click.echo(f"{'WATCH':<24}  {'STATE':<11}  {'MODE':<7}  {'PENDING':>7}  {'QUARANTINED':>11}  {'LAG':>7}  ROOT")
    for w in found:
        click.echo(f"{w.watch_id:<24}  {w.state:<11}  {w.mode:<7}  {w.pending:>7}  {w.quarantined:>11}"
                   f"  {duration(w.lag_s):>7}  {w.root}")


@watch.command("status")
@click.argument("watch_id")
@click.option("--state", "states", multiple=True, type=click.Choice(list(WATCH_FILE_STATES)),
              help="Only files in this state; repeatable.")
@click.option("--limit", type=click.IntRange(min=1), default=DEFAULT_STATUS_FILES, show_default=True, metavar="N",
              help="List at most N files.")
@json_option
@click.pass_context
def status(ctx: click.Context, watch_id: str, states: tuple[str, ...], limit: int, as_json: bool) -> None:
    """Show the watch WATCH_ID, then its files by path: state, size, asset id, path and error.

    With --json: {"watch": WATCH, "files": [FILE, ...], "more": BOOL} ("more":
    there are files beyond --limit).
    """
    with open_client(ctx) as client:
        found = client.get_watch(watch_id)
        pages = client.watch_files(watch_id, states=states or None, page_size=min(limit + 1, 10_000))
        files = list(itertools.islice(pages, limit + 1))
    more = len(files) > limit
    files = files[:limit]
    if as_json:
        print_json({"watch": as_dict(found), "files": [as_dict(f) for f in files], "more": more})
        return
    click.echo("\n".join(describe_watch(found)))
    click.echo("")
    if not files:
        click.echo("no files" + (" in state " + ", ".join(states) if states else ""))
    for f in files:
        click.echo(describe_file(f))
    if more:
        total = sum(n for state, n in found.files.items() if not states or state in states)
        hidden = f"{total - limit} more files" if total > limit else "more files"
        click.echo(f"… {hidden} not shown (--limit N, --state S)")


#: The commands that steer one watch, each the SDK method ``<act>_watch``, with their help.
_STEERING = {
    "pause": "Pause the watch WATCH_ID: its files are not uploaded until `watch resume`.",
    "resume": "Resume the paused watch WATCH_ID.",
    "rescan": "Scan the whole tree of WATCH_ID now; quarantined files are tried again.",
}


def _steering_command(act: str, help_text: str) -> None:
    @watch.command(act, help=help_text + " Prints its id and state; with --json the watch object.")
    @click.argument("watch_id")
    @json_option
    @click.pass_context
    def steer(ctx: click.Context, watch_id: str, as_json: bool) -> None:
        with open_client(ctx) as client:
            changed: Watch = getattr(client, f"{act}_watch")(watch_id)
        emit(changed, as_json, f"{changed.watch_id}: {state_of(changed)}")


for _act, _help in _STEERING.items():
    _steering_command(_act, _help)


@watch.command("rm")
@click.argument("watch_id")
@json_option
@click.pass_context
def rm(ctx: click.Context, watch_id: str, as_json: bool) -> None:
    """Stop watching WATCH_ID and forget it. Local files and uploaded assets stay.

    With --json: {"watch_id", "removed": true}.
    """
    with open_client(ctx) as client:
        client.remove_watch(watch_id)
    if as_json:
        print_json({"watch_id": watch_id, "removed": True})
    else:
        click.echo(f"removed {watch_id}")
