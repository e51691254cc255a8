"""What every command shares: the paths, whether to start the daemon, and the SDK client built from them."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import click
from dataerai import DataeraiClient

from dataeraid.paths import Paths

EXECUTABLE = "dataerai"
_NOT_STARTED = "dataerai.not_started"


@dataclass(frozen=True)
class Settings:
    """The global options, resolved once by the root command."""

    paths: Paths
    auto_start: bool


def settings(ctx: click.Context) -> Settings:
    found = ctx.find_object(Settings)
    if found is None:  # a command invoked without the root group (tests calling a sub-command directly)
        found = Settings(paths=Paths.from_environment(), auto_start=True)
        ctx.obj = found
    return found


def executable() -> str | None:
    """The ``dataerai`` executable to auto-start the daemon with.

    The running one when this process was started as ``dataerai`` (so the
    daemon comes from the same installation), else the first on ``PATH``.
    """
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 and Path(argv0).name == EXECUTABLE:
        candidate = Path(argv0).resolve()
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(EXECUTABLE)


def open_client(ctx: click.Context, *, auto_start: bool | None = None) -> DataeraiClient:
    """A client on the configured socket.

    It starts the daemon when none listens, unless ``auto_start`` is False (a
    command that must not start one), ``--no-auto-start`` was given, or no
    executable can be found; ``why_not_started`` then says which of the last two.
    """
    conf = settings(ctx)
    binary = None
    if auto_start is not False:
        if not conf.auto_start:
            ctx.meta[_NOT_STARTED] = "--no-auto-start was given"
        else:
            binary = executable()
            if binary is None:
                ctx.meta[_NOT_STARTED] = "no `dataerai` executable was found to start it"
    return DataeraiClient(socket_path=str(conf.paths.socket), binary_path=binary, auto_start=binary is not None)


def why_not_started(ctx: click.Context) -> str:
    """Why ``open_client`` did not let the client start a daemon; empty if it did, or the command never does."""
    return str(ctx.meta.get(_NOT_STARTED, ""))
