"""``events.*``: the daemon's event stream, replayed from the store and followed live."""

from __future__ import annotations

from typing import Any

import trio
from dataerai import contract
from dataerai.protocol import encode_notification

from dataeraid.methods._call import Call
from dataeraid.rpc import Methods, Param
from dataeraid.rpc.params import Choice, Id, Integer, ListOf

methods = Methods("events")

#: The most jobs one filter may name.
MAX_JOB_FILTER = 1000
#: The most stored events one ``events.list`` page holds (each carries its job).
MAX_EVENTS_PAGE = 10_000

SINCE = Integer(0, contract.MAX_JSON_INT)
JOBS = Param("jobs", ListOf(Id(("job",)), MAX_JOB_FILTER), "only events of these jobs")
TYPES = Param("types", ListOf(Choice(contract.EVENT_TYPES), len(contract.EVENT_TYPES)),
              "only events of these types (`gap` always comes)")


@methods.add("events.list",
             "The stored (durable) events after `since`, oldest first: `job.state`, `job.priority` and "
             "`auth.reloaded` (progress is not stored). Page on with `since` = the last id returned.",
             Param("since", SINCE, "an event id", default=0), JOBS, TYPES,
             Param("limit", Integer(1, MAX_EVENTS_PAGE), "the most events", default=1000),
             result="`{\"events\": [event, …], \"last_event_id\"}`.", heavy=True)
async def events_list(call: Call, since: int, jobs: list[str] | None, types: list[str] | None,
                      limit: int) -> dict[str, Any]:
    bus = call.svc.bus
    last = bus.last_id
    events = await bus.store.events_since(since, jobs, limit=limit, types=types)
    return {"events": events, "last_event_id": last}


@methods.add("events.subscribe",
             "Starts `event` notifications on this connection (a second subscribe replaces the first); with "
             "`since`, the stored events after it come first.",
             Param("since", SINCE, "an event id"), JOBS, TYPES,
             result="`{\"last_event_id\"}`, the newest id at the time.")
async def events_subscribe(call: Call, since: int | None, jobs: list[str] | None,
                           types: list[str] | None) -> dict[str, Any]:
    conn = call.conn
    if conn.subscription_scope is not None:
        conn.subscription_scope.cancel()
        conn.subscription_scope = None
    last = call.svc.bus.last_id
    if conn.hung_up:
        return {"last_event_id": last}  # nobody is left to stream to
    subscription = await call.svc.bus.subscribe(since=since, jobs=jobs, types=types)
    scope = conn.subscription_scope = trio.CancelScope()

    async def pump() -> None:
        with scope:
            try:
                async for event in subscription:
                    await conn.send(encode_notification("event", event))
                    if event["type"] == "job.state" and event.get("state") in contract.TERMINAL_JOB_STATES:
                        # The client was told the job ended (the SDK waits so): pruning may count from now.
                        await call.svc.jobs.acknowledge(event["job_id"])
            finally:
                subscription.close()

    if not conn.start_waiting("events.subscribe", pump):
        subscription.close()
    return {"last_event_id": last}


@methods.add("events.unsubscribe", "Stops the notifications on this connection. No parameters.", result="`{}`.")
async def events_unsubscribe(call: Call) -> dict[str, Any]:
    conn = call.conn
    if conn.subscription_scope is not None:
        conn.subscription_scope.cancel()
        conn.subscription_scope = None
    return {}
