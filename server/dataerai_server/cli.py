"""The ``dataerai-server`` command.

``run`` serves the API; ``users add`` issues a token and prints it, alone, on stdout
(logs go to stderr), so scripts can write ``TOKEN=$(dataerai-server users add ...)``;
``tokens list`` and ``tokens revoke`` show and revoke tokens. All migrate the database
first, so any works on a fresh data directory, and the administrative ones work while a
server runs on the same database.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from datetime import timedelta
from functools import partial
from pathlib import Path

import click
import structlog

from . import __version__, logs, migrate, private
from .auth import SCOPE_SETS, WRITE, issue_token, revoke_token, token_rows
from .clock import isoformat, utcnow
from .config import (
    DEFAULT_ALLOCATION_BYTES,
    DEFAULT_SESSION_TTL_SECONDS,
    DEFAULT_URL_TTL_SECONDS,
    MAX_URL_TTL_SECONDS,
    MIN_URL_TTL_SECONDS,
    Settings,
    sqlite_url,
)
from .db import Database
from .durations import Duration

log = structlog.get_logger(__name__)

#: ``users add --expires-in`` when not given: a token that is forgotten does not work forever.
DEFAULT_TOKEN_LIFETIME = "90d"


def _database_url(data_dir: Path | None, database: str | None) -> str:
    """The database to open, with the data directory and a SQLite file made ready and private.

    What already exists is checked first (``private.exposures``): a database other users
    can read refuses the command, a directory they can list is warned about.
    """
    if database:
        url = database
    elif data_dir is not None:
        url = sqlite_url(data_dir)
    else:
        raise click.UsageError("give --data-dir or --database")
    found = private.exposures(data_dir, url)
    line = private.refusal(found)
    if line is not None:
        raise click.ClickException(line)
    for exposure in found:
        log.warning("server.files_open_to_others", message=exposure.warning())
    if data_dir is not None:
        private.make_private_dir(data_dir)
    database_file = private.sqlite_path(url)
    if database_file is not None and database_file.parent.is_dir():
        private.create_private_file(database_file)
    return url


@click.group()
@click.version_option(__version__, prog_name="dataerai-server")
def main() -> None:
    """The Dataerai reference repository server."""
    # Before anything is created: every file and directory of the server is its user's alone.
    private.private_umask()


@main.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Where the database (by default) and the stored objects live; created if missing.",
)
@click.option(
    "--bind",
    default="127.0.0.1:8080",
    show_default=True,
    help="HOST:PORT to listen on; port 0 picks a free port (see --ready-file).",
)
@click.option(
    "--database",
    metavar="URL",
    help="SQLAlchemy URL, e.g. postgresql+psycopg://USER@HOST/DB; default sqlite:///DATA_DIR/repository.sqlite3.",
)
@click.option(
    "--storage",
    metavar="URL",
    help="s3://BUCKET/PREFIX (endpoint and keys from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
    "AWS_REGION); default: DATA_DIR/objects.",
)
@click.option(
    "--default-allocation",
    type=click.IntRange(min=0),
    default=DEFAULT_ALLOCATION_BYTES,
    show_default=True,
    metavar="BYTES",
    help="Storage allocation of each new project.",
)
@click.option(
    "--session-ttl",
    type=click.IntRange(min=1),
    default=DEFAULT_SESSION_TTL_SECONDS,
    show_default=True,
    metavar="SECONDS",
    help="How long an upload session stays open after its last accepted part; then it is aborted "
    "and its parts are removed.",
)
@click.option(
    "--url-ttl",
    type=Duration(
        bare_unit="s", minimum=timedelta(seconds=MIN_URL_TTL_SECONDS), maximum=timedelta(seconds=MAX_URL_TTL_SECONDS)
    ),
    default=str(DEFAULT_URL_TTL_SECONDS),
    show_default=True,
    metavar="DURATION",
    help="How long a signed part or content URL is valid (the server's own, and S3's presigned ones): "
    "seconds, or a duration such as 15m, 2h, 1d; from 1 minute to 7 days.",
)
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Once listening, write the base URL (http://HOST:PORT) here, atomically.",
)
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True
)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Server processes sharing the listening socket; about one core each (1: this process serves).",
)
def run(
    data_dir: Path,
    bind: str,
    database: str | None,
    storage: str | None,
    default_allocation: int,
    session_ttl: int,
    url_ttl: timedelta,
    ready_file: Path | None,
    log_level: str,
    workers: int,
) -> None:
    """Serve the repository API until SIGTERM or SIGINT."""
    from .serve import parse_bind, run_server, run_workers, serve  # the web stack is not needed by `users`

    logs.configure(log_level)
    try:
        parse_bind(bind)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--bind") from None
    if storage is not None:
        from .storage import S3Location

        try:
            S3Location.parse(storage)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--storage") from None
    database_url = _database_url(data_dir, database)
    settings = Settings(
        data_dir=data_dir.resolve(),
        database_url=database_url,
        storage_url=storage,
        default_allocation_bytes=default_allocation,
        session_ttl_seconds=session_ttl,
        url_ttl_seconds=round(url_ttl.total_seconds()),
    )
    try:
        if workers > 1:
            sys.exit(run_workers(settings, bind, ready_file, workers))
        serve(partial(run_server, settings, bind, ready_file))
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise click.ClickException(f"cannot listen on {bind}: {exc.strerror}") from None
        raise
    # Stopped cleanly: the database disposed of, each log line flushed as written. The
    # interpreter's teardown would only free memory, for half a second or more of a stop that
    # systemd, an upgrade's restart and every test wait for.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@main.group()
def users() -> None:
    """Manage users and their API tokens."""


@users.command("add")
@click.argument("email")
@click.option(
    "--scope",
    type=click.Choice(sorted(SCOPE_SETS)),
    default="write",
    show_default=True,
    help="`read`, or `write` (which includes read).",
)
@click.option(
    "--expires-in",
    type=Duration(bare_unit="d", allow_never=True),
    default=DEFAULT_TOKEN_LIFETIME,
    show_default=True,
    metavar="DURATION|never",
    help="The token expires after this long: 30d, 12h, 15m, 3600s, 2w, or a number of days (fractions "
    "allowed; 0 gives an already expired token). `never` for a token that does not expire.",
)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), help="The server's data directory.")
@click.option("--database", metavar="URL", help="SQLAlchemy URL of the server's database (instead of --data-dir).")
def users_add(
    email: str, scope: str, expires_in: timedelta | None, data_dir: Path | None, database: str | None
) -> None:
    """Create EMAIL's user if new, issue a token, and print only the token."""
    logs.configure("warning")
    if "@" not in email:
        raise click.BadParameter("must be an email address", param_hint="EMAIL")
    click.echo(add_user(_database_url(data_dir, database), email, scope, expires_in))


