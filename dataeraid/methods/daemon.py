"""``daemon.*``: is the daemon there, and what is it doing."""

from __future__ import annotations

import os
from typing import Any

from dataeraid import __version__
from dataeraid.errors import DataeraiError
from dataeraid.methods._call import Call
from dataeraid.observe.metrics import CONTENT_TYPE
from dataeraid.observe.service import Observer
from dataeraid.rpc import Methods

methods = Methods("daemon")


@methods.add("daemon.ping", "Is the daemon there? No parameters.", result="`{\"version\", \"pid\"}`.")
async def ping(call: Call) -> dict[str, Any]:
    return {"version": __version__, "pid": os.getpid()}


@methods.add("daemon.status", "Version, pid, the number of jobs in each state, the newest event id.",
             result="`{\"version\", \"pid\", \"jobs\": {state: count}, \"last_event_id\"}`.")
async def status(call: Call) -> dict[str, Any]:
    return {"version": __version__, "pid": os.getpid(), "jobs": await call.svc.jobs.counts(),
            "last_event_id": call.svc.bus.last_id}


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
