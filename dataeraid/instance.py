"""One daemon per queue, and one per socket: the lock files and who holds them.

The queue's lock is ``daemon.lock`` in the state directory (beside
``queue.sqlite3``): whoever holds it owns the queue, so a second daemon on the
same queue refuses to start whatever socket it was given, and two daemons can
never run the same jobs. The socket's lock is ``<socket>.lock`` beside the
socket, so that a daemon with another queue does not take over a socket that
is served (it would unlink it and bind its own).

Each lock is an ``flock`` on a 0600 file, released by the kernel when its
holder exits however it exits; the holder writes its pid, socket and state
directory into the file so that whoever finds it locked can say who holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from dataeraid.errors import DataeraiError

#: How long a process that found a lock taken waits for its holder to say who it is
#: (the holder writes that right after it took the lock).
HOLDER_WAIT_S = 2.0


@dataclass(frozen=True)
class Holder:
    """Who holds a lock. ``socket`` is None for a process that is not a daemon (the quarantine),
    or a daemon that serves a socket with no path (one systemd passed it)."""

    pid: int
    socket: str | None
    state_dir: str
    what: str = "daemon"

    def describe(self) -> str:
        if self.what == "daemon":
            socket = f"socket {self.socket}" if self.socket is not None else "a socket systemd passed it"
            return f"another dataerai daemon (pid {self.pid}, {socket})"
        return f"another process (pid {self.pid}, {self.what})"


class AlreadyServed(Exception):
    """A daemon for the same socket and queue already runs: this one has nothing to do."""

    def __init__(self, holder: Holder) -> None:
        super().__init__(holder.describe())
        self.holder = holder


def queue_lock_path(state_dir: Path) -> Path:
    return state_dir / "daemon.lock"


def socket_lock_path(socket_path: Path) -> Path:
    return Path(f"{socket_path}.lock")


class LockTaken(Exception):
    """Another process holds the lock at ``path``: ``holder``, or None if it did not say who it is."""

    def __init__(self, path: Path, holder: Holder | None) -> None:
        super().__init__(path)
        self.path = path
        self.holder = holder

    def who(self) -> str:
        if self.holder is not None:
            return self.holder.describe()
        return f"another process (it did not write its pid into {self.path})"


def take_lock(path: Path, me: Holder) -> int:
    """The locked descriptor of ``path`` (created 0600), with ``me`` written into it.

    Raises ``LockTaken`` when another process holds it, ``OSError`` when the file cannot be opened.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LockTaken(path, holder_of(path)) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(asdict(me)).encode(), 0)
    return fd


def _read_holder(path: Path) -> Holder | None:
    try:
        raw = json.loads(path.read_bytes())
        return Holder(int(raw["pid"]), raw.get("socket"), str(raw["state_dir"]), str(raw.get("what", "daemon")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def holder_of(path: Path) -> Holder | None:
    """Who holds the lock at ``path``, waiting briefly for a holder that has just taken it to say so."""
    deadline = time.monotonic() + HOLDER_WAIT_S
    while True:
        holder = _read_holder(path)
        if holder is not None or time.monotonic() >= deadline:
            return holder
        time.sleep(0.01)


def _make_private_dir(directory: Path, what: str) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise DataeraiError("io_error", f"cannot create the {what} {directory}: {exc.strerror or exc}") from exc


def lock_queue(state_dir: Path, me: Holder) -> int:
    """Take the queue's lock; raise ``AlreadyServed`` (the same daemon runs) or ``DataeraiError("conflict")``."""
    _make_private_dir(state_dir, "state directory")
    path = queue_lock_path(state_dir)
    try:
        return take_lock(path, me)
    except LockTaken as taken:
        holder = taken.holder
        if holder is not None and holder.what == "daemon" and holder.socket is not None and holder.socket == me.socket:
            raise AlreadyServed(holder) from None
        raise DataeraiError(
            "conflict",
            f"{taken.who()} already uses the queue in {state_dir}; one queue has one daemon: stop that one first, "
            "or give this one its own XDG_STATE_HOME",
        ) from None
    except OSError as exc:
        raise DataeraiError("io_error", f"cannot open the queue's lock {path}: {exc.strerror or exc}") from exc


def lock_socket(socket_path: Path, me: Holder) -> int:
    """Take the socket's lock (its directory must exist); raise ``DataeraiError("conflict")`` if it is taken.

    Called with the queue's lock held, so the holder is a daemon with another queue.
    """
    path = socket_lock_path(socket_path)
    try:
        return take_lock(path, me)
    except LockTaken as taken:
        holder = taken.holder
        who = f"{holder.describe()} with the queue in {holder.state_dir}" if holder is not None else taken.who()
        raise DataeraiError(
            "conflict",
            f"{who} already serves the socket {socket_path}; give this daemon its own socket (DATAERAI_SOCKET) "
            "or stop that one first",
        ) from None
    except OSError as exc:
        raise DataeraiError("io_error", f"cannot open the socket's lock {path}: {exc.strerror or exc}") from exc