def add_user(database_url: str, email: str, scope: str, expires_in: timedelta | None) -> str:
    """What ``users add`` does once its arguments are checked: the token, for EMAIL's user made if new.

    Also called in the tests' process (tools/stack.py), where a command's start-up for each
    test's user would cost a second.
    """
    db = Database(database_url)
    try:
        migrate.upgrade(db.write_engine)
        expires_at = None if expires_in is None else utcnow() + expires_in
        return db.write_sync(lambda session: issue_token(session, email, SCOPE_SETS[scope], expires_at))
    finally:
        db.dispose()


@main.group()
def tokens() -> None:
    """List and revoke API tokens (they work while a server runs on the same database)."""


_data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), help="The server's data directory."
)
_database_option = click.option(
    "--database", metavar="URL", help="SQLAlchemy URL of the server's database (instead of --data-dir)."
)


def _open_database(data_dir: Path | None, database: str | None) -> Database:
    logs.configure("warning")
    db = Database(_database_url(data_dir, database))
    try:
        migrate.upgrade(db.write_engine)
    except BaseException:
        db.dispose()
        raise
    return db


@tokens.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per token, in a JSON list.")
@_data_dir_option
@_database_option
def tokens_list(as_json: bool, data_dir: Path | None, database: str | None) -> None:
    """Every token: id, prefix, user, scope, created, expires, revoked, state. Never the token or its hash."""
    db = _open_database(data_dir, database)
    try:
        now = utcnow()
        rows = db.read_sync(lambda session: token_rows(session, now))
    finally:
        db.dispose()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    header = ("ID", "PREFIX", "USER", "SCOPE", "CREATED", "EXPIRES", "REVOKED", "STATE")
    table = [header] + [
        (
            row["id"],
            f"{row['prefix']}…" if row["prefix"] else "-",
            row["email"],
            "write" if WRITE in row["scopes"] else "read",
            row["created_at"],
            row["expires_at"] or "never",
            row["revoked_at"] or "-",
            row["state"],
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


@tokens.command("revoke")
@click.argument("token_id")
@_data_dir_option
@_database_option
def tokens_revoke(token_id: str, data_dir: Path | None, database: str | None) -> None:
    """Revoke TOKEN_ID (a `tok_…` id from `tokens list`, or the `dtk_…` token itself).

    A running server refuses it from its next request on (401 auth_expired).
    """
    db = _open_database(data_dir, database)
    try:
        now = utcnow()
        found, earlier = db.write_sync(lambda session: revoke_token(session, token_id, now))
    except LookupError:
        raise click.ClickException(f"no token {token_id!r}; `dataerai-server tokens list` shows them") from None
    finally:
        db.dispose()
    if earlier is not None:
        click.echo(f"{found} was already revoked at {isoformat(earlier)}")
    else:
        click.echo(f"revoked {found}")
