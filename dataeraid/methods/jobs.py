"""``job.*``: read, wait for and steer queued transfers."""

from __future__ import annotations

from typing import Any

import trio
from dataerai import contract

from dataeraid import log
from dataeraid.errors import DataeraiError, TransientError
from dataeraid.methods._call import Call
from dataeraid.rpc import Methods, Param
from dataeraid.rpc.params import Choice, Id, Integer, ListOf, Number

methods = Methods("jobs")
_log = log.get("dataeraid.methods")

JOB_ID = Param("job_id", Id(("job",)), required=True)
#: The longest single ``job.wait``: a caller that wants longer waits again.
MAX_WAIT_S = 30 * 86400.0


@methods.add("job.get", "One job.", JOB_ID, result="the job.", errors=("not_found",))
async def job_get(call: Call, job_id: str) -> dict[str, Any]:
    return await call.svc.jobs.get(job_id)


@methods.add("job.list", "All jobs, or those in the given states, oldest first.",
             Param("states", ListOf(Choice(contract.JOB_STATES), len(contract.JOB_STATES)), "only these states"),
             result="`{\"jobs\": [job, …]}`.", heavy=True)
async def job_list(call: Call, states: list[str] | None) -> dict[str, Any]:
    return {"jobs": await call.svc.jobs.list_all(states)}


@methods.add("job.wait",
             "Waits until the job is `completed`, `failed` or `cancelled` and answers with it (a failed job is "
             "a result, not an error). Cancelled when the client hangs up; the job goes on.",
             JOB_ID, Param("timeout_s", Number(0, MAX_WAIT_S), "give up waiting after this many seconds"),
             result="the job.", errors=("not_found", "timeout"), waits=True)
async def job_wait(call: Call, job_id: str, timeout_s: float | None) -> dict[str, Any]:
    svc = call.svc
    subscription = await svc.bus.subscribe(jobs=[job_id])
    try:
        job = await svc.jobs.get(job_id)
        with trio.move_on_after(timeout_s if timeout_s is not None else float("inf")):
            while job["state"] not in contract.TERMINAL_JOB_STATES:
                async for event in subscription:
                    if event["type"] == "job.state":
                        job = event["job"]
                        break
                    if event["type"] == "gap":
                        job = await svc.jobs.get(job_id)
                        break
            await svc.jobs.acknowledge(job_id)  # the answer tells the client the job ended
            return job
        raise DataeraiError("timeout", f"job {job_id} is still {job['state']}; it goes on in the daemon",
                            job_id=job_id)
    finally:
        subscription.close()


@methods.add("job.cancel",
             "Cancels a job; a running one stops at once, and its upload session on the repository is dropped.",
             JOB_ID, result="the job (`cancelled`, with `error.code` `cancelled`).",
             errors=("not_found", "conflict"))
async def job_cancel(call: Call, job_id: str) -> dict[str, Any]:
    svc = call.svc
    job = await svc.jobs.transition(job_id, "cancelled", fields={
        "error_code": "cancelled", "error_message": "cancelled by request"})
    svc.scheduler.stop(job_id)
    if job["upload_id"]:
        # The parts sent so far are of no use to anyone: let the repository drop them.
        with trio.move_on_after(10):
            try:
                await svc.remote.abort_upload(job["upload_id"])
            except (DataeraiError, TransientError) as exc:
                _log.info("could not abort the upload session", job_id=job_id, error=str(exc))
    return job


@methods.add("job.pause", "Holds a queued or running job (`paused`); a running one stops at once and keeps its "
             "checkpoints.", JOB_ID, result="the job.", errors=("not_found", "conflict"))
async def job_pause(call: Call, job_id: str) -> dict[str, Any]:
    job = await call.svc.jobs.transition(job_id, "paused")
    call.svc.scheduler.stop(job_id)
    return job


@methods.add("job.resume", "Queues a paused job again.", JOB_ID, result="the job (`queued`).",
             errors=("not_found", "conflict"))
async def job_resume(call: Call, job_id: str) -> dict[str, Any]:
    return await call.svc.jobs.transition(job_id, "queued", only_from=("paused",))


@methods.add("job.retry", "Queues a `failed` or `cancelled` job again, resuming from its checkpoints.", JOB_ID,
             result="the job (`queued`).", errors=("not_found", "conflict"))
async def job_retry(call: Call, job_id: str) -> dict[str, Any]:
    # A cancelled upload's repository session was aborted; the engine sees that and starts a new one.
    return await call.svc.jobs.transition(job_id, "queued", only_from=("failed", "cancelled"))


@methods.add("job.set_priority",
             "Changes a job's priority. Any job that has not ended may change; a running one keeps running "
             "(priorities order the queue, they do not preempt). Emits a durable `job.priority` event.",
             JOB_ID,
             Param("priority", Integer(contract.MIN_PRIORITY, contract.MAX_PRIORITY), "higher starts first",
                   required=True),
             result="the job.", errors=("not_found", "conflict"))
async def job_set_priority(call: Call, job_id: str, priority: int) -> dict[str, Any]:
    return await call.svc.jobs.set_priority(job_id, priority)
