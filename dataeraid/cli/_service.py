"""``dataerai service``: the systemd user units that run this installation's daemon, put in place and taken away.

``install`` writes ``dataerai-transfer.socket`` and ``.service`` into the user's
unit directory (``dataeraid.paths.systemd_user_dir``), the service's
``ExecStart`` naming the ``dataerai`` executable of the installation the
command runs from, then reloads the user manager and enables both.
``uninstall`` disables and stops both, and removes the files ``install`` wrote:
those whose first line is its marker (``dataeraid.systemd_units.MARKER``).

Each talks to the user manager through ``systemctl --user`` only after it has
checked that one answers, so that where there is none (no systemd, or no
session: ``Failed to connect to bus``) nothing is written or removed, and the
error (``systemd_unavailable``) says what to do instead. Unit files are written
0600 (the user manager runs as the user; nobody else needs them), each whole
or not at all, whatever the umask.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from dataerai import DataeraiClient
from dataerai._paths import SOCKET_NAME

from dataeraid.paths import systemd_user_dir
from dataeraid.systemd_units import (
    SERVICE_UNIT,
    SOCKET_UNIT,
    UNITS,
    UnsuitableExecutable,
    exec_start_of,
    is_ours,
    render,
)

from ._context import EXECUTABLE
from ._errors import Failure
from ._output import json_option, print_json

#: How long one ``systemctl --user`` call may take (a reload of a busy manager takes a few seconds).
SYSTEMCTL_TIMEOUT_S = 90.0
#: How long a daemon already on the socket's path has to accept a connection.
PROBE_TIMEOUT_S = 2.0

_WITHOUT_SYSTEMD = (
    "Without systemd, run `dataerai daemon run` under the machine's own supervisor, or let the SDK and the CLI "
    "start the daemon when they need it"
)


def installation_executable() -> str:
    """The absolute path of this installation's ``dataerai``, for the service's ``ExecStart``.

    The running program when it is ``dataerai``; else (``python -m
    dataeraid.cli``) the ``dataerai`` beside the running interpreter, in its
    scripts directory or the user's; else the first on ``PATH``. Links are not
    resolved: ``~/.local/bin/dataerai`` (pipx's and uv's link into their own
    environment) is the name that stays when an upgrade rebuilds what it points to.
    """
    argv0 = sys.argv[0] if sys.argv else ""
    candidates = [argv0] if Path(argv0).name == EXECUTABLE else []
    for scheme in (sysconfig.get_default_scheme(), sysconfig.get_preferred_scheme("user")):
        candidates.append(os.path.join(sysconfig.get_path("scripts", scheme), EXECUTABLE))
    candidates.append(os.path.join(os.path.dirname(sys.executable), EXECUTABLE))
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return os.path.abspath(candidate)
    found = shutil.which(EXECUTABLE)
    if found is None:
        raise Failure(
            "not_found",
            "found no `dataerai` executable of this installation for the service to run (looked beside "
            f"{sys.executable} and on PATH); run `dataerai service install` as the `dataerai` of the installation "
            "the service should run",
        )
    return os.path.abspath(found)


# --- the unit files ---------------------------------------------------------------


@dataclass(frozen=True)
class UnitFile:
    """What is at one unit's path in the user's unit directory: ``absent``, ``ours`` or ``foreign``."""

    name: str
    path: Path
    state: str
    text: str | None = None


def look_at(unit_dir: Path, name: str) -> UnitFile:
    path = unit_dir / name
    try:
        if not path.is_symlink() and not path.exists():
            return UnitFile(name, path, "absent")
        if path.is_symlink() or not path.is_file():  # `systemctl --user link`'s, or not a file at all
            return UnitFile(name, path, "foreign")
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise Failure("io_error", f"cannot read {path}: {exc.strerror or exc}") from exc
    return UnitFile(name, path, "ours" if is_ours(text) else "foreign", text)


def refuse_foreign(found: list[UnitFile], doing: str) -> None:
    foreign = [f for f in found if f.state == "foreign"]
    if foreign:
        paths = ", ".join(str(f.path) for f in foreign)
        raise Failure(
            "conflict",
            f"{paths} {'was' if len(foreign) == 1 else 'were'} not written by `dataerai service install` (a copy "
            f"made by hand, or another package's); nothing was changed. Move {'it' if len(foreign) == 1 else 'them'} "
            f"away, or pass --force to {doing} {'it' if len(foreign) == 1 else 'them'} all the same",
        )


def make_private_dirs(directory: Path) -> None:
    """``directory`` and its missing parents, each created 0700 whatever the umask; existing ones stay as they are."""
    missing = []
    for d in [directory, *directory.parents]:
        if d.exists():
            break
        missing.append(d)
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue
        os.chmod(d, 0o700)


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, mode 0600: through a temporary file beside it, so it is whole or as it was."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, text.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# --- systemctl --user -------------------------------------------------------------


@dataclass
class Systemctl:
    """``systemctl --user``, remembering each command it ran (the ``ran`` of the output)."""

    binary: str
    ran: list[list[str]] = field(default_factory=list)

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        shown = ["systemctl", "--user", *args]
        self.ran.append(shown)
        try:
            return subprocess.run([self.binary, "--user", *args], stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=SYSTEMCTL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise Failure("systemd_unavailable",
                          f"`{' '.join(shown)}` did not finish in {SYSTEMCTL_TIMEOUT_S:.0f} s") from None
        except OSError as exc:
            raise Failure("systemd_unavailable", f"cannot run {self.binary}: {exc.strerror or exc}") from exc

    def state(self, verb: str, unit: str) -> str | None:
        """What ``is-enabled`` or ``is-active`` answers for ``unit`` (None when it says nothing: no such unit)."""
        answer = self(verb, unit).stdout.strip()
        return answer or None


def _said(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"exit status {done.returncode}"


class NoUserManager(Exception):
    """No systemd user manager answers ``systemctl --user``: ``reason`` says what was found instead.

    ``no_systemd`` when there is no ``systemctl`` at all, rather than no manager of this user's.
    """

    def __init__(self, reason: str, ran: list[list[str]], *, no_systemd: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.ran = ran
        self.no_systemd = no_systemd


def user_manager() -> tuple[Systemctl, str]:
    """``systemctl --user`` and the version of the user manager it reached; ``NoUserManager`` when none answers."""
    binary = shutil.which("systemctl")
    if binary is None:
        raise NoUserManager("there is no `systemctl` on PATH: no systemd here to run the service", [],
                            no_systemd=True)
    systemctl = Systemctl(binary)
    done = systemctl("show", "--property=Version", "--value")
    if done.returncode != 0:
        reason = f"`systemctl --user` cannot reach your user manager: {_said(done)}"
        if not os.environ.get("XDG_RUNTIME_DIR"):
            reason += (f". XDG_RUNTIME_DIR is not set (as in a `sudo -u`, `su` or cron shell): "
                       f"set it to /run/user/{os.getuid()}, where the user manager listens")
        raise NoUserManager(reason, systemctl.ran)
    return systemctl, done.stdout.strip()


def reach_user_manager(changed: str) -> tuple[Systemctl, str]:
    """``user_manager``, or the ``systemd_unavailable`` failure that says ``changed`` and what to do instead."""
    try:
        return user_manager()
    except NoUserManager as exc:
        advice = _WITHOUT_SYSTEMD if exc.no_systemd else (
            "A user manager runs while you are logged in (a desktop or ssh session); for an account nobody logs "
            "in to, an administrator runs `loginctl enable-linger USER` first (docs/deploy.md). "
            + _WITHOUT_SYSTEMD
        )
        raise Failure("systemd_unavailable", f"{exc.reason}; {changed}. {advice}", extra={"ran": exc.ran}) from None


def run_step(systemctl: Systemctl, *args: str, changed: str) -> None:
    done = systemctl(*args)
    if done.returncode != 0:
        raise Failure(
            "systemd_unavailable",
            f"`systemctl --user {' '.join(args)}` failed: {_said(done)}; {changed}",
            extra={"ran": systemctl.ran},
        )


def enable_and_start(systemctl: Systemctl, *, changed: str) -> None:
    """``enable --now`` both units; a daemon that systemd ran but that did not start is ``service_failed``.

    That is not a missing systemd (the manager answered and ran it) but the daemon refusing to
    start, as it would in a shell: a bad ``config.toml``, a queue it cannot open. Its journal
    has the reason; the units stay installed and enabled, so a fix and a restart are all it needs.
    """
    args = ("enable", "--now", SOCKET_UNIT, SERVICE_UNIT)
    done = systemctl(*args)
    if done.returncode == 0:
        return
    if systemctl.state("is-failed", SERVICE_UNIT) == "failed":
        raise Failure(
            "service_failed",
            f"the units are installed and enabled, but {SERVICE_UNIT} did not start ({_said(done)}). "
            f"`journalctl --user -u {SERVICE_UNIT}` says why (`dataerai daemon run` in a shell shows the same); "
            f"once it is fixed, `systemctl --user restart {SERVICE_UNIT}`",
            extra={"ran": systemctl.ran},
        )
    raise Failure("systemd_unavailable", f"`systemctl --user {' '.join(args)}` failed: {_said(done)}; {changed}",
                  extra={"ran": systemctl.ran})


def changes_made(ran: list[list[str]]) -> list[list[str]]:
    """Of the commands run, those that changed something (not the questions: ``show``, ``is-active``, ...)."""
    return [argv for argv in ran if argv[2] in ("daemon-reload", "enable", "disable")]


def refuse_running_daemon(systemctl: Systemctl) -> None:
    """Refuse ``--now`` while a daemon not started by the socket unit serves the socket's path.

    Started, the socket unit would take the path over, and the daemon it starts
    could not have the queue that one holds.
    """
    if systemctl.state("is-active", SOCKET_UNIT) == "active":
        return  # the listener is the socket unit's own
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"  # what %t is in the unit
    path = os.path.join(runtime, SOCKET_NAME)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(PROBE_TIMEOUT_S)
        try:
            probe.connect(path)
        except OSError:
            return
    pid: Any = None
    try:
        with DataeraiClient(socket_path=path, auto_start=False, request_timeout_s=PROBE_TIMEOUT_S) as client:
            pid = client.call("daemon.status").get("pid")
    except Exception:  # it answers the socket but not as a daemon: its pid stays unknown
        pass
    who, how = (f"a dataerai daemon (pid {pid})", f" (`kill {pid}`: it checkpoints its jobs, and the next daemon "
                "goes on with them)") if isinstance(pid, int) else ("a process", "")
    raise Failure(
        "conflict",
        f"{who} not started by {SOCKET_UNIT} serves {path}; started now, the socket would take that path over and "
        f"its daemon could not have the queue that one holds. Nothing was written. Stop it first{how}, then run "
        "this again",
    )


# --- the commands -----------------------------------------------------------------


@click.group()
def service() -> None:
    """Install the systemd user units that run this installation's daemon, or remove them."""


