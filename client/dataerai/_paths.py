"""The socket path rule, shared by the SDK and the daemon."""

from __future__ import annotations

import os

SOCKET_NAME = "dataerai-transfer.sock"


def default_socket_path() -> str:
    """``$DATAERAI_SOCKET``, else ``$XDG_RUNTIME_DIR/dataerai-transfer.sock``, else ``/run/user/<uid>/...``."""
    explicit = os.environ.get("DATAERAI_SOCKET")
    if explicit:
        return explicit
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, SOCKET_NAME)
    return f"/run/user/{os.getuid()}/{SOCKET_NAME}"
