"""``daemon.*``: is the daemon there, and what is it doing."""

from __future__ import annotations

import os
from typing import Any

from dataeraid import __version__
from dataeraid.methods._call import Call
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
