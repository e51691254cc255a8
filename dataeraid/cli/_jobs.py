"""``dataerai jobs``: look at a job and wait for it; the waiting the transfer commands share."""

from __future__ import annotations

import click
from dataerai import DataeraiClient, Job

from ._context import open_client
from ._errors import EXIT_INTERRUPTED, Failure
from ._output import as_dict, human, json_option, print_json
from ._progress import ProgressBar, wanted

TIMEOUT = click.FloatRange(min=0, min_open=True)


def wait_for_job(
    client: DataeraiClient, job_id: str, *, timeout_s: float | None, as_json: bool, description: str | None = None
) -> Job:
    """The job once it is completed, failed or cancelled, drawing a progress bar meanwhile.

    When ``timeout_s`` runs out the SDK raises ``DaemonTimeoutError`` naming the
    job (exit 4). On Ctrl-C this stops waiting, says how to wait again and exits
    130. The job goes on in the daemon either way.
    """
    with ProgressBar(enabled=wanted(as_json=as_json), description=description) as bar:
        try:
            return client.wait(job_id, timeout_s=timeout_s, on_progress=bar.callback)
        except KeyboardInterrupt:
            bar.close()
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
        else:
            lines.append(f"{key}: {human(value)}")
    return lines


@click.group()
def jobs() -> None:
    """Look at transfer jobs and wait for them."""


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
    if as_json:
        print_json(as_dict(job))
    else:
        click.echo("\n".join(describe_job(job)))


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
    if as_json:
        print_json(as_dict(job))
    else:
        click.echo("\n".join(describe_job(job)))
    check_succeeded(job)
