"""One connection to the daemon, and how it is opened (starting the daemon if need be).

``Connection.io`` is the only code that sends or receives on the socket. Above
it, ``Connection`` sorts what arrives into the answer being waited for
(matched by id) and a bounded queue of notifications (events), so an event that
arrives while a request is in flight is kept for whoever reads events next.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import time
from collections import deque
from typing import Any, Final

from ._errors import DaemonConnectionError, DaemonError, DaemonTimeoutError, error_from_rpc
from ._paths import daemon_log_path
from .protocol import (
    MAX_ANSWER_BYTES,
    MAX_LINE_BYTES,
    LineSplitter,
    Notification,
    Request,
    Response,
    encode_request,
    parse_server_line,
)

#: The daemon's answers may be long (``job.list``): accept lines up to this from it.
MAX_SERVER_LINE_BYTES: Final = MAX_ANSWER_BYTES
#: Notifications kept while nobody reads them; beyond, the oldest are dropped and a ``gap`` stands for them.
MAX_BUFFERED_NOTIFICATIONS: Final = 4096
_RECV_BYTES: Final = 1 << 16

#: How to get the daemon onto a machine: the end of the error of a client that found none to start.
#: The one place that names the distributions, so that it follows docs/install.md (the names
#: ``dataerai`` and ``dataerai-sdk`` on the public package index are other projects').
DAEMON_INSTALL_HINT: Final = (
    "install the Dataerai daemon from your site's wheelhouse or .deb (docs/install.md), e.g. "
    "`uv tool install --no-index --find-links WHEELHOUSE dataerai-transfer`; never from the public "
    "package index, where the name `dataerai` is another project's"
)


class Expired(Exception):
    """Internal: a deadline passed before the daemon answered. Callers raise ``DaemonTimeoutError``."""


class Connection:
    """A connected Unix socket speaking the protocol. Not thread-safe: the client serialises use."""

    def __init__(self, sock: socket.socket, socket_path: str, *, max_notifications: int = MAX_BUFFERED_NOTIFICATIONS):
        self._sock = sock
        self._socket_path = socket_path
        self._splitter = LineSplitter(MAX_SERVER_LINE_BYTES)
        self._ids = itertools.count(1)
        self._waiting_for: int | None = None
        self._answer: Response | None = None
        self._notifications: deque[Notification] = deque()
        self._max_notifications = max_notifications
        self._lost: tuple[int, int] | None = None  # ids of events dropped from a full queue
        self.closed = False

    # --- the bottom ---------------------------------------------------------

    def io(self, outgoing: bytes, deadline: float | None) -> None:
        """Send ``outgoing`` whole, then wait for data and sort every complete message.

        Returns after at least one chunk was read. ``deadline`` is a
        ``time.monotonic()`` value (``None`` waits forever). Raises ``Expired``
        when it passes first (a half-sent request closes the connection, as the
        stream can no longer be trusted), and ``DaemonConnectionError`` when the
        connection broke or the daemon sent something unreadable (the
        connection is then closed).
        """
        if self.closed:
            raise self._broken("the connection to the daemon is closed")
        try:
            if outgoing:
                self._sock.settimeout(_remaining(deadline))
                try:
                    self._sock.sendall(outgoing)
                except TimeoutError:
                    self.close()
                    raise Expired() from None
            remaining = _remaining(deadline)
            if remaining is not None and remaining <= 0:
                raise Expired()
            self._sock.settimeout(remaining)
            try:
                data = self._sock.recv(_RECV_BYTES)
            except TimeoutError:
                raise Expired() from None
        except OSError as exc:
            self.close()
            raise self._broken(f"the connection to the daemon broke: {exc}") from exc
        if not data:
            self.close()
            raise self._broken("the daemon closed the connection")
        for line in self._splitter.feed(data):
            if line is None:
                self.close()
                raise self._broken(f"the daemon sent a line over {MAX_SERVER_LINE_BYTES} bytes")
            try:
                messages = list(parse_server_line(line))
            except ValueError as exc:
                self.close()
                raise self._broken(f"the daemon sent something that is not JSON-RPC: {exc}") from exc
            for message in messages:
                self._sort(message)

    # --- above it -------------------------------------------------------------

    def _sort(self, message: Response | Notification) -> None:
        if isinstance(message, Notification):
            self._notifications.append(message)
            if len(self._notifications) > self._max_notifications:
                self._drop_oldest()
        elif message.id is not None and message.id == self._waiting_for:
            self._answer = message
        elif message.id is None and message.error is not None and self._waiting_for is not None:
            # An error the daemon could not tie to an id (our line was too large,
            # or not JSON): with one request in flight, it is about that one.
            self._answer = message
        # Anything else answers a request we gave up on (it timed out): dropped.

    def _drop_oldest(self) -> None:
        dropped = self._notifications.popleft()
        event_id = dropped.params.get("id") if dropped.method == "event" else None
        if isinstance(event_id, int) and not isinstance(event_id, bool):
            low, high = self._lost if self._lost else (event_id, event_id)
            self._lost = (min(low, event_id), max(high, event_id))
        elif self._lost is None:
            self._lost = (0, 0)

    def request(self, method: str, params: dict[str, Any] | None, deadline: float | None) -> Any:
        """Send one request and return its result.

        Raises the ``DaemonError`` the daemon answered with, ``Expired``, or
        ``DaemonConnectionError``. A late answer to a request that expired is dropped.
        """
        request_id = next(self._ids)
        try:
            line = encode_request(Request(method, dict(params or {}), request_id))
        except (TypeError, ValueError) as exc:  # not JSON: a datetime in metadata, a cycle...
            raise DaemonError("invalid_argument", f"the {method} parameters cannot be sent as JSON: {exc}") from exc
        if len(line) > MAX_LINE_BYTES:
            raise DaemonError(
                "frame_too_large", f"the {method} request is {len(line)} bytes, over the {MAX_LINE_BYTES} allowed"
            )
        self._waiting_for, self._answer = request_id, None
        try:
            self.io(line, deadline)
            while self._answer is None:
                self.io(b"", deadline)
            answer = self._answer
        finally:
            self._waiting_for, self._answer = None, None
        if answer.error is not None:
            raise error_from_rpc(answer.error)
        return answer.result

    def next_notification(self, deadline: float | None) -> Notification:
        """The oldest buffered notification, reading until one arrives.

        When the buffer overflowed, a synthesised ``gap`` event (with
        ``"source": "sdk"``) comes first, naming the ids of the dropped events.
        """
        while True:
            if self._lost is not None:
                low, high = self._lost
                self._lost = None
                gap = {"id": high, "type": "gap", "missed_from": low, "missed_to": high, "source": "sdk"}
                return Notification("event", gap)
            if self._notifications:
                return self._notifications.popleft()
            self.io(b"", deadline)

    def buffered_notifications(self) -> list[Notification]:
        """Take the notifications that already arrived, without reading more."""
        taken = list(self._notifications)
        self._notifications.clear()
        return taken

    def clear_notifications(self) -> None:
        self._notifications.clear()
        self._lost = None

    def abort(self) -> None:
        """Shut the socket down from any thread: a ``recv`` blocked in another thread returns at once."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self._sock.close()
            except OSError:
                pass

    def _broken(self, message: str) -> DaemonConnectionError:
        return DaemonConnectionError(f"{message} ({self._socket_path})", socket_path=self._socket_path)


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


