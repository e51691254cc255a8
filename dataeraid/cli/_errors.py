"""What a failed command prints and how it exits.

Exit status (docs/cli.md has the same list for users):

- 0: success;
- 1: an error with a stable code: from the daemon (``DaemonError``), from the
  repository during ``auth login``, the error of a failed or cancelled job, or
  one a command found itself (``service install``'s ``systemd_unavailable``, ...);
- 2: a usage error (click's own);
- 3: the daemon cannot be reached (``dataerai.ConnectionError``);
- 4: a timeout (``DaemonTimeoutError``); when a wait for a job ran out, the
  message names the job, which goes on in the daemon, its state and why it waits;
- 130: interrupted (Ctrl-C) while waiting for a job, which goes on.

SDK exceptions are turned into a ``Failure`` at one place, ``failure_from``;
commands raise ``Failure`` for what they find themselves.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import click
from dataerai import ConnectionError as DaemonConnectionError
from dataerai import DaemonError, DaemonTimeoutError, Job

from ._progress import describe_wait

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_TIMEOUT = 4
EXIT_INTERRUPTED = 130


class Failure(Exception):
    """A command failed: ``code`` is a stable string code from the error catalogue."""

    def __init__(self, code: str, message: str, exit_code: int = EXIT_ERROR, job_id: str | None = None,
                 extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.exit_code = exit_code
        self.job_id = job_id
        #: More fields for the JSON form of the error (a timed-out job's ``state`` and ``waiting``).
        self.extra = dict(extra or {})

    def __str__(self) -> str:
        return f"error[{self.code}]: {self.message}"


def timeout_failure(job_id: str, data: Mapping[str, Any] | None = None) -> Failure:
    """A wait for ``job_id`` ran out; the job itself goes on in the daemon.

    ``data`` is the SDK's timeout data: the job's ``state`` when the wait ended,
    why it waits (``waiting``) and its last ``error``, which the message names.
    """
    why, extra = "", {}
    if data is not None and isinstance(data.get("state"), str):
        job = Job.from_wire({"job_id": job_id, "state": data["state"], "waiting": data.get("waiting"),
                             "error": data.get("error")})
        why = f": it is {describe_wait(job)}"
        if job.waiting is None and job.error is not None:
            why += f", last error: [{job.error.code}] {job.error.message}"
        extra = {"state": job.state, "waiting": data.get("waiting")}
    return Failure(
        "timeout",
        f"job {job_id} did not finish in time{why}; it goes on in the daemon: `dataerai jobs wait {job_id}`",
        EXIT_TIMEOUT,
        job_id=job_id,
        extra=extra,
    )


def _job_id_of(exc: DaemonError) -> str | None:
    """The job an error is about: a timed-out wait's ``transfer_id``, else the daemon's ``data.job_id``."""
    job_id = getattr(exc, "transfer_id", None) or exc.data.get("job_id")
    return job_id if isinstance(job_id, str) and job_id else None


def failure_from(exc: DaemonError | DaemonConnectionError, *, socket: str, note: str = "") -> Failure:
    """The ``Failure`` an SDK exception stands for.

    When the daemon is simply not running, the message names ``socket``, says how
    to start it and adds ``note`` (why it was not started from here).
    """
    if isinstance(exc, DaemonTimeoutError):
        job_id = _job_id_of(exc)
        return timeout_failure(job_id, exc.data) if job_id else Failure("timeout", exc.message, EXIT_TIMEOUT)
    if isinstance(exc, DaemonConnectionError):
        if isinstance(exc.__cause__, (FileNotFoundError, ConnectionRefusedError)):
            message = (
                f"the dataerai daemon is not running at {socket}; start it with `dataerai daemon run`"
                " or `systemctl --user start dataerai-transfer.socket`" + (f" ({note})" if note else "")
            )
        else:  # it broke, or it was started and failed: the SDK's message says which
            message = str(exc)
        return Failure("unavailable", message, EXIT_UNREACHABLE)
    return Failure(exc.code, exc.message, EXIT_ERROR, job_id=_job_id_of(exc))


def report(failure: Failure, *, as_json: bool) -> None:
    """Print the failure on stderr: a line ``error[CODE]: message``, or one JSON object."""
    if as_json:
        body: dict[str, Any] = {"code": failure.code, "message": failure.message}
        if failure.job_id:
            body["job_id"] = failure.job_id
        body.update(failure.extra)
        click.echo(json.dumps({"error": body}), err=True)
    else:
        click.echo(str(failure), err=True)
