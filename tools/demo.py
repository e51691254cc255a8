"""`make demo`: the main job, end to end, on the embedded default.

Starts a repository server (SQLite and a data directory) and the transfer
daemon on private temporary paths, creates a user, a token and a project,
uploads a generated 512 MiB file with a live progress bar, kills the daemon
with SIGKILL in the middle, starts it again, lets the upload finish from its
last checkpoint, downloads the asset back, checks the SHA-256 and prints a
summary. Everything it started is stopped and its temporary directory removed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dataerai
from stack import Stack, make_file

MiB = 1024 * 1024


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while block := f.read(MiB):
            digest.update(block)
    return digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--chunk-mib", type=int, default=16)
    parser.add_argument("--kill-at", type=float, default=40.0, help="percent of the upload at which to SIGKILL")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    size = args.size_mib * MiB

    root = Path(tempfile.mkdtemp(prefix="dataerai-demo-"))
    os.chmod(root, 0o700)
    print(f"demo directory: {root}")
    with Stack(root, daemon_config={"progress_interval_s": 0.1}) as stack:
        url = stack.start_server()
        print(f"repository server: {url} (SQLite + {stack.server_dir})")
        token = stack.add_user("demo@example.org", scope="write")
        stack.login(token)
        daemon = stack.start_daemon()
        print(f"transfer daemon: pid {daemon.pid}, socket {stack.socket_path}")

        source = root / "instrument-run.bin"
        t0 = time.monotonic()
        make_file(source, size, seed=42)
        source_sha = sha256_file(source)
        print(f"generated {source.name}: {size / MiB:.0f} MiB in {time.monotonic() - t0:.1f} s, "
              f"sha256 {source_sha[:16]}…")

        with stack.client() as client:
            status = client.auth_status()
            print(f"logged in as {status.user_email}")
            project = client.create_project("Demo beamline", description="make demo")
            print(f"project {project.project_id}")
            job = client.upload(source, title="Instrument run", owner_type="project", owner_id=project.project_id,
                                tags=["demo"], chunk_size_mb=args.chunk_mib, wait=False)
        print(f"upload job {job.job_id} queued")

        bar = tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc="upload", file=sys.stdout)
        killed_at: int | None = None
        upload_started = time.monotonic()

        def show(event: dataerai.ProgressEvent) -> None:
            nonlocal killed_at
            bar.n = event.bytes_done
            bar.refresh()
            if killed_at is None and event.percent >= args.kill_at:
                killed_at = event.bytes_done
                assert stack.daemon is not None
                stack.daemon.send_signal(signal.SIGKILL)

        with stack.client() as client:
            try:
                client.wait(job.job_id, on_progress=show, timeout_s=600)
            except dataerai.ConnectionError:
                pass
        if killed_at is None:
            print("the upload finished before the kill; nothing to resume")
        else:
            stack.stop_daemon(signal.SIGKILL)
            bar.write(f"SIGKILL sent to the daemon at {killed_at / MiB:.0f} MiB; starting it again")
            new_daemon = stack.start_daemon()
            bar.write(f"transfer daemon: pid {new_daemon.pid}, resuming from its checkpoints")
            with stack.client() as client:
                client.wait(job.job_id, on_progress=show, timeout_s=600)
        with stack.client() as client:
            done = client.get_job(job.job_id)
        upload_s = time.monotonic() - upload_started
        bar.n = size
        bar.close()
        if done.state != "completed":
            print(f"upload {done.state}: {done.error}")
            return 1

        # The server counts every body byte it read, cut-off bodies of the parts in
        # flight at the kill included: what went over the wire beyond the file itself.
        session = _session_stats(stack, job.job_id)
        resent = session["bytes_received"] - size
        parts_twice = sum(1 for p in session["parts"] if p["writes"] > 1)

        dest = root / "downloads"
        bar = tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc="download", file=sys.stdout)
        download_started = time.monotonic()

        def show_download(event: dataerai.ProgressEvent) -> None:
            bar.n = event.bytes_done
            bar.refresh()

        with stack.client() as client:
            result = client.download(done.asset_id, dest_dir=dest, on_progress=show_download)
        download_s = time.monotonic() - download_started
        bar.n = size
        bar.close()
        local = Path(result.files[0].local_path)
        local_sha = sha256_file(local)

        print()
        print("summary")
        print(f"  file             {source.name}, {size:,} bytes, sha256 {source_sha}")
        print(f"  asset            {done.asset_id} (content {done.content_id})")
        print(f"  upload           {size / 1e6 / upload_s:7.1f} MB/s over {upload_s:.2f} s, daemon killed once")
        print(f"  re-sent          {resent:,} bytes after the kill, counted by the server ({resent / MiB:.1f} MiB "
              f"of the parts in flight; at most 4 x {args.chunk_mib} MiB); parts stored twice: {parts_twice}")
        print(f"  download         {size / 1e6 / download_s:7.1f} MB/s over {download_s:.2f} s -> {local}")
        print(f"  sha256 match     {'yes' if local_sha == source_sha else 'NO'}")
        ok = local_sha == source_sha and result.files[0].size == size
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    print("stopped the server and the daemon" + ("" if args.keep else f"; removed {root}"))
    return 0 if ok else 1


def _session_stats(stack: Stack, job_id: str) -> dict[str, int]:
    with stack.client() as client:
        upload_id = client.call("job.get", {"job_id": job_id})["upload_id"]
    with stack.api() as api:
        response = api.get(f"/uploads/{upload_id}")
        response.raise_for_status()
        return dict(response.json())


if __name__ == "__main__":
    sys.exit(main())