# --- opening, and starting the daemon ---------------------------------------

_NOT_LISTENING = (FileNotFoundError, ConnectionRefusedError)
#: Daemons this process started, kept so they are reaped (no zombies, no ResourceWarning).
_SPAWNED: list[subprocess.Popen[bytes]] = []


def _connect(path: str, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(max(timeout, 0.05))
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def open_connection(
    socket_path: str,
    *,
    binary_path: str | None,
    auto_start: bool,
    start_timeout_s: float,
) -> Connection:
    """Connect to the daemon at ``socket_path``, starting it first when it is not running.

    When the socket is missing or refuses (a stale file) and ``auto_start`` is
    set, runs ``[binary, "daemon", "run"]`` detached (its own session, no
    inherited descriptors, ``DATAERAI_SOCKET`` set to ``socket_path``) and polls
    until it listens. Several clients may do this at once: the daemon lets only
    one instance run and a second one exits with status 0, so every client ends
    up connected to the winner.

    Raises ``DaemonError`` with the daemon's own code and reason when the daemon
    refused to start (a bad ``config.toml``, a broken or taken queue: it wrote
    why into ``daemon.log``, where this reads it back), ``DaemonConnectionError``
    (not running and not to be started, no binary, the daemon exited without
    saying why, any other socket error) or ``DaemonTimeoutError`` (it did not
    listen within ``start_timeout_s``).
    """
    try:
        return Connection(_connect(socket_path, start_timeout_s), socket_path)
    except _NOT_LISTENING as exc:
        if not auto_start:
            raise DaemonConnectionError(
                f"the daemon is not running at {socket_path} ({exc.strerror}); "
                "start it with `dataerai daemon run`, or let the client start it (auto_start=True)",
                socket_path=socket_path,
            ) from exc
    except OSError as exc:
        raise _cannot_connect(socket_path, exc) from exc

    binary = _find_binary(binary_path, socket_path)
    started = time.monotonic()
    log_path = daemon_log_path()
    log_offset = _size(log_path)
    process = _spawn(binary, socket_path)
    deadline = started + start_timeout_s
    delay = 0.005
    exited_at: float | None = None
    while True:
        try:
            return Connection(_connect(socket_path, deadline - time.monotonic()), socket_path)
        except _NOT_LISTENING:
            pass
        except OSError as exc:
            raise _cannot_connect(socket_path, exc) from exc
        now = time.monotonic()
        status = process.poll()
        if status is not None and status != 0:
            refusal = _refusal(log_path, log_offset, process.pid)
            if refusal is not None:
                code, reason = refusal
                raise DaemonError(code, f"the dataerai daemon did not start: {reason}")
            # Give it one more poll: a daemon that failed may have raced a winner.
            if exited_at is None:
                exited_at = now
            elif now - exited_at > 0.2:
                raise DaemonConnectionError(
                    f"the daemon ({binary} daemon run) exited with status {status} "
                    f"before it listened on {socket_path}, and its log ({log_path}) does not say why: "
                    "run `dataerai daemon run` by hand to see why",
                    socket_path=socket_path,
                )
        if now >= deadline:
            raise DaemonTimeoutError(
                f"the daemon ({binary} daemon run) did not listen on {socket_path} within {start_timeout_s} s"
            )
        time.sleep(max(0.0, min(delay, deadline - now)))
        delay = min(delay * 2, 0.05)


#: Of the log written since the spawn, read at most this much for the daemon's reason.
_MAX_LOG_READ: Final = 1 << 20


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _refusal(log_path: str, offset: int, pid: int) -> tuple[str, str] | None:
    """The (code, message) of the ``cannot start`` line the daemon ``pid`` wrote after ``offset`` in its log.

    None when there is none (it died before it could say, or logged elsewhere).
    A log that shrank was rotated since the spawn: then it is read from its start.
    """
    try:
        with open(log_path, "rb") as log:
            if os.fstat(log.fileno()).st_size >= offset:
                log.seek(offset)
            tail = log.read(_MAX_LOG_READ)
    except OSError:
        return None
    for line in reversed(tail.splitlines()):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == "cannot start" and entry.get("pid") == pid:
            code, message = entry.get("code"), entry.get("message")
            if isinstance(code, str) and isinstance(message, str):
                return code, message
    return None


def _cannot_connect(socket_path: str, exc: OSError) -> DaemonConnectionError:
    return DaemonConnectionError(f"cannot connect to the daemon at {socket_path}: {exc}", socket_path=socket_path)


def _find_binary(binary_path: str | None, socket_path: str) -> str:
    if binary_path is not None:
        return binary_path
    found = shutil.which("dataerai")
    if found is None:
        raise DaemonConnectionError(
            f"the daemon is not running at {socket_path} and no `dataerai` binary was found on PATH "
            f"to start it: pass binary_path=... to the client, or {DAEMON_INSTALL_HINT}",
            socket_path=socket_path,
        )
    return found


def _spawn(binary: str, socket_path: str) -> subprocess.Popen[bytes]:
    _SPAWNED[:] = [p for p in _SPAWNED if p.poll() is None]
    try:
        process = subprocess.Popen(
            [binary, "daemon", "run"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,
            cwd="/",
            env={**os.environ, "DATAERAI_SOCKET": socket_path},
        )
    except OSError as exc:
        raise DaemonConnectionError(
            f"cannot start the daemon with {binary!r}: {exc}; pass binary_path=... pointing at the `dataerai` CLI",
            socket_path=socket_path,
        ) from exc
    _SPAWNED.append(process)
    return process
