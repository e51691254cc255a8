"""``dataerai auth``: the token the daemon uses for the repository.

``login`` is the one command that talks to the repository itself: it checks the
token with ``GET /api/v1/me`` before writing it, so a typo never reaches the
daemon. The token is never printed, logged or sent over the daemon's socket.
"""

from __future__ import annotations

import ipaddress
import sys
from typing import Any

import click
import httpx
from dataerai import ConnectionError as DaemonConnectionError
from dataerai import DaemonError, DaemonTimeoutError
from dataerai.protocol import ERRORS

from dataeraid import credentials

from ._context import open_client, settings
from ._errors import Failure
from ._output import as_dict, human, json_option, print_json

#: How long ``auth login`` waits for the repository.
ME_TIMEOUT_S = 15.0


def _server_url(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    url = value.strip().rstrip("/")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise click.BadParameter(str(exc)) from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise click.BadParameter("must be an http:// or https:// URL, such as https://repo.example.org")
    return url


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_token(from_stdin: bool) -> str:
    if from_stdin:
        token = sys.stdin.readline().strip()
    else:
        token = str(click.prompt("Token", hide_input=True, err=True)).strip()
    if not token:
        raise Failure("invalid_argument", "no token was given")
    return token


def _error_of(response: httpx.Response) -> tuple[str | None, str | None]:
    """The stable code and message of a repository error body, when it has one."""
    try:
        body = response.json()
    except ValueError:
        return None, None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, None
    code, message = error.get("code"), error.get("message")
    return (
        code if isinstance(code, str) and code in ERRORS else None,
        message if isinstance(message, str) and message else None,
    )


def _code_for_status(status: int) -> str:
    if status == 401:
        return "auth_required"
    if status == 403:
        return "permission_denied"
    if status == 404:
        return "not_found"
    if status == 429:
        return "rate_limited"
    if status >= 500:
        return "unavailable"
    return "invalid_argument"


def verify_token(server_url: str, token: str) -> dict[str, Any]:
    """``GET {server_url}/api/v1/me`` with the token: who it belongs to, or a ``Failure``."""
    url = f"{server_url}/api/v1/me"
    try:
        response = httpx.get(
            url,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=ME_TIMEOUT_S,
            verify=True,
            follow_redirects=False,
        )
    except httpx.TimeoutException:
        raise Failure("unavailable", f"{server_url} did not answer within {ME_TIMEOUT_S:g} s") from None
    except httpx.HTTPError as exc:
        raise Failure("unavailable", f"cannot reach {server_url}: {exc}") from None
    if response.is_redirect:
        where = response.headers.get("location", "elsewhere")
        raise Failure("invalid_argument", f"{url} redirects to {where}; log in with the repository's own URL")
    if not response.is_success:
        code, message = _error_of(response)
        if response.status_code == 401 and code not in ("auth_required", "auth_expired"):
            code = "auth_required"
        raise Failure(
            code or _code_for_status(response.status_code),
            message or f"{url} answered HTTP {response.status_code}",
        )
    try:
        me = response.json()
    except ValueError:
        me = None
    if not isinstance(me, dict) or not isinstance(me.get("email"), str):
        raise Failure("unavailable", f"{url} did not answer like a Dataerai repository")
    return me


def _tell_daemon(ctx: click.Context) -> bool:
    """``auth.reload`` on a daemon that is already listening; True when one re-read the credentials.

    Never starts a daemon: one that is not running reads the file when it starts.
    """
    if not settings(ctx).paths.socket.exists():
        return False
    try:
        with open_client(ctx, auto_start=False) as client:
            client.call("auth.reload")
    except DaemonConnectionError:
        return False  # a stale socket: nobody listens
    except DaemonTimeoutError:
        click.echo("warning: the running daemon did not answer auth.reload; restart it to use the login", err=True)
        return False
    except DaemonError as exc:
        if exc.code in ("auth_required", "auth_expired"):
            return True  # it re-read the file and found no (valid) token: what logout wants
        click.echo(f"warning: the running daemon did not reload the credentials: {exc.code}: {exc.message}", err=True)
        return False
    return True


def _expiry(expires_at: Any) -> str:
    return f"token expires {human(expires_at)}" if expires_at else "token does not expire"


@click.group()
def auth() -> None:
    """Log in to a repository, check the login, log out."""


@auth.command("login")
@click.option(
    "--server",
    required=True,
    metavar="URL",
    callback=_server_url,
    help="The repository's base URL, such as https://repo.example.org.",
)
@click.option("--token-stdin", is_flag=True, help="Read the token from the first line of stdin instead of a prompt.")
@json_option
@click.pass_context
def login(ctx: click.Context, server: str, token_stdin: bool, as_json: bool) -> None:
    """Check a token against the repository and store it for the daemon.

    The token is asked for at a hidden prompt (or read from stdin with
    --token-stdin), checked with GET /api/v1/me, written to the credentials
    file (mode 0600) and, when a daemon is running, loaded by it at once.
    """
    url = httpx.URL(server)
    if url.scheme == "http" and not _is_loopback(url.host):
        click.echo(f"warning: {server} is not https; the token travels unencrypted", err=True)
    token = _read_token(token_stdin)
    me = verify_token(server, token)
    path = settings(ctx).paths.credentials
    try:
        credentials.save(path, credentials.Credentials(server_url=server, token=token))
    except OSError as exc:
        raise Failure("io_error", f"cannot write {path}: {exc.strerror or exc}") from None
    reloaded = _tell_daemon(ctx)
    if as_json:
        print_json(
            {
                "server_url": server,
                "user_id": me.get("user_id"),
                "user_email": me["email"],
                "scopes": me.get("scopes", []),
                "expires_at": me.get("token_expires_at"),
                "credentials_file": str(path),
                "daemon_reloaded": reloaded,
            }
        )
    else:
        click.echo(f"Logged in to {server} as {me['email']} ({_expiry(me.get('token_expires_at'))})")


@auth.command("status")
@json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Show who the daemon is logged in as, where, and until when.

    Asks the daemon (starting it if needed); exits 1 with error[auth_required]
    when nobody is logged in.
    """
    with open_client(ctx) as client:
        current = client.auth_status()
    if as_json:
        print_json(as_dict(current))
        return
    click.echo(f"Logged in to {current.server_url} as {current.user_email} ({_expiry(current.expires_at)})")
    click.echo(f"user: {current.user_id}")
    click.echo(f"scopes: {human(current.scopes)}")


@auth.command("logout")
@json_option
@click.pass_context
def logout(ctx: click.Context, as_json: bool) -> None:
    """Remove the stored credentials; a running daemon forgets them at once."""
    path = settings(ctx).paths.credentials
    try:
        removed = credentials.remove(path)
    except OSError as exc:
        raise Failure("io_error", f"cannot remove {path}: {exc.strerror or exc}") from None
    reloaded = _tell_daemon(ctx)
    if as_json:
        print_json({"logged_out": removed, "credentials_file": str(path), "daemon_reloaded": reloaded})
    elif removed:
        click.echo(f"Logged out: removed {path}")
    else:
        click.echo(f"Not logged in: there is no {path}")
