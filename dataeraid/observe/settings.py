"""The defaults and bounds of the observing keys of ``config.toml`` (docs/configuration.md).

Imported by ``dataeraid.config``, so it imports nothing of the daemon.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any, Final

#: What can raise an alert (``alert_on``); docs/operations.md says what each means and what to do.
ALERT_KINDS: Final[tuple[str, ...]] = (
    "job.failed", "file.quarantined", "watch.paused", "watch.unavailable", "auth.expiring", "disk.low",
)
#: Days before the token expires at which ``auth.expiring`` is emitted, once each.
AUTH_WARN_DAYS: Final[tuple[float, ...]] = (14.0, 7.0, 1.0)


@dataclass(frozen=True)
class HealthDefaults:
    watch_lag_s: float = 3600.0
    watch_lag_failing_s: float = 86400.0
    quarantined_files: int = 1
    failed_jobs: int = 1
    failed_window_s: float = 86400.0
    auth_expiry_days: float = 7.0
    min_free_bytes: int = 1 << 30
    unreachable_s: float = 3600.0


HEALTH_DEFAULTS: Final = HealthDefaults()


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as (host, port); ValueError if it is not a loopback address.

    Loopback only, with no way around it: the endpoint has no authentication and no
    TLS, and a daemon that runs as the user whose data it moves should not open a
    port to the lab's network by one mistyped address. A central Prometheus reads
    `dataerai metrics` through node_exporter's textfile collector, or a proxy that
    authenticates (docs/operations.md).
    """
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"must be HOST:PORT, such as 127.0.0.1:9464, not {value!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"has port {port}, not between 1 and 65535")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if bare == "localhost":
        return "127.0.0.1", port
    try:
        address = ip_address(bare)
    except ValueError:
        raise ValueError(f"must name a loopback address (127.0.0.1, [::1]), not {host!r}") from None
    if not address.is_loopback:
        raise ValueError(f"must be a loopback address (127.0.0.1, [::1]): {host} would open the "
                         "unauthenticated endpoint to the network; see docs/operations.md for remote scraping")
    return bare, port


def _listen_ok(value: str) -> bool:
    if value == "":
        return True
    try:
        parse_listen(value)
    except ValueError:
        return False
    return True


def _days_ok(value: tuple[float, ...]) -> bool:
    return all(v > 0 for v in value) and len(value) <= 10


#: Checks merged into ``config._BOUNDS``.
OBSERVE_BOUNDS: Final[dict[str, tuple[Callable[[Any], bool], str]]] = {
    "metrics_listen": (_listen_ok, "empty (off) or a loopback HOST:PORT such as 127.0.0.1:9464"),
    "health_watch_lag_s": (lambda v: v > 0, "more than 0"),
    "health_watch_lag_failing_s": (lambda v: v > 0, "more than 0"),
    "health_quarantined_files": (lambda v: v >= 0, "0 (off) or more"),
    "health_failed_jobs": (lambda v: v >= 0, "0 (off) or more"),
    "health_failed_window_s": (lambda v: v > 0, "more than 0"),
    "health_auth_expiry_days": (lambda v: v >= 0, "0 (off) or more"),
    "health_min_free_bytes": (lambda v: v >= 0, "0 (off) or more"),
    "health_unreachable_s": (lambda v: v > 0, "more than 0"),
    "auth_warn_days": (_days_ok, "at most 10 numbers of days, each more than 0"),
    "alert_command": (lambda v: len(v) == 0 or (v[0].startswith("/") and all("\x00" not in a for a in v)),
                      "empty (off), or an absolute program path and its arguments"),
    "alert_on": (lambda v: set(v) <= set(ALERT_KINDS), f"a list of {', '.join(ALERT_KINDS)}"),
    "alert_dedup_s": (lambda v: v >= 0, "0 or more"),
    "alert_max_per_hour": (lambda v: v >= 1, "at least 1"),
    "alert_timeout_s": (lambda v: v > 0, "more than 0"),
}
