"""``dataerai upload`` and ``dataerai download``.

Both queue a job in the daemon and then, unless ``--no-wait``, wait for it with
a progress bar. The job is durably queued before the wait begins, so a wait that
times out or is interrupted leaves it running and says how to pick it up again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TextIO

import click
from dataerai import DaemonError, Job
from dataerai.contract import MAX_START_MANY_ITEMS

from ._context import open_client
from ._errors import Failure
from ._jobs import TIMEOUT, check_succeeded, wait_for_job
from ._output import emit, json_option, print_json

_TIMEOUT_HELP = "Stop waiting after S seconds (exit 4); the job goes on. [default: wait until it ends]"


_WINDOW_HELP = ("Move bytes only inside this transfer window, in the daemon's local time: 20:00-06:00, "
                "'Mon-Fri 20:00-06:00,Sat-Sun 00:00-24:00'. Outside it the job is scheduled (docs/job-states.md).")


def _print_queued(job: Job, *, as_json: bool) -> None:
    emit(job, as_json, job.job_id)


@click.command()
@click.argument("paths", metavar="PATH...", nargs=-1, type=click.Path(exists=True, readable=True, path_type=Path))
@click.option(
    "--from-file",
    "from_file",
    type=click.File("r", encoding="utf-8"),
    metavar="LIST",
    help="Also upload the paths listed in LIST, one a line (`-`: standard input; blank lines are skipped).",
)
@click.option("--project", "project_id", metavar="ID", help="The project that will own the asset.")
@click.option("--collection", "collection_id", metavar="ID", help="The collection that will own the asset.")
@click.option(
    "--asset",
    "asset_id",
    metavar="ID",
    help="Upload a new version of this asset instead of making a new one (then --project/--collection, if "
    "given, must be its owner).",
)
@click.option(
    "--path",
    "asset_path",
    metavar="REL",
    help="The asset's repository path (relative, `/`-separated); with --asset it moves the asset. "
    "[default: the file or directory name; with --asset, unchanged]",
)
@click.option("--title", metavar="T", help="The new asset's title. [default: the file name]")
@click.option("--tag", "tags", multiple=True, metavar="X", help="A tag for the new asset; repeat for several.")
@click.option("--description", metavar="D", help="A description of the new asset.")
@click.option(
    "--chunk-size-mb",
    type=click.IntRange(1, 5120),
    metavar="N",
    help="Send the file in parts of N MiB. [default: the daemon's, 64]",
)
@click.option("--window", metavar="WINDOW", help=_WINDOW_HELP)
@click.option("--no-wait", is_flag=True, help="Print the job id as soon as the upload is queued.")
@click.option("--timeout", type=TIMEOUT, metavar="S", help=_TIMEOUT_HELP)
@json_option
@click.pass_context
def upload(
    ctx: click.Context,
    paths: tuple[Path, ...],
    from_file: TextIO | None,
    project_id: str | None,
    collection_id: str | None,
    asset_id: str | None,
    asset_path: str | None,
    title: str | None,
    tags: tuple[str, ...],
    description: str | None,
    chunk_size_mb: int | None,
    window: str | None,
    no_wait: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Upload the file or directory PATH as a new asset of a project (or a collection),
    or with --asset as a new version of an existing asset.

    A directory becomes one asset holding its regular files with their relative
    paths (symlinks and special files are skipped). A new version keeps the
    asset's title, tags and description (`dataerai meta set` changes them).

    Prints the asset id and content id once the upload completed (with --json:
    {"job_id", "asset_id", "content_id", "size", "sha256", "deduplicated"}); with --no-wait the
    job id (with --json: the job object).

    Several PATHs (or --from-file) make one new asset each, titled by its file name,
    queued in calls of up to 1000 (upload.start_many: each call all or nothing; an
    error says how many were queued before it). They print one line per upload:
    `PATH ASSET_ID CONTENT_ID` (with --json, one object a line, with "local_path"
    too); with --no-wait one job id a line (with --json: one job object a line).
    """
    listed = [Path(line.strip()) for line in from_file if line.strip()] if from_file is not None else []
    if from_file is not None or len(paths) > 1:
        _upload_many(ctx, [*paths, *listed], project_id=project_id, collection_id=collection_id,
                     asset_id=asset_id, asset_path=asset_path, title=title, tags=tags, description=description,
                     chunk_size_mb=chunk_size_mb, window=window, no_wait=no_wait, timeout=timeout, as_json=as_json)
        return
    if not paths:
        raise Failure("invalid_argument", "give a PATH to upload (or --from-file LIST)")
    path = paths[0]
    if project_id is not None and collection_id is not None:
        raise Failure("invalid_argument", "give one of --project and --collection, not both")
    if asset_id is None and project_id is None and collection_id is None:
        raise Failure("invalid_argument", "give --project or --collection (or --asset for a new version)")
    if asset_id is not None:
        # A new version keeps the asset's metadata: options that would be dropped are refused.
        given = [option for option, value in (("--title", title), ("--tag", tags), ("--description", description))
                 if value]
        if given:
            raise Failure("invalid_argument", f"{', '.join(given)} cannot go with --asset: a new version keeps "
                                              f"the asset's; change them with `dataerai meta set {asset_id}`")
    local = path.resolve()
    owner_id = project_id or collection_id
    with open_client(ctx) as client:
        job: Job = client.upload(
            str(local),
            title=(title or local.name) if asset_id is None else None,
            owner_type=None if owner_id is None else "project" if project_id else "collection",
            owner_id=owner_id,
            description=description,
            tags=list(tags) or None,
            asset_id=asset_id,
            path=asset_path,
            chunk_size_mb=chunk_size_mb,
            window=window,
            wait=False,
        )
        if no_wait:
            _print_queued(job, as_json=as_json)
            return
        done = wait_for_job(client, job.job_id, timeout_s=timeout, as_json=as_json, description=local.name)
    check_succeeded(done)
    if as_json:
        print_json(
            {
                "job_id": done.job_id,
                "asset_id": done.asset_id,
                "content_id": done.content_id,
                "size": done.bytes_total,
                "sha256": done.sha256,
                "deduplicated": done.deduplicated,
            }
        )
    else:
        click.echo(f"asset_id: {done.asset_id}\ncontent_id: {done.content_id}")
        if done.deduplicated:
            click.echo("deduplicated: the repository already held this content; no bytes were sent")


