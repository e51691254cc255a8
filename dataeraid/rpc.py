"""The RPC server: JSON-RPC 2.0 lines on a Unix socket, and the method registry.

Methods are registered next to their handlers (``methods.py``) with their
parameters and help, so the parameters are checked in one place and the
protocol reference can be generated from the registry.

Each connection: the peer's uid is checked (``SO_PEERCRED``); requests are
answered concurrently and possibly out of order (a ``job.wait`` does not hold
up a ``job.get``), at most ``MAX_IN_FLIGHT`` at once, after which the
connection is simply not read until one finishes. A malformed frame gets its
error answer and the connection goes on; nothing a client sends can stop the
daemon serving the others.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from dataerai import protocol
from dataerai.protocol import FrameError, Request, Response, RpcError

from dataeraid import log
from dataeraid.errors import DataeraiError

MAX_IN_FLIGHT = 64
_log = log.get("dataeraid.rpc")

_MISSING: Any = object()


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_KIND_CHECKS: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str),
    "int": _is_int,
    "number": lambda v: _is_int(v) or isinstance(v, float),
    "bool": lambda v: isinstance(v, bool),
    "list[str]": lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
    "object": lambda v: isinstance(v, dict),
    "any": lambda v: True,
}


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "str", "int", "number", "bool", "list[str]", "object", "any"
    required: bool = False
    default: Any = None
    nullable: bool = True
    help: str = ""

    def check(self, value: Any) -> Any:
        if value is None:
            if self.nullable and not self.required:
                return None
            raise DataeraiError("invalid_argument", f"`{self.name}` must not be null")
        if not _KIND_CHECKS[self.kind](value):
            raise DataeraiError("invalid_argument", f"`{self.name}` must be {self.kind}, not {type(value).__name__}")
        return value


Handler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Method:
    name: str
    handler: Handler
    params: tuple[Param, ...]
    help: str
    # A wait (job.wait) is cancelled when its client hangs up; other calls finish and answer.
    waits: bool = False

    def bind(self, params: dict[str, Any]) -> dict[str, Any]:
        known = {p.name: p for p in self.params}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise DataeraiError("invalid_argument", f"{self.name} takes no parameter {', '.join(unknown)}")
        bound: dict[str, Any] = {}
        for p in self.params:
            if p.name not in params:
                if p.required:
                    raise DataeraiError("invalid_argument", f"{self.name} needs `{p.name}`")
                bound[p.name] = p.default
                continue
            bound[p.name] = p.check(params[p.name])
        return bound


@dataclass
class Registry:
    methods: dict[str, Method] = field(default_factory=dict)

    def add(self, name: str, help: str, *params: Param, waits: bool = False) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.methods[name] = Method(name, handler, params, help, waits)
            return handler

        return register


class Connection:
    """One client. Handlers get it to stream notifications (event subscriptions)."""

    def __init__(self, stream: trio.SocketStream, peer_pid: int | None) -> None:
        self.stream = stream
        self.peer_pid = peer_pid
        self._send_lock = trio.Lock()
        self.nursery: trio.Nursery | None = None
        self.subscription_scope: trio.CancelScope | None = None

    async def send(self, data: bytes) -> None:
        async with self._send_lock:
            await self.stream.send_all(data)


async def _answer(registry: Registry, conn: Connection, request: Request) -> Response:
    method = registry.methods.get(request.method)
    if method is None:
        return Response(request.id, error=RpcError("method_not_found", f"no method {request.method!r}"))
    try:
        result = await method.handler(conn, **method.bind(request.params))
    except DataeraiError as exc:
        return Response(request.id, error=RpcError(exc.code, exc.message, exc.data))
    except Exception as exc:
        _log.exception("handler crashed", method=request.method)
        return Response(request.id, error=RpcError("internal", f"{request.method} failed: {exc!r}"))
    return Response(request.id, result=result)


async def _serve_one(registry: Registry, conn: Connection, item: Request | FrameError,
                     limiter: trio.CapacityLimiter, token: object) -> None:
    try:
        if isinstance(item, FrameError):
            await conn.send(protocol.encode_response(item.response))
            return
        response = await _answer(registry, conn, item)
        if not item.is_notification:
            await conn.send(protocol.encode_response(response))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        limiter.release_on_behalf_of(token)


async def _serve_batch(registry: Registry, conn: Connection, items: list[Request | FrameError],
                       limiter: trio.CapacityLimiter, token: object) -> None:
    try:
        responses: list[Response] = []
        for item in items:
            if isinstance(item, FrameError):
                responses.append(item.response)
            else:
                response = await _answer(registry, conn, item)
                if not item.is_notification:
                    responses.append(response)
        if responses:
            await conn.send(protocol.encode_responses(responses))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        limiter.release_on_behalf_of(token)


def peer_credentials(sock: trio.socket.SocketType) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


async def handle_connection(registry: Registry, stream: trio.SocketStream) -> None:
    """Serve one client; whatever goes wrong with it stays with it."""
    try:
        await _handle_connection(registry, stream)
    except Exception:
        _log.exception("connection failed")


async def _handle_connection(registry: Registry, stream: trio.SocketStream) -> None:
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
    splitter = protocol.LineSplitter()
    limiter = trio.CapacityLimiter(MAX_IN_FLIGHT)
    try:
        # Quick calls run in `calls` and are answered even after the client shut its
        # writing side; waits and event pumps run in `waits`, cancelled at hang-up.
        async with trio.open_nursery() as calls, trio.open_nursery() as waits:
            conn.nursery = waits
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
                        calls.start_soon(_serve_batch, registry, conn, items, limiter, token)
                        continue
                    for item in items:
                        token = object()
                        await limiter.acquire_on_behalf_of(token)
                        method = registry.methods.get(item.method) if isinstance(item, Request) else None
                        target = waits if method is not None and method.waits else calls
                        target.start_soon(_serve_one, registry, conn, item, limiter, token)
            # The client hung up: what it was waiting for goes on in the daemon without it.
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


async def serve(registry: Registry, listener: trio.SocketListener, *,
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await handle_connection(registry, stream)

    await trio.serve_listeners(handler, [listener], task_status=task_status)  # type: ignore[arg-type]
