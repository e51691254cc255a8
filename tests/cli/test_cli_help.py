"""Every command answers --help, and the tree of commands is the documented one."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from dataeraid.cli import cli

COMMANDS = {
    (),
    ("auth",),
    ("auth", "login"),
    ("auth", "status"),
    ("auth", "logout"),
    ("daemon",),
    ("daemon", "run"),
    ("daemon", "status"),
    ("daemon", "quarantine-queue"),
    ("daemon", "health"),
    ("daemon", "reload"),
    ("daemon", "stop"),
    ("daemon", "restart"),
    ("project",),
    ("project", "create"),
    ("project", "ls"),
    ("upload",),
    ("download",),
    ("jobs",),
    ("jobs", "show"),
    ("jobs", "wait"),
    ("jobs", "ls"),
    ("jobs", "pause"),
    ("jobs", "resume"),
    ("jobs", "cancel"),
    ("jobs", "retry"),
    ("jobs", "priority"),
    ("events",),
    ("assets",),
    ("assets", "ls"),
    ("assets", "show"),
    ("assets", "files"),
    ("assets", "rm"),
    ("meta",),
    ("meta", "get"),
    ("meta", "set"),
    ("rel",),
    ("rel", "add"),
    ("rel", "ls"),
    ("collection",),
    ("collection", "create"),
    ("collection", "ls"),
    ("watch",),
    ("watch", "add"),
    ("watch", "ls"),
    ("watch", "status"),
    ("watch", "pause"),
    ("watch", "resume"),
    ("watch", "rescan"),
    ("watch", "rm"),
    ("status",),
    ("metrics",),
    ("service",),
    ("service", "install"),
    ("service", "uninstall"),
    ("service", "status"),
}


def _walk(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _walk(sub, (*path, name))


def test_the_command_tree_is_the_documented_one() -> None:
    assert set(_walk(cli)) == COMMANDS


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=lambda p: " ".join(p) or "dataerai")
def test_help(runner: CliRunner, path: tuple[str, ...]) -> None:
    result = runner.invoke(cli, [*path, "--help"], prog_name="dataerai")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(" ".join(("Usage: dataerai", *path)))


def test_json_is_offered_wherever_there_is_output(runner: CliRunner) -> None:
    for path in COMMANDS - {(), ("auth",), ("daemon",), ("project",), ("jobs",), ("daemon", "run"), ("assets",),
                            ("meta",), ("rel",), ("collection",), ("watch",), ("service",)}:
        result = runner.invoke(cli, [*path, "--help"], prog_name="dataerai")
        assert "--json" in result.stdout, path


def test_runs_as_a_module() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dataeraid.cli", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "dataerai" in done.stdout
