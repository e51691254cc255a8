"""`make bench`: the daemon beside its peers, same file, same run, interleaved.

Three sections (``--section``, repeatable; all of them by default):

- ``loopback``: the daemon beside curl on a server with the directory storage.
- ``s3``: the daemon on a server with S3 storage (SeaweedFS, parts straight to the
  store) beside ``rclone copy``, boto3's ``upload_file``/``download_file`` and
  ``s5cmd cp`` to the same store (``tools/bench_s3.py``), with every client's plain
  and fsynced download, CPU seconds per GB and peak RSS.
- ``small-files``: a directory of many small files through the daemon (one asset)
  beside ``rclone copy`` and ``s5cmd cp``, with each one's request count.

``--quick`` is a smoke run that proves every peer and every column works (one round,
64 MiB files, 200 small files); its figures are not for comparing.

Loopback upload: the daemon's `upload()` of a file (hashing, parallel parts, completion
with the server's whole-file check) beside `curl -T` sending the same bytes
in one PUT to a one-part upload session of the same server (the server still
hashes and verifies that part). Download: the daemon's `download()` (parallel
ranges, SHA-256 check, fsync, rename) beside `curl` reading the same content
URL into a file (and that file's fsync, as durable as the daemon's), and beside the
physical limit of a durable download: writing as many bytes from memory to a new
file and fsyncing it. Also the daemon's peak RSS (VmHWM) over the whole run.

Median of --runs runs, interleaved so all peers see the same machine state (on loopback,
the daemon and curl take turns going first, and every timed step starts after an
``os.sync()`` of what the steps before it wrote or deleted). ``--plot PNG``
draws the run (tools/bench_plot.py): the daemon over its best peer on every row, with
issue 14's targets marked.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo import sha256_file
from stack import Stack, make_file

MiB = 1024 * 1024


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle() -> None:
    """Write out everything the steps before left dirty (their files, their deletions), so
    that the next timed step does not pay for another's writeback."""
    os.sync()


def curl_upload(stack: Stack, api: Any, source: Path, project_id: str, size: int, sha: str) -> float:
    session = api.post("/uploads", json={
        "owner_type": "project", "owner_id": project_id, "title": "curl", "file_name": source.name,
        "size": size, "part_size": size, "sha256": sha, "idempotency_key": f"curl-{time.time_ns()}",
    })
    session.raise_for_status()
    upload_id = session.json()["upload_id"]
    target = api.post(f"/uploads/{upload_id}/parts/1/target", json={"sha256": sha, "size": size})
    target.raise_for_status()
    url = target.json()["url"]
    started = time.monotonic()
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-T", str(source), url],
                         capture_output=True, text=True, check=True)
    elapsed = time.monotonic() - started
    if out.stdout.strip() != "200":
        raise RuntimeError(f"curl PUT answered {out.stdout}: {out.stderr}")
    api.delete(f"/uploads/{upload_id}")
    return elapsed


