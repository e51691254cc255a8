"""A real ``dataerai-server`` stopped by SIGTERM: idle connections are closed at once, a
request in flight gets its whole answer, and the process exits 0 well inside its grace."""

from __future__ import annotations

import socket
import time
from typing import Any

from dataerai_server.serve import GRACEFUL_SECONDS
from server_harness import json_answer


def test_sigterm_closes_idle_connections_at_once_and_exits_0(start_server: Any) -> None:
    server = start_server()
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    used = socket.create_connection((host, int(port)))
    unused = socket.create_connection((host, int(port)))
    with used, unused:
        used.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: test\r\n\r\n")
        assert json_answer(used).startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        assert server.stop() == 0
        # Had an idle connection stayed open, the stop would have waited out the grace period.
        assert time.monotonic() - started < GRACEFUL_SECONDS
        for sock in (used, unused):
            sock.settimeout(10)
            assert sock.recv(4096) == b""
    log = server.log_file.read_text()
    assert '"server.stopping"' in log and '"server.stopped"' in log
