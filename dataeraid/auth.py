"""The daemon's view of the user's credentials.

Credentials are read from the file ``dataerai auth login`` writes. Jobs that met
an expired or missing token wait on ``changed()``; ``reload()`` (the
``auth.reload`` RPC, or a new login) wakes them.
"""

from __future__ import annotations

from pathlib import Path

import trio

from dataeraid import credentials
from dataeraid.credentials import Credentials
from dataeraid.errors import AuthProblem


class Auth:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._current = credentials.load(path)
        self._changed = trio.Event()
        self.version = 0

    @property
    def current(self) -> Credentials | None:
        return self._current

    def require(self) -> Credentials:
        if self._current is None:
            raise AuthProblem("auth_required", "not logged in: run `dataerai auth login --server URL`")
        return self._current

    def reload(self) -> Credentials | None:
        self._current = credentials.load(self._path)
        self.version += 1
        self._changed.set()
        self._changed = trio.Event()
        return self._current

    async def wait_changed(self, since_version: int) -> None:
        """Return once credentials were reloaded after ``since_version``."""
        while self.version == since_version:
            await self._changed.wait()
