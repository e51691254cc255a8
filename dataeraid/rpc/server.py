"""The RPC server: JSON-RPC 2.0 lines on a Unix socket, answered from the registry.

Each connection: the peer's uid is checked (``SO_PEERCRED``); requests are
answered concurrently and possibly out of order (a ``job.wait`` does not hold
up a ``job.get``), at most ``MAX_IN_FLIGHT`` at once, after which the
connection is simply not read until one finishes. A malformed frame gets its
error answer and the connection goes on; nothing a client sends can stop the
daemon serving the others.

Limits (docs/protocol.md): a line of at most ``protocol.MAX_LINE_BYTES``, a batch of
at most ``protocol.MAX_BATCH_ITEMS``, an answer of at most ``protocol.MAX_ANSWER_BYTES``;
heavy calls (listings and batches) take a turn from a small daemon-wide pool in
arrival order, so one client's large answers cannot starve the others or grow the
daemon's memory without bound.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio
from dataerai import protocol
from dataerai.protocol import FrameError, Request, Response, RpcError

from dataeraid import log
from dataeraid.errors import DataeraiError
from dataeraid.rpc.registry import Registry

#: Requests of one connection being answered at once; past it the connection is not
#: read until one finishes (back-pressure, not an error).
MAX_IN_FLIGHT = 64
#: Heavy calls (listings, batches) of one connection at once, counted until their
#: answer is sent: a client that does not read its answers holds at most this many.
MAX_HEAVY_PER_CONNECTION = 2
#: Heavy calls being computed at once across the daemon; taken in arrival order, so
#: every client gets its turn, and released before sending, so a slow reader holds none.
MAX_HEAVY_AT_ONCE = 4

_log = log.get("dataeraid.rpc")


class Connection:
    """One client. Handlers get it to stream notifications (event subscriptions)."""

    def __init__(self, stream: trio.SocketStream, peer_pid: int | None) -> None:
        self.stream = stream
        self.peer_pid = peer_pid
        self._send_lock = trio.Lock()
        self._waits: trio.Nursery | None = None
        self.hung_up = False
        self.heavy = trio.CapacityLimiter(MAX_HEAVY_PER_CONNECTION)
        self.subscription_scope: trio.CancelScope | None = None

    async def send(self, data: bytes) -> None:
        async with self._send_lock:
            await self.stream.send_all(data)

    def start_waiting(self, name: str, task: Callable[[], Awaitable[None]]) -> bool:
        """Run ``task`` for as long as the client stays (an event pump, a wait); False,
        and nothing started, if the client has hung up already.

        A task that crashes is a bug: it is logged and ends alone, never the connection.
        """
        if self.hung_up or self._waits is None:
            return False

        async def guarded() -> None:
            try:
                await task()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            except Exception:
                _log.exception("connection task crashed", task=name)

        self._waits.start_soon(guarded)
        return True


ContextFactory = Callable[[Connection], Any]


def _encode(response: Response) -> bytes:
    """The answer's line, or a coded error line when it cannot be sent as it is."""
    try:
        data = protocol.encode_response(response)
    except ValueError as exc:  # NaN or infinity in a result: a bug, answered as one
        _log.error("answer not encodable", error=str(exc))
        return protocol.encode_response(Response(response.id, error=RpcError("internal", "the answer is not JSON")))
    if len(data) > protocol.MAX_ANSWER_BYTES:
        return protocol.encode_response(Response(response.id, error=_too_large(len(data))))
    return data


def _too_large(size: int) -> RpcError:
    return RpcError("frame_too_large", f"the answer would be {size} bytes, over the {protocol.MAX_ANSWER_BYTES} "
                                       "a line may have; ask for less (a smaller `limit`)")


