"""A TCP proxy from a loopback port to a server that can cut its connections or refuse new
ones: the network faults of ``make soak`` and of the integration tests."""

from __future__ import annotations

import ctypes
import socket
import struct
import threading
import time

from stack import free_port


class ChaosProxy:
    """A TCP proxy from a loopback port to the server that can cut its connections or refuse new ones."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._refuse_until = 0.0
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            if time.monotonic() < self._refuse_until:
                _reset(downstream)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(downstream)  # the server is down: the daemon sees a refused connection
                continue
            with self._lock:
                self._open.update((downstream, upstream))
            for a, b in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(256 * 1024):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(source)
            _reset(source)

    def cut(self) -> int:
        """Reset every open connection; how many there were."""
        with self._lock:
            victims = list(self._open)
            self._open.clear()
        for sock in victims:
            _reset(sock)
        return len(victims) // 2

    def outage(self, seconds: float) -> None:
        self._refuse_until = time.monotonic() + seconds
        self.cut()

    def close(self) -> None:
        self._stopped = True
        self._listener.close()
        self.cut()


_libc = ctypes.CDLL(None, use_errno=True)
_UNSPECIFIED = struct.pack("H14x", socket.AF_UNSPEC)


def _reset(sock: socket.socket) -> None:
    """Drop the connection with a TCP RST, as a lost network or a crashed peer would.

    ``connect`` to an unspecified address disconnects a TCP socket at once (Linux): the
    peer gets a reset, and a thread of ours blocked reading or writing it wakes with an
    error; a plain ``close`` would wait for that thread and send nothing.
    """
    try:
        _libc.connect(sock.fileno(), _UNSPECIFIED, len(_UNSPECIFIED))
    except (OSError, ValueError):
        pass
    sock.close()