def curl_download(api: Any, asset_id: str, dest: Path) -> tuple[float, float]:
    """Seconds for curl to write the content to a file, and until that file is also on disk (fsync)."""
    target = api.get(f"/assets/{asset_id}/download")
    target.raise_for_status()
    started = time.monotonic()
    subprocess.run(["curl", "-sS", "-f", "-o", str(dest), target.json()["url"]], check=True)
    written = time.monotonic() - started
    fd = os.open(dest, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    durable = time.monotonic() - started
    dest.unlink()
    return written, durable


def durable_write(dest: Path, size: int) -> float:
    """Seconds to write ``size`` bytes from memory into a new file and fsync it: the
    physical limit of any download that is on disk before it is reported done."""
    block = os.urandom(MiB)
    started = time.monotonic()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for offset in range(0, size, MiB):
            os.write(fd, block[: min(MiB, size - offset)])
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.monotonic() - started
    dest.unlink()
    return elapsed


def loopback_section(args: argparse.Namespace) -> dict[str, Any]:
    """The daemon beside curl on a server with the directory storage."""
    size = args.size_mib * MiB
    root = Path(tempfile.mkdtemp(prefix="dataerai-bench-"))
    results: dict[str, list[float]] = {"daemon_up": [], "curl_up": [], "daemon_down": [], "curl_down": [],
                                       "curl_down_fsync": [], "disk_write": []}
    # CPU seconds spent by the server (and the daemon) per operation: on one 2-core
    # machine both ends share the cores, so this says where the time goes.
    cpu: dict[str, list[float]] = {"daemon_up_daemon": [], "daemon_up_server": [], "curl_up_server": [],
                                   "daemon_down_daemon": [], "daemon_down_server": [], "curl_down_server": []}
    try:
        config = {"parts_per_job": args.parts_per_job} if args.parts_per_job else None
        with Stack(root, daemon_config=config) as stack:
            stack.start_server()
            stack.login(stack.add_user("bench@example.org"))
            daemon = stack.start_daemon()
            with stack.client() as client, stack.api() as api:
                project_id = client.create_project("bench").project_id
                asset_id = ""
                assert stack.server is not None
                server_pid = stack.server.pid
                for run in range(args.runs):
                    # New bytes every run: the repository must not already hold them, or the
                    # daemon would (rightly) deduplicate instead of sending them.
                    source = make_file(root / "bench.bin", size, seed=1000 + run)
                    sha = sha256_file(source)

                    # Who goes first alternates, so neither always meets the machine the other left.
                    for who in ("curl", "daemon") if run % 2 == 0 else ("daemon", "curl"):
                        settle()
                        s0, d0 = cpu_seconds(server_pid), cpu_seconds(daemon.pid)
                        if who == "curl":
                            results["curl_up"].append(curl_upload(stack, api, source, project_id, size, sha))
                            cpu["curl_up_server"].append(cpu_seconds(server_pid) - s0)
                            continue
                        started = time.monotonic()
                        up = client.upload(source, title=f"bench {run}", owner_type="project",
                                           owner_id=project_id, chunk_size_mb=args.chunk_mib)
                        results["daemon_up"].append(time.monotonic() - started)
                        cpu["daemon_up_server"].append(cpu_seconds(server_pid) - s0)
                        cpu["daemon_up_daemon"].append(cpu_seconds(daemon.pid) - d0)
                        asset_id = up.asset_id
                    settle()
                    s0 = cpu_seconds(server_pid)
                    written, durable = curl_download(api, asset_id, root / "curl.out")
                    cpu["curl_down_server"].append(cpu_seconds(server_pid) - s0)
                    results["curl_down"].append(written)
                    results["curl_down_fsync"].append(durable)
                    settle()
                    results["disk_write"].append(durable_write(root / "disk.out", size))
                    settle()
                    s0, d0 = cpu_seconds(server_pid), cpu_seconds(daemon.pid)
                    started = time.monotonic()
                    dl = client.download(asset_id, dest_dir=root / f"down{run}")
                    results["daemon_down"].append(time.monotonic() - started)
                    cpu["daemon_down_server"].append(cpu_seconds(server_pid) - s0)
                    cpu["daemon_down_daemon"].append(cpu_seconds(daemon.pid) - d0)
                    Path(dl.files[0].local_path).unlink()
            rss = peak_rss_mib(daemon.pid)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in results.items()}
    rate = {k: size / 1e6 / v for k, v in med.items()}
    return {
        "size_bytes": size, "chunk_bytes": args.chunk_mib * MiB, "runs": args.runs,
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "mb_per_s": {k: round(v, 1) for k, v in rate.items()},
        "upload_ratio_vs_curl": round(rate["daemon_up"] / rate["curl_up"], 2),
        "download_ratio_vs_curl": round(rate["daemon_down"] / rate["curl_down"], 2),
        "download_ratio_vs_curl_fsync": round(rate["daemon_down"] / rate["curl_down_fsync"], 2),
        "download_ratio_vs_disk": round(rate["daemon_down"] / rate["disk_write"], 2),
        "daemon_peak_rss_mib": round(rss, 1),
        "median_cpu_s": {k: round(statistics.median(v), 2) for k, v in cpu.items()},
        "cpus": os.cpu_count(),
    }


