"""The socket path rule and the state directory rule, shared by the SDK and the daemon.

The SDK needs the state directory for one thing: a daemon it started that
refused to start wrote why into ``daemon.log`` there, and the SDK reports it.
"""

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


STATE_DIR_NAME = "dataerai"
LOG_NAME = "daemon.log"


def default_state_dir() -> str:
    """``$XDG_STATE_HOME/dataerai``, else ``~/.local/state/dataerai``: the queue and the daemon's log."""
    state_home = os.environ.get("XDG_STATE_HOME")
    if not (state_home and os.path.isabs(state_home)):
        state_home = os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state_home, STATE_DIR_NAME)


def daemon_log_path() -> str:
    """Where a daemon whose stderr goes nowhere (one the SDK started) writes its log."""
    return os.path.join(default_state_dir(), LOG_NAME)