@dataclass
class _Server:
    registry: Registry
    make_context: ContextFactory
    heavy: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(MAX_HEAVY_AT_ONCE))

    def is_heavy(self, item: Request | FrameError) -> bool:
        method = self.registry.methods.get(item.method) if isinstance(item, Request) else None
        return method is not None and method.heavy

    async def serve_one(self, conn: Connection, context: Any, item: Request | FrameError) -> None:
        if isinstance(item, FrameError):
            await conn.send(protocol.encode_response(item.response))
            return
        if self.is_heavy(item):
            async with conn.heavy:
                async with self.heavy:
                    data = _encode(await self.registry.answer(context, item))
                if not item.is_notification:
                    await conn.send(data)
            return
        response = await self.registry.answer(context, item)
        if not item.is_notification:
            await conn.send(_encode(response))

    async def serve_batch(self, conn: Connection, context: Any, items: list[Request | FrameError]) -> None:
        """A batch runs its requests one after another, as one heavy call, and answers them in
        one line of at most ``MAX_ANSWER_BYTES``: a request whose answer would not fit is
        answered ``frame_too_large`` (it ran), and those after it do not run."""
        if len(items) > protocol.MAX_BATCH_ITEMS:
            error = RpcError("frame_too_large", f"a batch of {len(items)} requests; at most "
                                                f"{protocol.MAX_BATCH_ITEMS}, and none of this one ran")
            await conn.send(protocol.encode_response(Response(None, error=error)))
            return
        async with conn.heavy:
            lines: list[bytes] = []
            size = 2
            async with self.heavy:
                for item in items:
                    if isinstance(item, FrameError):
                        response = item.response
                    elif size > protocol.MAX_ANSWER_BYTES:
                        if item.is_notification:
                            continue
                        response = Response(item.id, error=RpcError(
                            "frame_too_large", "not run: the batch's answer reached its size limit; send it again"))
                    else:
                        response = await self.registry.answer(context, item)
                        if item.is_notification:
                            continue
                    line = _encode(response)[:-1]
                    if size + len(line) + 1 > protocol.MAX_ANSWER_BYTES:
                        line = protocol.encode_response(Response(response.id, error=_too_large(len(line))))[:-1]
                        size = protocol.MAX_ANSWER_BYTES + 1  # nothing after this one runs
                    else:
                        size += len(line) + 1
                    lines.append(line)
            if lines:
                await conn.send(b"[" + b",".join(lines) + b"]\n")

def peer_credentials(sock: trio.socket.SocketType) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


async def handle_connection(server: _Server, stream: trio.SocketStream) -> None:
    """Serve one client; whatever goes wrong with it stays with it."""
    try:
        await _handle_connection(server, stream)
    except Exception:
        _log.exception("connection failed")


async def _handle_connection(server: _Server, stream: trio.SocketStream) -> None:
    pid: int | None = None
    try:
        pid, uid, _gid = peer_credentials(stream.socket)
    except OSError:
        uid = -1
    if uid not in (os.getuid(), 0):
        _log.warning("refused a peer of another user", peer_uid=uid, peer_pid=pid)
        await stream.aclose()
        return
    conn = Connection(stream, pid)
    context = server.make_context(conn)
    splitter = protocol.LineSplitter()
    limiter = trio.CapacityLimiter(MAX_IN_FLIGHT)

    async def run(job: Callable[[], Awaitable[None]], token: object) -> None:
        try:
            await job()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away before its answer
        finally:
            limiter.release_on_behalf_of(token)

    try:
        # Quick calls run in `calls` and are answered even after the client shut its
        # writing side; waits and event pumps run in `waits`, cancelled at hang-up.
        async with trio.open_nursery() as calls, trio.open_nursery() as waits:
            conn._waits = waits
            while True:
                try:
                    data = await stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                if not data:
                    break
                for line in splitter.feed(data):
                    items, is_batch = protocol.parse_request_line(line)
                    if is_batch:
                        token = object()
                        await limiter.acquire_on_behalf_of(token)
                        calls.start_soon(run, partial(server.serve_batch, conn, context, items), token)
                        continue
                    for item in items:
                        token = object()
                        await limiter.acquire_on_behalf_of(token)
                        method = server.registry.methods.get(item.method) if isinstance(item, Request) else None
                        target = waits if method is not None and method.waits else calls
                        target.start_soon(run, partial(server.serve_one, conn, context, item), token)
            # The client hung up: what it was waiting for goes on in the daemon without it.
            conn.hung_up = True
            waits.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()

def check_private_directory(directory: Path) -> None:
    """Create the socket's directory 0700, or refuse one that others can enter."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = directory.stat()
    if st.st_uid != os.getuid():
        raise DataeraiError("permission_denied", f"{directory} belongs to another user; refusing to serve there")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise DataeraiError(
            "permission_denied",
            f"{directory} is open to other users (mode {stat.S_IMODE(st.st_mode):o}); "
            "use a directory only you can enter (chmod 700)",
        )


def _prepare_socket_path(path: Path) -> None:
    check_private_directory(path.parent)
    if path.exists() or path.is_symlink():
        path.unlink()  # stale: the caller holds the single-instance lock


async def open_listener(path: Path) -> trio.SocketListener:
    """A listener on ``LISTEN_FDS`` (systemd socket activation) or a new 0600 socket at ``path``."""
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and int(os.environ.get("LISTEN_FDS", "0")) >= 1:
        sock = trio.socket.from_stdlib_socket(socket.socket(fileno=3))
        return trio.SocketListener(sock)
    await trio.to_thread.run_sync(_prepare_socket_path, path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(128)
    return trio.SocketListener(sock)


async def serve(registry: Registry, make_context: ContextFactory, listener: trio.SocketListener, *,
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``registry`` on ``listener``; each connection's handlers get ``make_context(conn)``."""
    server = _Server(registry, make_context)

    async def handler(stream: trio.SocketStream) -> None:
        await handle_connection(server, stream)

    await trio.serve_listeners(handler, [listener], task_status=task_status)  # type: ignore[arg-type]
