"""``daemon.*``: is the daemon there, what is it doing; reload its settings, stop it."""

from __future__ import annotations

import os
from typing import Any

from dataeraid import __version__
from dataeraid.control import ANSWER_GRACE_S, DaemonControl
from dataeraid.errors import DataeraiError
from dataeraid.methods._call import Call
from dataeraid.observe.metrics import CONTENT_TYPE
from dataeraid.observe.service import Observer
from dataeraid.rpc import Methods

methods = Methods("daemon")

#: What to run instead of ``daemon.stop`` for a daemon systemd runs: stopping the service alone
#: would leave the socket unit to start it again at the next connection.
SYSTEMD_STOP = "systemctl --user stop dataerai-transfer.socket dataerai-transfer.service"


@methods.add("daemon.ping", "Is the daemon there? No parameters.", result="`{\"version\", \"pid\"}`.")
async def ping(call: Call) -> dict[str, Any]:
    return {"version": __version__, "pid": os.getpid()}


@methods.add("daemon.status", "Version, pid, the number of jobs in each state, the newest event id, and the "
             "bandwidth limit in force.",
             result="`{\"version\", \"pid\", \"jobs\": {state: count}, \"last_event_id\", \"bandwidth\": "
                    "{\"upload_bps\", \"download_bps\", \"shared_bps\", \"bwlimit\", \"next_change\"}}`: bytes per "
                    "second, 0 for no limit; `shared_bps` is `bandwidth_limit_bps` (both directions together), "
                    "`bwlimit` the timetable as config.toml gives it (or null), `next_change` the local time "
                    "(`YYYY-MM-DDTHH:MM`, no zone) at which its limit changes next (or null).")
async def status(call: Call) -> dict[str, Any]:
    return {"version": __version__, "pid": os.getpid(), "jobs": await call.svc.jobs.counts(),
            "last_event_id": call.svc.bus.last_id, "bandwidth": _control(call).bandwidth()}


def _observer(call: Call) -> Observer:
    observer = call.svc.observer
    if observer is None:  # a daemon assembled without one (unit tests of other methods)
        raise DataeraiError("unavailable", "this daemon does not observe itself")
    return observer


@methods.add("daemon.metrics",
             "The daemon's metrics in Prometheus' text format (the same as its `metrics_listen` endpoint; "
             "docs/operations.md lists them). No parameters.",
             result="`{\"content_type\", \"text\"}`: the exposition, text format 0.0.4.")
async def metrics(call: Call) -> dict[str, Any]:
    return {"content_type": CONTENT_TYPE, "text": await _observer(call).exposition()}


@methods.add("daemon.health",
             "Ok, degraded or failing, with the reasons (the rules and thresholds are in docs/operations.md). "
             "No parameters.",
             result="`{\"status\", \"exit_status\", \"summary\", \"reasons\": [{\"status\", \"code\", \"text\"}]}`; "
                    "`summary` is one line, `exit_status` 0, 1 or 2.")
async def health(call: Call) -> dict[str, Any]:
    return (await _observer(call).health()).to_wire()


def _control(call: Call) -> DaemonControl:
    control = call.svc.control
    if control is None:  # a daemon assembled without one (unit tests of other methods)
        raise DataeraiError("unavailable", "this daemon has no controls")
    return control


@methods.add("daemon.reload", "Reads config.toml again and puts it in force (`dataerai daemon reload`, SIGHUP). "
             "A file the daemon would refuse at start is refused with the same message (`invalid_argument`; "
             "`io_error` for a `metrics_listen` it cannot listen on), and the settings in force stay, all of them. "
             "Which settings take effect at once, and which for jobs that start after: docs/configuration.md.",
             result="`{\"changed\": [key], \"restart_needed\": [key]}`: the keys whose values changed, and those "
                    "of them that take effect only when the daemon starts again (none today: the list is kept for "
                    "keys that may need it).",
             errors=("invalid_argument", "io_error"))
async def reload(call: Call) -> dict[str, Any]:
    return await _control(call).reload()


@methods.add("daemon.stop", "Stops the daemon as SIGTERM does: running jobs stop at a checkpoint and go on at the "
             "next start (`dataerai daemon stop`). Answers first, then stops. A daemon run by systemd refuses "
             f"with `conflict`: stop it with `{SYSTEMD_STOP}`.",
             result="`{\"pid\"}`: the process that stops.", errors=("conflict",))
async def stop(call: Call) -> dict[str, Any]:
    control = _control(call)
    if control.under_systemd:
        raise DataeraiError("conflict", f"this daemon (pid {os.getpid()}) runs under systemd, which would start "
                                        f"it again; stop it with `{SYSTEMD_STOP}`")
    control.request_stop("daemon.stop", ANSWER_GRACE_S)
    return {"pid": os.getpid()}
