"""The root command, its global options and the one place where failures become output and exit codes."""

from __future__ import annotations

import os
from typing import Any

import click
from dataerai import ConnectionError as DaemonConnectionError
from dataerai import DaemonError

from dataeraid import __version__
from dataeraid.paths import Paths

from ._assets import assets, collection, meta, rel
from ._auth import auth
from ._context import Settings, why_not_started
from ._daemon import daemon
from ._errors import Failure, failure_from, report
from ._events import events
from ._jobs import jobs
from ._observe import metrics
from ._output import json_requested
from ._project import project
from ._service import service
from ._status import status
from ._transfer import download, upload
from ._watch import watch


class _Root(click.Group):
    """Runs a command and turns its failure into ``error[CODE]: message`` on stderr and an exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Failure as exc:
            failure = exc
        except (DaemonError, DaemonConnectionError) as exc:
            conf = ctx.find_object(Settings)
            socket = conf.paths.socket if conf is not None else Paths.from_environment().socket
            failure = failure_from(exc, socket=str(socket), note=why_not_started(ctx))
        report(failure, as_json=json_requested(ctx))
        raise click.exceptions.Exit(failure.exit_code)


@click.group(cls=_Root, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--socket",
    type=click.Path(dir_okay=False),
    metavar="PATH",
    envvar="DATAERAI_SOCKET",
    show_envvar=True,
    help="The daemon's Unix socket [default: $XDG_RUNTIME_DIR/dataerai-transfer.sock].",
)
@click.option(
    "--no-auto-start",
    is_flag=True,
    help="Fail (exit 3) instead of starting the daemon when none is listening.",
)
@click.version_option(__version__, prog_name="dataerai")
@click.pass_context
def cli(ctx: click.Context, socket: str | None, no_auto_start: bool) -> None:
    """Move research data between this machine and a Dataerai repository.

    The transfers themselves run in the dataerai daemon (started on demand);
    these commands queue them, follow them and report on them.
    """
    if socket:
        # Into the environment, so that a daemon started from here serves the same socket.
        os.environ["DATAERAI_SOCKET"] = os.path.abspath(socket)
    ctx.obj = Settings(paths=Paths.from_environment(), auto_start=not no_auto_start)


cli.add_command(auth)
cli.add_command(daemon)
cli.add_command(project)
cli.add_command(upload)
cli.add_command(download)
cli.add_command(jobs)
cli.add_command(events)
cli.add_command(assets)
cli.add_command(meta)
cli.add_command(rel)
cli.add_command(collection)
cli.add_command(watch)
cli.add_command(status)
cli.add_command(service)
cli.add_command(metrics)


def main() -> None:
    """The ``dataerai`` console script."""
    cli.main(prog_name="dataerai")
