"""The opt-in ``/metrics`` endpoint: HTTP/1.1 on a loopback TCP port, served by Trio with h11.

Not prometheus_client's ``start_http_server``: that runs a thread of its own outside
the daemon's nursery, which neither stops with the daemon's tree nor can await the
store, and every scrape reads the store. Here each connection is a task in the
endpoint's nursery (:class:`MetricsPort`): one request, one answer, then the connection
closes (Prometheus opens a new one per scrape anyway), with a deadline so an idle client
cannot hold a task, and at most :data:`MAX_CONNECTIONS` at once. A reload that changes
``metrics_listen`` moves the endpoint without a restart (:meth:`MetricsPort.swap`).

    GET /metrics   200, the exposition (``render``)
    GET /health    200 for ok and degraded, 503 for failing; the health line, JSON
    anything else  404, or 405 for a method other than GET and HEAD
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import h11
import trio

from dataeraid import log
from dataeraid.observe.health import Health
from dataeraid.observe.metrics import CONTENT_TYPE

_log = log.get("dataeraid.observe")

#: A connection gets this long to send its request and read the answer.
CONNECTION_DEADLINE_S = 10.0
MAX_CONNECTIONS = 8
_READ = 16 * 1024

Exposition = Callable[[], Awaitable[str]]
Checkup = Callable[[], Awaitable[Health]]


async def _answer(stream: trio.SocketStream, conn: h11.Connection, status: int, body: bytes,
                  content_type: str, head: bool) -> None:
    headers = [("content-type", content_type), ("content-length", str(len(body))), ("connection", "close")]
    await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
    if not head:
        await stream.send_all(conn.send(h11.Data(data=body)) or b"")
    await stream.send_all(conn.send(h11.EndOfMessage()) or b"")


async def _request(stream: trio.SocketStream, conn: h11.Connection) -> h11.Request | None:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(_READ)
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Request):
            return event
        return None  # the client closed, or sent something else first


async def handle(stream: trio.SocketStream, exposition: Exposition, checkup: Checkup) -> None:
    """Serve one connection: one request, one answer."""
    conn = h11.Connection(h11.SERVER)
    try:
        with trio.move_on_after(CONNECTION_DEADLINE_S):
            try:
                request = await _request(stream, conn)
            except h11.RemoteProtocolError:
                await _answer(stream, conn, 400, b"bad request\n", "text/plain", head=False)
                return
            if request is None:
                return
            method = request.method.decode("ascii", "replace")
            path = request.target.decode("ascii", "replace").split("?", 1)[0]
            head = method == "HEAD"
            if method not in ("GET", "HEAD"):
                await _answer(stream, conn, 405, b"only GET and HEAD\n", "text/plain", head=False)
            elif path == "/metrics":
                text = await exposition()
                await _answer(stream, conn, 200, text.encode("utf-8"), CONTENT_TYPE, head)
            elif path == "/health":
                health = await checkup()
                body = (json.dumps(health.to_wire()) + "\n").encode("utf-8")
                await _answer(stream, conn, 503 if health.status == "failing" else 200, body,
                              "application/json", head)
            else:
                await _answer(stream, conn, 404, b"not found: try /metrics or /health\n", "text/plain", head)
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
        pass  # the client went away
    except Exception:
        _log.exception("metrics request failed")
    finally:
        await stream.aclose()


async def open_metrics_listeners(host: str, port: int) -> list[trio.SocketListener]:
    """The endpoint's listeners; ``OSError`` (the port is taken, the address is not this machine's)."""
    return await trio.open_tcp_listeners(port, host=host)


def _url(listeners: list[trio.SocketListener]) -> str:
    host, port = listeners[0].socket.getsockname()[:2]
    return f"http://{host if ':' not in host else f'[{host}]'}:{port}/metrics"


class MetricsPort:
    """The endpoint, on whichever listeners it has now: none, or those of one address.

    ``serve`` owns a nursery for as long as the observer runs; it holds the
    connections being answered and the accepting task of the listeners of the
    moment, in a cancel scope of its own. ``swap`` (a reload that changed
    ``metrics_listen``) cancels that scope and closes the old listeners at once, so
    the old port refuses from then on, and starts accepting on the new ones,
    bound already by the caller: a connection accepted before still gets its answer.
    """

    def __init__(self, exposition: Exposition, checkup: Checkup) -> None:
        self._exposition = exposition
        self._checkup = checkup
        self._slots = trio.CapacityLimiter(MAX_CONNECTIONS)
        self._nursery: trio.Nursery | None = None
        self._accepting: trio.CancelScope | None = None
        #: The listeners accepting now (for their port), else empty.
        self.listeners: list[trio.SocketListener] = []

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the endpoint's tasks until cancelled; listeners come by ``swap``."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._close(self.listeners)
            self.listeners = []

    def swap(self, listeners: list[trio.SocketListener]) -> None:
        """Serve on ``listeners`` (none: the endpoint is off) instead of the ones served now, which are closed."""
        if self._nursery is None:  # not serving (the observer stops): nothing will accept on them
            self._close(listeners)
            return
        old, self.listeners = self.listeners, listeners
        if self._accepting is not None:
            # Cancelled first: the accepting tasks then never see their sockets closed under them.
            self._accepting.cancel()
            self._accepting = None
        if old:
            url = _url(old)
            self._close(old)
            _log.info("metrics endpoint closed", url=url)
        if listeners:
            self._accepting = trio.CancelScope()
            self._nursery.start_soon(self._accept, listeners, self._accepting)
            _log.info("metrics endpoint listening", url=_url(listeners))

    @staticmethod
    def _close(listeners: list[trio.SocketListener]) -> None:
        for listener in listeners:
            listener.socket.close()

    async def _accept(self, listeners: list[trio.SocketListener], scope: trio.CancelScope) -> None:
        assert self._nursery is not None
        with scope:
            await trio.serve_listeners(self._one, listeners, handler_nursery=self._nursery)

    async def _one(self, stream: trio.SocketStream) -> None:
        async with self._slots:
            await handle(stream, self._exposition, self._checkup)
