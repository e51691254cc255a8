"""systemd's notify protocol: READY, STATUS, WATCHDOG, STOPPING.

Silent when not run by systemd (no ``NOTIFY_SOCKET``). The watchdog interval
comes from ``WATCHDOG_USEC``; pings go at half of it, on Trio's clock.
"""

from __future__ import annotations

import os

import sdnotify
import trio


class Notifier:
    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._notifier = sdnotify.SystemdNotifier() if self.enabled else None

    def send(self, message: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(message)

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    @staticmethod
    def watchdog_interval() -> float | None:
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 1e6 / 2

    async def watchdog(self) -> None:
        interval = self.watchdog_interval()
        if interval is None:
            return
        while True:
            self.send("WATCHDOG=1")
            await trio.sleep(interval)
