"""The plumbing of the tests' threaded fake servers: listen, accept, a thread per connection, close.

``LoopbackServer(serve)`` listens on 127.0.0.1 (a free port, ``.port``) or, given ``unix``, on
a Unix socket at that path; a thread accepts, and each connection is served in a thread of its
own by ``serve(sock, number)`` (``number``: 1 for the first connection accepted, 2 for the
next...), over TLS if ``tls`` is given (a connection whose handshake fails is dropped). The
connection is closed when ``serve`` returns. ``close()`` wakes the accept, shuts every
connection down (so a ``serve`` blocked in ``recv`` returns) and joins the threads.

The fakes that use it keep only their protocol: ``tests/server/test_storage_readback.py``,
``tests/daemon/test_bulk_http.py``, ``tests/cli/conftest.py`` and
``tests/client/sdk_fake_daemon.py`` (which also runs as a program: it puts this directory on
its path itself, as for ``fake_watches``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading
from collections.abc import Callable

#: ``serve(sock, number)``: one connection, the number-th accepted (from 1).
Serve = Callable[[socket.socket, int], None]


class LoopbackServer:
    """A listening socket, its accept thread and a thread per connection, each given to ``serve``."""

    def __init__(self, serve: Serve, *, unix: str | os.PathLike[str] | None = None,
                 tls: ssl.SSLContext | None = None, backlog: int | None = None) -> None:
        self._serve = serve
        self._tls = tls
        if unix is None:
            self.listener = socket.create_server(("127.0.0.1", 0), backlog=backlog)
            self.port: int = self.listener.getsockname()[1]
        else:
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(os.fspath(unix))
            self.listener.listen(*(() if backlog is None else (backlog,)))
        #: How many connections were accepted so far.
        self.accepted = 0
        self._lock = threading.Lock()
        self._closing = False
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                if self._closing:
                    sock.close()
                    return
                self.accepted += 1
                self._open.add(sock)
                thread = threading.Thread(target=self._connection, args=(sock, self.accepted), daemon=True)
                self._threads.append(thread)
            thread.start()

    def _connection(self, sock: socket.socket, number: int) -> None:
        try:
            if self._tls is not None:
                raw = sock
                try:
                    sock = self._tls.wrap_socket(raw, server_side=True)
                except OSError:
                    return  # e.g. the client refused the certificate
                finally:
                    with self._lock:
                        self._open.discard(raw)
                with self._lock:
                    self._open.add(sock)
                    closing = self._closing
                if closing:
                    self._shut(sock)
            self._serve(sock, number)
        finally:
            with self._lock:
                self._open.discard(sock)
            sock.close()

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, shut every connection down and wait (up to ``timeout`` each) for the threads."""
        with self._lock:
            self._closing = True
            conns = list(self._open)
        self._shut(self.listener)  # wakes the thread blocked in accept()
        self.listener.close()
        for sock in conns:
            self._shut(sock)
        self._accepter.join(timeout)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)
