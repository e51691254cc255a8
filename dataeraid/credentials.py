"""The daemon's credentials: which repository, and the token for it.

Written by ``dataerai auth login`` (0600, atomically), read by the daemon. The
token is never logged and never sent over the RPC socket; ``Credentials``'
repr hides it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Credentials:
    server_url: str
    token: str = field(repr=False)

    @property
    def api_base(self) -> str:
        return self.server_url.rstrip("/") + "/api/v1"


def load(path: Path) -> Credentials | None:
    """The stored credentials, or None when not logged in (or the file is unreadable)."""
    try:
        raw = json.loads(path.read_text())
        return Credentials(server_url=str(raw["server_url"]), token=str(raw["token"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(path: Path, credentials: Credentials) -> None:
    """Write atomically with mode 0600, in a directory only the user can enter."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, json.dumps({"server_url": credentials.server_url, "token": credentials.token}).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def remove(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False