@service.command("install")
@click.option("--now", is_flag=True, help="Start the socket and the daemon now as well, not only from the next login.")
@click.option("--force", is_flag=True, help="Replace unit files there that `dataerai service install` did not write.")
@json_option
def install(now: bool, force: bool, as_json: bool) -> None:
    """Write the socket and service units, reload the user manager and enable both.

    The units go into $XDG_CONFIG_HOME/systemd/user (~/.config/systemd/user),
    mode 0600, the service's ExecStart naming the `dataerai` executable of this
    installation; then `systemctl --user daemon-reload` and `systemctl --user
    enable [--now] dataerai-transfer.socket dataerai-transfer.service`: the
    daemon starts at every login (at boot for an account that lingers) and goes
    on with its queue and watches. Running it again is harmless, and
    after an upgrade or from another installation it rewrites its own units.
    Refuses unit files it did not write (unless --force), and writes nothing
    where no systemd user manager answers (error systemd_unavailable).

    With --json: {"unit_dir", "executable", "exec_start", "systemd_version",
    "units": [{"name", "path", "action": "written"|"replaced"|"unchanged"}],
    "ran": [ARGV, ...], "started"}.
    """
    executable = installation_executable()
    try:
        units = render(executable)
    except UnsuitableExecutable as exc:
        raise Failure("invalid_argument", f"cannot run this installation from a systemd unit: {exc}. "
                      "Install dataerai under a plainer path") from None
    unit_dir = systemd_user_dir()
    found = [look_at(unit_dir, name) for name in UNITS]
    if not force:
        refuse_foreign(found, "replace")
    systemctl, version = reach_user_manager("nothing was written")
    if now:
        refuse_running_daemon(systemctl)

    actions: list[dict[str, str]] = []
    for unit in found:
        text = units[unit.name]
        if unit.state == "ours" and unit.text == text:
            action = "unchanged"
        else:
            try:
                make_private_dirs(unit_dir)
                write_private(unit.path, text)  # over a link (--force) it replaces the link, not what it names
            except OSError as exc:
                written = [a["path"] for a in actions if a["action"] != "unchanged"]
                raise Failure(
                    "io_error",
                    f"cannot write {unit.path}: {exc.strerror or exc}; "
                    + (f"written before it: {', '.join(written)}" if written else "nothing was written"),
                ) from exc
            action = "written" if unit.state == "absent" else "replaced"
        actions.append({"name": unit.name, "path": str(unit.path), "action": action})

    wrote = [a["path"] for a in actions if a["action"] != "unchanged"]
    changed = (f"the unit files are in place ({', '.join(wrote)}); " if wrote else "the unit files were in place; ") \
        + "run `dataerai service install` again once that is fixed"
    run_step(systemctl, "daemon-reload", changed=changed)
    # The service too, not only the socket: at boot (a lingering account) or login the daemon then starts
    # by itself and goes on with its queue and its watches, instead of waiting for a client to connect.
    if now:
        enable_and_start(systemctl, changed=changed)
    else:
        run_step(systemctl, "enable", SOCKET_UNIT, SERVICE_UNIT, changed=changed)

    exec_start = exec_start_of(units[SERVICE_UNIT]) or ""
    if as_json:
        print_json({"unit_dir": str(unit_dir), "executable": executable, "exec_start": exec_start,
                    "systemd_version": version, "units": actions, "ran": systemctl.ran, "started": now})
        return
    for a in actions:
        click.echo(f"{a['action']} {a['path']}")
    click.echo(f"ExecStart={exec_start}")
    for argv in changes_made(systemctl.ran):
        click.echo(f"ran {' '.join(argv)}")
    if any(a["action"] == "replaced" for a in actions):
        click.echo(f"a daemon running now keeps its old unit until `systemctl --user restart {SERVICE_UNIT}`")
    if now:
        click.echo(f"{SOCKET_UNIT} listens and {SERVICE_UNIT} runs now, and both start at every login "
                   "(at boot, for an account that lingers)")
    else:
        click.echo(f"{SOCKET_UNIT} and {SERVICE_UNIT} are enabled: they start from your next login "
                   f"(now: `systemctl --user start {SOCKET_UNIT} {SERVICE_UNIT}`)")


