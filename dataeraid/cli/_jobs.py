"""``dataerai jobs``: look at a job and wait for it; the waiting the transfer commands share."""

from __future__ import annotations

import click
from dataerai import DataeraiClient, Job
from dataerai.contract import JOB_STATES

from ._context import open_client
from ._errors import EXIT_INTERRUPTED, Failure
from ._output import as_dict, emit, human, json_option, print_json
from ._progress import JobWatch, why_it_waits

TIMEOUT = click.FloatRange(min=0, min_open=True)


def wait_for_job(
    client: DataeraiClient, job_id: str, *, timeout_s: float | None, as_json: bool, description: str | None = None
) -> Job:
    """The job once it is completed, failed or cancelled, drawing a progress bar meanwhile
    and saying on stderr whenever the job waits, why, and when it goes on (``JobWatch``).

    When ``timeout_s`` runs out the SDK raises ``DaemonTimeoutError`` naming the
    job, its state and why it waits (exit 4). On Ctrl-C this stops waiting, says how to wait again and exits
    130. The job goes on in the daemon either way.
    """
    with JobWatch(as_json=as_json, description=description) as watch:
        try:
            return client.wait(job_id, timeout_s=timeout_s, on_progress=watch.on_progress, on_state=watch.on_state)
        except KeyboardInterrupt:
            watch.close()
            click.echo(f"stopped waiting; job {job_id} goes on in the daemon: `dataerai jobs wait {job_id}`", err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None


def check_succeeded(job: Job) -> None:
    """Raise the job's own error when it failed or was cancelled."""
    if job.state == "cancelled":
        raise Failure("cancelled", f"job {job.job_id} was cancelled", job_id=job.job_id)
    if job.state != "completed":
        code, message = (job.error.code, job.error.message) if job.error else ("internal", "")
        raise Failure(code, message or f"job {job.job_id} {job.state}", job_id=job.job_id)


def describe_job(job: Job) -> list[str]:
    """A job as ``key: value`` lines, leaving out what is unset."""
    lines: list[str] = []
    for key, value in as_dict(job).items():
        if value is None or value == [] or value == {}:
            continue
        if key == "files":
            lines.extend(f"file: {f['local_path']} ({f['size']} bytes)" for f in value)
        elif key == "error":
            lines.append(f"error: [{value['code']}] {value['message']}")
        elif key == "waiting":
            lines.append(f"waiting: {why_it_waits(job)}")
        else:
            lines.append(f"{key}: {human(value)}")
    return lines


STATE_CHOICE = click.Choice(list(JOB_STATES))


@click.group()
def jobs() -> None:
    """List, inspect, steer and wait for transfer jobs."""


@jobs.command("ls")
@click.option("--state", "states", multiple=True, type=STATE_CHOICE, help="Only jobs in this state; repeatable.")
@json_option
@click.pass_context
def ls(ctx: click.Context, states: tuple[str, ...], as_json: bool) -> None:
    """List the daemon's jobs, oldest first: one line each with id, kind, state, priority, progress and name.

    With --json: {"jobs": [JOB, ...]}.
    """
    with open_client(ctx) as client:
        found = client.list_jobs(states or None)
    if as_json:
        print_json({"jobs": [as_dict(job) for job in found]})
        return
    for job in found:
        name = job.file_name or job.asset_id or ""
        total = f"{job.bytes_done}/{job.bytes_total}" if job.bytes_total else str(job.bytes_done)
        click.echo(f"{job.job_id}  {job.kind:<8}  {job.state:<19}  p{job.priority:<3}  {total:>21}  {name}")


#: The commands that steer one job, each the SDK method of its name, with their help.
_STEERING = {
    "pause": "Hold the queued or running job JOB_ID; it keeps its checkpoints (`jobs resume` goes on).",
    "resume": "Queue the paused job JOB_ID again.",
    "cancel": "Cancel the job JOB_ID; a running one stops at once (`jobs retry` starts it again).",
    "retry": "Queue the failed or cancelled job JOB_ID again, from its checkpoints.",
}


def _steering_command(act: str, help_text: str) -> None:
    @jobs.command(act, help=help_text)
    @click.argument("job_id")
    @json_option
    @click.pass_context
    def steer(ctx: click.Context, job_id: str, as_json: bool) -> None:
        with open_client(ctx) as client:
            job: Job = getattr(client, act)(job_id)
        emit(job, as_json, f"{job.job_id}: {job.state}")


for _act, _help in _STEERING.items():
    _steering_command(_act, _help)


@jobs.command("priority")
@click.argument("job_id")
@click.argument("priority", type=click.IntRange(-(2**31), 2**31 - 1))
@json_option
@click.pass_context
def priority(ctx: click.Context, job_id: str, priority: int, as_json: bool) -> None:
    """Set the priority of JOB_ID to PRIORITY (higher starts first; a running job is not stopped).

    A negative PRIORITY needs `--` before it: `dataerai jobs priority JOB -- -5`.
    """
    with open_client(ctx) as client:
        job = client.set_priority(job_id, priority)
    emit(job, as_json, f"{job.job_id}: priority {job.priority}")


@jobs.command("show")
@click.argument("job_id")
@json_option
@click.pass_context
def show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Show the job JOB_ID: its state, progress and result.

    Prints one `key: value` line per field that is set; with --json the job object.
    """
    with open_client(ctx) as client:
        job = client.get_job(job_id)
    emit(job, as_json, "\n".join(describe_job(job)))


@jobs.command("wait")
@click.argument("job_id")
@click.option("--timeout", type=TIMEOUT, metavar="S", help="Give up after S seconds (exit 4); the job goes on.")
@json_option
@click.pass_context
def wait(ctx: click.Context, job_id: str, timeout: float | None, as_json: bool) -> None:
    """Wait until the job JOB_ID is completed, failed or cancelled, then show it.

    Exits 0 when it completed, 1 (with the job's error) when it failed or was
    cancelled, 4 when --timeout ran out first.
    """
    with open_client(ctx) as client:
        job = wait_for_job(client, job_id, timeout_s=timeout, as_json=as_json)
    emit(job, as_json, "\n".join(describe_job(job)))
    check_succeeded(job)
