"""Every metric the daemon exposes: the one definition of its name, type, labels and meaning.

docs/operations.md lists them in a table that ``tests/daemon/observe/test_catalogue.py``
checks against :data:`METRICS`, and a scrape never shows a ``dataerai_`` family that is
not here. Counters (``kind == "counter"``) are kept in the queue database
(``tally.Tally``), so they go on across restarts; gauges are read from the daemon's
state at each scrape. The ``process_*`` families are prometheus_client's own process
collector (from ``/proc/self``), listed here so that they are documented too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Kind = Literal["counter", "gauge"]


@dataclass(frozen=True)
class Metric:
    #: The family's name; a counter's samples carry ``_total`` after it.
    name: str
    kind: Kind
    labels: tuple[str, ...]
    help: str

    @property
    def sample(self) -> str:
        """The name its samples have in the exposition."""
        return self.name + "_total" if self.kind == "counter" else self.name


TRANSFER_BYTES: Final = Metric(
    "dataerai_transfer_bytes", "counter", ("direction",),
    "Bytes sent (upload) or received (download) on the wire, retries included.")
TRANSFER_FILES: Final = Metric(
    "dataerai_transfer_files", "counter", ("direction",),
    "Files in jobs that completed (a directory counts its files; a deduplicated upload counts too).")
JOBS_FINISHED: Final = Metric(
    "dataerai_jobs_finished", "counter", ("kind", "state"),
    "Jobs that ended, by kind and end state (completed, failed, cancelled).")
JOB_ERRORS: Final = Metric(
    "dataerai_job_errors", "counter", ("code",),
    "Jobs that failed, by error code (docs/protocol.md lists the codes).")
RETRIES: Final = Metric(
    "dataerai_retries", "counter", ("kind", "code"),
    "Attempts that met a transient error and were retried after a backoff, by job kind and code.")
ALERTS: Final = Metric(
    "dataerai_alerts", "counter", ("kind", "outcome"),
    "Alerts by kind and outcome: sent, failed (the hook exited non-zero or timed out), "
    "deduplicated or suppressed (over alert_max_per_hour).")
JOBS: Final = Metric(
    "dataerai_jobs", "gauge", ("state",),
    "Jobs in the queue database now, by state (every state, zeros included).")
WATCH_LAG: Final = Metric(
    "dataerai_watch_lag_seconds", "gauge", ("watch_id",),
    "Seconds since the oldest file of the watch that is not in the repository yet was seen; 0 when none waits.")
WATCH_QUARANTINED: Final = Metric(
    "dataerai_watch_quarantined_files", "gauge", ("watch_id",),
    "Files of the watch that kept failing and wait for a change or `dataerai watch rescan`.")
WATCH_STATE: Final = Metric(
    "dataerai_watch_state", "gauge", ("watch_id", "state"),
    "1 for the watch's current state (active, paused, unavailable), 0 for the others.")
BANDWIDTH_LIMIT: Final = Metric(
    "dataerai_bandwidth_limit_bytes_per_second", "gauge", ("direction",),
    "The bandwidth limit in force now on uploads and on downloads (`bwlimit`, which may change by its "
    "timetable; `bandwidth_limit_bps` shows on both, shared between them); 0 is no limit.")
AUTH_EXPIRY: Final = Metric(
    "dataerai_auth_expiry_timestamp_seconds", "gauge", (),
    "When the token expires (Unix time), as the repository last said; +Inf for a token that never "
    "expires; absent while not logged in or not known yet.")
AUTH_LOGGED_IN: Final = Metric(
    "dataerai_auth_logged_in", "gauge", (),
    "1 when the daemon has credentials, else 0.")
REPOSITORY_UP: Final = Metric(
    "dataerai_repository_reachable", "gauge", (),
    "1 when the last check of the token reached the repository, 0 when it could not; absent before the first.")
HEALTH: Final = Metric(
    "dataerai_health_status", "gauge", (),
    "What `dataerai daemon health` says now: 0 ok, 1 degraded, 2 failing.")
BUILD_INFO: Final = Metric(
    "dataerai_build_info", "gauge", ("version",),
    "Always 1; the daemon's version in a label.")

#: The families prometheus_client's process collector adds (Linux, from /proc/self).
PROCESS: Final[tuple[Metric, ...]] = (
    Metric("process_resident_memory_bytes", "gauge", (), "The daemon's resident memory (RSS) in bytes."),
    Metric("process_virtual_memory_bytes", "gauge", (), "The daemon's virtual memory in bytes."),
    Metric("process_open_fds", "gauge", (), "The daemon's open file descriptors."),
    Metric("process_max_fds", "gauge", (), "The most descriptors the daemon may open (its RLIMIT_NOFILE)."),
    Metric("process_cpu_seconds", "counter", (), "CPU time the daemon used, user and system (since it started)."),
    Metric("process_start_time_seconds", "gauge", (), "When the daemon started (Unix time)."),
)

METRICS: Final[tuple[Metric, ...]] = (
    TRANSFER_BYTES, TRANSFER_FILES, JOBS_FINISHED, JOB_ERRORS, RETRIES, ALERTS,
    JOBS, WATCH_LAG, WATCH_QUARANTINED, WATCH_STATE, BANDWIDTH_LIMIT, AUTH_EXPIRY, AUTH_LOGGED_IN,
    REPOSITORY_UP, HEALTH, BUILD_INFO, *PROCESS,
)
COUNTERS: Final[tuple[Metric, ...]] = tuple(m for m in METRICS if m.kind == "counter" and m not in PROCESS)


def markdown_table() -> str:
    """The table docs/operations.md holds (a test compares them)."""
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for m in METRICS:
        labels = ", ".join(f"`{label}`" for label in m.labels) or "none"
        rows.append(f"| `{m.sample}` | {m.kind} | {labels} | {m.help} |")
    return "\n".join(rows)