@service.command("uninstall")
@click.option("--force", is_flag=True, help="Also remove unit files there that `service install` did not write.")
@json_option
def uninstall(force: bool, as_json: bool) -> None:
    """Stop and disable the socket and the service, and remove the unit files `service install` wrote.

    Runs `systemctl --user disable --now` on them, deletes them and reloads
    the user manager. A daemon that is running gets SIGTERM and checkpoints its
    jobs. Refuses unit files it did not write (unless --force); with none there
    it does nothing.

    With --json: {"unit_dir", "units": [{"name", "path", "action":
    "removed"|"absent"}], "ran": [ARGV, ...]}.
    """
    unit_dir = systemd_user_dir()
    found = [look_at(unit_dir, name) for name in UNITS]
    if not force:
        refuse_foreign(found, "remove")
    present = [unit for unit in found if unit.state != "absent"]
    ran: list[list[str]] = []
    if present:
        systemctl, _version = reach_user_manager("nothing was removed")
        run_step(systemctl, "disable", "--now", *(u.name for u in present), changed="nothing was removed")
        for unit in present:
            try:
                unit.path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise Failure("io_error", f"cannot remove {unit.path}: {exc.strerror or exc}; the units are "
                              "stopped and disabled") from exc
        run_step(systemctl, "daemon-reload", changed="the unit files are removed")
        ran = systemctl.ran
    actions = [{"name": u.name, "path": str(u.path), "action": "removed" if u.state != "absent" else "absent"}
               for u in found]
    if as_json:
        print_json({"unit_dir": str(unit_dir), "units": actions, "ran": ran})
        return
    if not present:
        click.echo(f"no dataerai units in {unit_dir}: nothing to remove")
        return
    disable, reload = changes_made(ran)  # in the order they were done: disable, remove, reload
    click.echo(f"ran {' '.join(disable)}")
    for a in actions:
        if a["action"] == "removed":
            click.echo(f"removed {a['path']}")
    click.echo(f"ran {' '.join(reload)}")


