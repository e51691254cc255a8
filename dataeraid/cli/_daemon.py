"""``dataerai daemon``: run the transfer daemon, or ask one how it is."""

from __future__ import annotations

import click

from ._context import open_client, settings
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

    ctx.exit(run_daemon())


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
