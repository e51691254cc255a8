"""Where the daemon keeps things, by the XDG base directory conventions.

Setting the ``XDG_*`` variables (and ``DATAERAI_SOCKET``) isolates a whole user
environment: tests, and several users on one instrument PC, rely on that.

| what | path |
|---|---|
| queue database | ``$XDG_STATE_HOME/dataerai/queue.sqlite3`` (default ``~/.local/state``) |
| daemon log | ``$XDG_STATE_HOME/dataerai/daemon.log`` (when stderr goes nowhere; rotated at 10 MiB) |
| queue lock | ``$XDG_STATE_HOME/dataerai/daemon.lock`` (one daemon per queue: ``dataeraid.instance``) |
| credentials | ``$XDG_CONFIG_HOME/dataerai/credentials.json`` (0600; default ``~/.config``) |
| configuration | ``$XDG_CONFIG_HOME/dataerai/config.toml`` |
| socket | ``$DATAERAI_SOCKET``, else ``$XDG_RUNTIME_DIR/dataerai-transfer.sock``, else ``/run/user/<uid>/...`` |
| systemd user units | ``$XDG_CONFIG_HOME/systemd/user`` (``dataerai service install`` writes them there) |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dataerai._paths import LOG_NAME, default_socket_path, default_state_dir

APP = "dataerai"


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    if value and os.path.isabs(value):
        return Path(value)
    return Path.home() / fallback


@dataclass(frozen=True)
class Paths:
    state_dir: Path
    config_dir: Path
    socket: Path

    @property
    def queue_db(self) -> Path:
        return self.state_dir / "queue.sqlite3"

    @property
    def log_file(self) -> Path:
        return self.state_dir / LOG_NAME

    @property
    def credentials(self) -> Path:
        return self.config_dir / "credentials.json"

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.toml"

    @classmethod
    def from_environment(cls) -> Paths:
        return cls(
            state_dir=Path(default_state_dir()),
            config_dir=_xdg("XDG_CONFIG_HOME", ".config") / APP,
            socket=Path(default_socket_path()),
        )


def systemd_user_dir() -> Path:
    """The user's own systemd unit directory, where ``dataerai service install`` writes the units.

    The user manager reads it by the same rule: ``$XDG_CONFIG_HOME/systemd/user``,
    else ``~/.config/systemd/user`` (systemd.unit(5), "User Unit Search Path").
    """
    return _xdg("XDG_CONFIG_HOME", ".config") / "systemd" / "user"