@service.command("status")
@json_option
def status(as_json: bool) -> None:
    """Show whether the units are installed (and by whom), enabled and active.

    Reads the unit directory, then asks `systemctl --user is-enabled` and
    `is-active` when a user manager answers. A unit installed elsewhere (a
    package's /usr/lib/systemd/user) shows as absent here and still has its
    state.

    With --json: {"unit_dir", "systemd": {"available", "version", "reason"},
    "units": [{"name", "path", "installed": "ours"|"foreign"|"absent",
    "exec_start", "enabled", "active"}]}.
    """
    unit_dir = systemd_user_dir()
    found = [look_at(unit_dir, name) for name in UNITS]
    systemctl: Systemctl | None = None
    version = reason = None
    try:
        systemctl, version = user_manager()
    except NoUserManager as exc:
        reason = exc.reason
    units: list[dict[str, Any]] = []
    for unit in found:
        units.append({
            "name": unit.name,
            "path": str(unit.path),
            "installed": unit.state,
            "exec_start": exec_start_of(unit.text) if unit.text is not None and unit.name == SERVICE_UNIT else None,
            "enabled": systemctl.state("is-enabled", unit.name) if systemctl else None,
            "active": systemctl.state("is-active", unit.name) if systemctl else None,
        })
    if as_json:
        print_json({"unit_dir": str(unit_dir),
                    "systemd": {"available": systemctl is not None, "version": version, "reason": reason},
                    "units": units})
        return
    described = {"ours": "installed by dataerai service install", "foreign": "a unit file dataerai did not write",
                 "absent": "not in this directory"}
    click.echo(f"unit directory: {unit_dir}")
    for u in units:
        line = f"{u['name']}: {described[u['installed']]}"
        if systemctl is not None:
            line += f", {u['enabled'] or 'not found'}, {u['active'] or 'unknown'}"
        click.echo(line)
        if u["exec_start"]:
            click.echo(f"  ExecStart={u['exec_start']}")
    click.echo(f"systemd user manager: {version}" if systemctl is not None else f"systemd: {reason}")
