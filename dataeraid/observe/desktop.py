"""Desktop notifications of alerts, on a workstation with a session bus (``desktop_notifications = true``).

Through jeepney, a pure-Python D-Bus library with native Trio support, so a
notification is one call on the daemon's own event loop (desktop-notifier and
dbus-fast want an asyncio loop). It is the optional extra ``dataerai-transfer[desktop]``:
without it, or without a session bus (a headless instrument PC, a systemd service
with no ``DBUS_SESSION_BUS_ADDRESS``), notifications are skipped with one log line.
The standard ``org.freedesktop.Notifications.Notify`` call: any desktop shows it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from dataeraid import log

_log = log.get("dataeraid.observe")

APP_NAME = "dataerai"
#: The notification's urgency hint: 1 normal, 2 critical (stays until dismissed).
URGENCY = {"normal": 1, "critical": 2}

Send = Callable[[Any], Awaitable[None]]


def notification_message(title: str, body: str, urgency: str) -> Any:
    """The D-Bus ``Notify`` call for one notification (a jeepney message)."""
    from jeepney import DBusAddress, new_method_call

    address = DBusAddress("/org/freedesktop/Notifications", bus_name="org.freedesktop.Notifications",
                          interface="org.freedesktop.Notifications")
    hints = {"urgency": ("y", URGENCY[urgency])}
    return new_method_call(address, "Notify", "susssasa{sv}i",
                           (APP_NAME, 0, "dialog-warning", title, body, [], hints, -1))


async def send_on_session_bus(message: Any) -> None:
    """Send ``message`` on the user's session bus and wait for the answer."""
    from jeepney.io.trio import open_dbus_router

    async with open_dbus_router(bus="SESSION") as router:
        await router.send_and_get_reply(message)


class Desktop:
    """Shows alerts as desktop notifications; ``send`` is the D-Bus call (a fake in tests)."""

    def __init__(self, send: Send | None = None) -> None:
        self._send = send or send_on_session_bus
        self._broken: str | None = None

    async def notify(self, title: str, body: str, urgency: str = "normal") -> bool:
        """Show one notification; False (logged once) when there is no way to."""
        if self._broken is not None:
            return False
        try:
            message = notification_message(title, body, urgency)
        except ImportError:
            self._broken = "jeepney is not installed: pip install 'dataerai-transfer[desktop]'"
            _log.warning("desktop notifications are off", reason=self._broken)
            return False
        try:
            await self._send(message)
        except Exception as exc:  # no session bus, no notification server: say so once, go on without
            self._broken = f"{type(exc).__name__}: {exc}"
            _log.warning("desktop notifications are off", reason=self._broken)
            return False
        return True
