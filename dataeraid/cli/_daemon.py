"""``dataerai daemon``: run the transfer daemon, ask one how it is, or move a broken queue aside."""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone

import click

from ._context import open_client, settings
from ._errors import Failure
from ._observe import health
from ._output import as_dict, json_option, print_json


@click.group()
def daemon() -> None:
    """Run the transfer daemon or look at the running one."""


@daemon.command("run")
@click.pass_context
def run(ctx: click.Context) -> None:
    """Run the daemon in the foreground until SIGTERM or SIGINT.

    This is what the systemd unit and the SDK's auto-start run. It serves the
    socket given by --socket / DATAERAI_SOCKET (or the systemd-passed one) and
    exits with the daemon's status.
    """
    from dataeraid.app import run_daemon  # the daemon's dependencies load only for this command

    status = run_daemon()
    # Everything is put away by now: the queue closed, the locks released, each log line flushed
    # as written. What the interpreter's own teardown would add is freeing memory, which took
    # 0.6 to 0.9 s here, a stop that systemd, `daemon restart` and every test wait for.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


@daemon.command("status")
@json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show the running daemon's version, pid and job counts.

    Does not start a daemon: when none listens it exits 3.
    """
    with open_client(ctx, auto_start=False) as client:
        answer = as_dict(client.call("daemon.status"))
    if as_json:
        print_json(answer)
        return
    version, pid = answer.get("version", "?"), answer.get("pid", "?")
    click.echo(f"dataerai daemon {version}, pid {pid}, socket {settings(ctx).paths.socket}")
    counts = answer.get("jobs") or {}
    if counts:
        click.echo("jobs: " + ", ".join(f"{state} {n}" for state, n in counts.items()))
    if "last_event_id" in answer:
        click.echo(f"last event id: {answer['last_event_id']}")


@daemon.command("quarantine-queue")
@json_option
@click.pass_context
def quarantine_queue(ctx: click.Context, as_json: bool) -> None:
    """Move the queue database aside, so that the daemon starts on a new, empty one.

    For a queue the daemon refuses (damaged, not a database, from a newer
    dataerai, ...). Renames queue.sqlite3 in the state directory, with its -wal
    and -shm, to queue.sqlite3.broken-<UTC time> beside it: nothing is deleted,
    and sqlite3 opens the moved file for inspection. Its jobs are not run by
    the new queue. Refuses while a daemon uses the queue.
    """
    # The daemon's modules load only for this command, as for `daemon run`.
    from dataeraid.instance import Holder, LockTaken, queue_lock_path, take_lock
    from dataeraid.store import quarantine

    paths = settings(ctx).paths
    queue = paths.queue_db
    if not os.path.lexists(queue):
        raise Failure("not_found", f"there is no queue database at {queue}: nothing to move")
    me = Holder(os.getpid(), None, str(paths.state_dir), what="dataerai daemon quarantine-queue")
    try:
        lock = take_lock(queue_lock_path(paths.state_dir), me)
    except LockTaken as taken:
        holder = taken.holder
        stop = f"stop it first (`kill {holder.pid}`, or `systemctl --user stop dataerai-transfer.socket " \
               "dataerai-transfer.service`)" if holder is not None else "stop it first"
        raise Failure("conflict", f"{taken.who()} uses the queue in {paths.state_dir}; {stop}") from None
    except OSError as exc:
        raise Failure("io_error", f"cannot open the queue's lock in {paths.state_dir}: {exc}") from exc
    try:
        moved = quarantine(queue, datetime.now(timezone.utc))
    except OSError as exc:
        raise Failure("io_error", f"cannot move {queue} aside: {exc}") from exc
    finally:
        os.close(lock)
    if as_json:
        print_json({"moved": [{"from": str(source), "to": str(target)} for source, target in moved]})
        return
    for source, target in moved:
        click.echo(f"moved {source} to {target}")
    click.echo("the daemon starts on a new, empty queue; the old one is kept there for inspection")


daemon.add_command(health)