def print_loopback(report: dict[str, Any]) -> None:
    rate = report["mb_per_s"]
    print(f"{report['size_bytes'] / MiB:.0f} MiB file, {report['chunk_bytes'] // MiB} MiB parts, "
          f"median of {report['runs']} runs, loopback")
    print(f"  upload    daemon {rate['daemon_up']:7.1f} MB/s   curl -T {rate['curl_up']:7.1f} MB/s   "
          f"ratio {report['upload_ratio_vs_curl']}")
    print(f"  download  daemon {rate['daemon_down']:7.1f} MB/s   curl    {rate['curl_down']:7.1f} MB/s   "
          f"ratio {report['download_ratio_vs_curl']}")
    print(f"            curl + fsync, as durable as the daemon: {rate['curl_down_fsync']:7.1f} MB/s   "
          f"ratio {report['download_ratio_vs_curl_fsync']}")
    print(f"            the disk's durable write (same size, from memory, fsync): {rate['disk_write']:7.1f} MB/s   "
          f"ratio {report['download_ratio_vs_disk']}")
    print(f"  daemon peak RSS {report['daemon_peak_rss_mib']:.1f} MiB")
    c = report["median_cpu_s"]
    print(f"  CPU seconds, upload: daemon {c['daemon_up_daemon']} + server {c['daemon_up_server']}"
          f" (curl: server {c['curl_up_server']}); download: daemon {c['daemon_down_daemon']}"
          f" + server {c['daemon_down_server']} (curl: server {c['curl_down_server']})")


SECTIONS = ("loopback", "s3", "small-files")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", choices=SECTIONS, action="append",
                        help="run only this section (repeatable); default: all of them")
    parser.add_argument("--runs", type=int, default=3, help="runs per section; the median is reported")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plot", type=Path, metavar="PNG",
                        help="also draw the run: the daemon over its best peer, every row (tools/bench_plot.py)")
    loop = parser.add_argument_group("loopback: the daemon beside curl on the directory storage")
    loop.add_argument("--size-mib", type=int, default=1024)
    loop.add_argument("--chunk-mib", type=int, default=64)
    loop.add_argument("--parts-per-job", type=int, default=None, help="the daemon's parts_per_job setting")
    s3 = parser.add_argument_group("s3 and small-files: the daemon beside rclone, boto3 and s5cmd on SeaweedFS")
    s3.add_argument("--s3-size-mib", type=int, default=512)
    s3.add_argument("--s3-chunk-mib", type=int, default=16, help="part size of every peer (S3: at least 5)")
    s3.add_argument("--concurrency", type=int, default=4, help="parts or ranges in flight, every peer")
    s3.add_argument("--files", type=int, default=10_000, help="small-files: how many files")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 1 run, 64 MiB files, 200 small files (proves the peers work; not figures)")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.size_mib, args.s3_size_mib, args.files = 1, 64, 64, 200
    sections = args.section or list(SECTIONS)
    if "loopback" in sections and not shutil.which("curl"):
        print("curl is needed for the loopback comparison", file=sys.stderr)
        return 2
    reports: dict[str, Any] = {}
    for section in sections:
        if section == "loopback":
            reports[section] = loopback_section(args)
            if not args.json:
                print_loopback(reports[section])
                sys.stdout.flush()
            continue
        from bench_s3 import print_s3, print_small_files, s3_section, small_files_section

        root = Path(tempfile.mkdtemp(prefix=f"dataerai-bench-{section}-"))
        try:
            if section == "s3":
                reports[section] = s3_section(root, args.s3_size_mib * MiB, args.s3_chunk_mib * MiB,
                                              args.concurrency, args.runs)
                if not args.json:
                    print_s3(reports[section])
            else:
                reports[section] = small_files_section(root, args.files, args.s3_chunk_mib * MiB,
                                                       args.concurrency, args.runs)
                if not args.json:
                    print_small_files(reports[section])
        finally:
            shutil.rmtree(root, ignore_errors=True)
        sys.stdout.flush()
    if args.json:
        print(json.dumps({**reports, "cpus": os.cpu_count()}, indent=2))
    if args.plot is not None:
        from bench_plot import plot

        title = f"make bench, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, median of {args.runs}"
        if plot(reports, args.plot, title) is None:
            print("no plot: matplotlib (the bench extra) is missing", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