def _upload_many(ctx: click.Context, paths: list[Path], *, project_id: str | None, collection_id: str | None,
                 asset_id: str | None, asset_path: str | None, title: str | None, tags: tuple[str, ...],
                 description: str | None, chunk_size_mb: int | None, window: str | None, no_wait: bool,
                 timeout: float | None, as_json: bool) -> None:
    """Several new assets, queued through ``upload.start_many`` in calls of up to ``MAX_START_MANY_ITEMS``."""
    given = [option for option, value in (("--asset", asset_id), ("--path", asset_path), ("--title", title))
             if value]
    if given:
        raise Failure("invalid_argument", f"{', '.join(given)} names one asset: give one PATH with it")
    if project_id is not None and collection_id is not None:
        raise Failure("invalid_argument", "give one of --project and --collection, not both")
    owner_id = project_id or collection_id
    if owner_id is None:
        raise Failure("invalid_argument", "give --project or --collection")
    if not paths:
        raise Failure("invalid_argument", "no paths to upload: give PATHs or a --from-file LIST that names some")
    local = [p.resolve() for p in paths]
    missing = next((p for p in local if not p.exists()), None)
    if missing is not None:
        raise Failure("not_found", f"no such file: {missing}")
    items = [{"local_path": str(p), "title": p.name, "owner_type": "project" if project_id else "collection",
              "owner_id": owner_id, "description": description, "tags": list(tags) or None,
              "chunk_size_mb": chunk_size_mb, "window": window} for p in local]
    deadline = None if timeout is None else time.monotonic() + timeout
    jobs: list[Job] = []
    with open_client(ctx) as client:
        for start in range(0, len(items), MAX_START_MANY_ITEMS):
            try:
                queued = client.upload_many(items[start:start + MAX_START_MANY_ITEMS])
            except DaemonError as exc:
                index = exc.data.get("index")
                where = f" ({local[start + index]})" if isinstance(index, int) else ""
                raise Failure(exc.code, f"{exc.message}{where}; {len(jobs)} upload(s) queued before it, "
                                        f"none of the {len(items) - len(jobs)} from there on",
                              extra={"queued": [j.job_id for j in jobs]}) from None
            jobs.extend(queued)
            if no_wait:
                for job in queued:
                    _print_queued(job, as_json=as_json)
        if no_wait:
            return
        done = []
        for job, path in zip(jobs, local, strict=True):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done.append(wait_for_job(client, job.job_id, timeout_s=left, as_json=as_json, description=path.name))
    for job, path in zip(done, local, strict=True):
        if as_json:
            print_json({"local_path": str(path), "job_id": job.job_id, "asset_id": job.asset_id,
                        "content_id": job.content_id, "size": job.bytes_total, "sha256": job.sha256,
                        "deduplicated": job.deduplicated, "state": job.state})
        else:
            click.echo(f"{path} {job.asset_id or '-'} {job.content_id or '-'}" +
                       ("" if job.state == "completed" else f" {job.state}"))
    failed = [job for job in done if job.state != "completed"]
    if failed:
        check_succeeded(failed[0])


@click.command()
@click.argument("asset_id")
@click.option(
    "--dest",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    metavar="DIR",
    help="The directory to download into.",
)
@click.option("--content-id", metavar="ID", help="Download this content version. [default: the latest]")
@click.option("--overwrite", is_flag=True, help="Replace a different file already at the destination.")
@click.option("--window", metavar="WINDOW", help=_WINDOW_HELP)
@click.option("--no-wait", is_flag=True, help="Print the job id as soon as the download is queued.")
@click.option("--timeout", type=TIMEOUT, metavar="S", help=_TIMEOUT_HELP)
@json_option
@click.pass_context
def download(
    ctx: click.Context,
    asset_id: str,
    dest: Path,
    content_id: str | None,
    overwrite: bool,
    window: str | None,
    no_wait: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Download the content of the asset ASSET_ID into a directory.

    Prints each file's path and size once the download completed (with --json:
    {"job_id", "asset_id", "content_id", "files": [{"local_path", "size"}]});
    with --no-wait the job id (with --json: the job object).
    """
    dest_dir = dest.resolve()
    with open_client(ctx) as client:
        job: Job = client.download(asset_id, str(dest_dir), content_id=content_id, overwrite=overwrite,
                                   window=window, wait=False)
        if no_wait:
            _print_queued(job, as_json=as_json)
            return
        done = wait_for_job(client, job.job_id, timeout_s=timeout, as_json=as_json)
    check_succeeded(done)
    if as_json:
        print_json(
            {
                "job_id": done.job_id,
                "asset_id": done.asset_id or asset_id,
                "content_id": done.content_id,
                "files": [{"local_path": f.local_path, "size": f.size} for f in done.files],
            }
        )
    else:
        for f in done.files:
            click.echo(f"{f.local_path} ({f.size} bytes)")
