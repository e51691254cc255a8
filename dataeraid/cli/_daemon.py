"""``dataerai daemon``: run the transfer daemon, ask one how it is, reload, stop or restart it,
or move a broken queue aside."""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import click
from dataerai import ConnectionError as DaemonConnectionError
from dataerai import DaemonError

from ._context import open_client, settings
from ._errors import EXIT_TIMEOUT, EXIT_UNREACHABLE, Failure
from ._observe import health
from ._output import as_dict, json_option, print_json

#: How long ``daemon stop`` waits for the daemon to be gone: its jobs checkpoint first
#: (the systemd unit gives it 10 s the same way, then SIGKILL).
STOP_WAIT_S = 30.0


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
    bandwidth = answer.get("bandwidth")
    if isinstance(bandwidth, dict):
        click.echo("bandwidth: " + _describe_bandwidth(bandwidth))


def _rate(bps: int) -> str:
    return "no limit" if not bps else f"{bps / 1024 / 1024:.3g} MiB/s"


def _describe_bandwidth(bandwidth: dict[str, object]) -> str:
    up, down, shared = (int(str(bandwidth.get(k) or 0)) for k in ("upload_bps", "download_bps", "shared_bps"))
    if shared:
        text = f"{_rate(shared)} over uploads and downloads (bandwidth_limit_bps)"
    elif up == down:
        text = _rate(up)
    else:
        text = f"upload {_rate(up)}, download {_rate(down)}"
    if bandwidth.get("next_change"):
        text += f"; changes at {bandwidth['next_change']} (bwlimit)"
    return text


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie counts: it holds no lock and serves nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _stop(ctx: click.Context) -> int | None:
    """Ask the daemon to stop and wait until it is gone; its pid, or None when none ran."""
    try:
        with open_client(ctx, auto_start=False) as client:
            pid = int(client.call("daemon.ping")["pid"])
            try:
                client.call("daemon.stop")
            except DaemonConnectionError:
                pass  # it went before its answer did: that is a stop too
    except DaemonConnectionError:
        return None
    deadline = time.monotonic() + STOP_WAIT_S
    while not _gone(pid):
        if time.monotonic() > deadline:
            raise Failure("timeout", f"the daemon (pid {pid}) is still running {STOP_WAIT_S:.0f} s after it was "
                                     f"asked to stop; `kill {pid}`, or `kill -9 {pid}` if it hangs", EXIT_TIMEOUT)
        time.sleep(0.05)
    return pid


@daemon.command("stop")
@json_option
@click.pass_context
def stop(ctx: click.Context, as_json: bool) -> None:
    """Stop the running daemon and wait until it is gone.

    Its running jobs stop at a checkpoint and go on when a daemon starts again
    (the next command or SDK call starts one). Exits 3 when no daemon runs. A
    daemon run by systemd refuses: stop it with `systemctl --user stop
    dataerai-transfer.socket dataerai-transfer.service`.
    """
    pid = _stop(ctx)
    if pid is None:
        raise Failure("unavailable", f"no dataerai daemon is running at {settings(ctx).paths.socket}: nothing to stop",
                      EXIT_UNREACHABLE)
    if as_json:
        print_json({"stopped": pid})
        return
    click.echo(f"stopped the daemon (pid {pid})")


@daemon.command("restart")
@json_option
@click.pass_context
def restart(ctx: click.Context, as_json: bool) -> None:
    """Stop the running daemon, if one runs, and start a new one as any command does.

    For a daemon run by systemd: `systemctl --user restart dataerai-transfer.service`.
    """
    try:
        old = _stop(ctx)
    except DaemonError as exc:
        if exc.code != "conflict":
            raise
        raise Failure("conflict", f"{exc.message.split(';')[0]}; restart it with "
                                  "`systemctl --user restart dataerai-transfer.service`") from exc
    with open_client(ctx) as client:  # starts the daemon, as any command does
        new = int(client.call("daemon.ping")["pid"])
    if as_json:
        print_json({"stopped": old, "started": new})
        return
    click.echo((f"stopped the daemon (pid {old}); " if old else "no daemon was running; ") + f"started pid {new}")


@daemon.command("reload")
@json_option
@click.pass_context
def reload(ctx: click.Context, as_json: bool) -> None:
    """Read config.toml again in the running daemon (as SIGHUP does).

    A file the daemon would refuse at start is refused with the same message,
    and the settings in force stay. When each setting takes effect:
    docs/configuration.md. Does not start a daemon: when none listens it exits 3.
    """
    with open_client(ctx, auto_start=False) as client:
        answer = as_dict(client.call("daemon.reload"))
    if as_json:
        print_json(answer)
        return
    changed = answer.get("changed") or []
    restart_needed = answer.get("restart_needed") or []
    click.echo("reloaded config.toml: " + (", ".join(changed) + " changed" if changed else "nothing changed"))
    if restart_needed:
        click.echo(f"{', '.join(restart_needed)}: in force after `dataerai daemon restart`")


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
