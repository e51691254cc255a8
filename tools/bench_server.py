"""The repository server under a fleet: requests per server CPU second at p99 < 50 ms.

Issue 14's server targets: 200 simulated daemons asking for part URLs (S3 storage, a real
SeaweedFS), creating sessions, completing them, and reading assets, on SQLite and on
PostgreSQL. For each workload the load is offered at a fixed rate (open loop: a request's
latency runs from when it was due, not from when a connection was free, so a server that
falls behind is charged for the queue it causes) in steps that grow by ``--step-factor``,
until p99 passes ``--p99-ms`` or the server answers less than 95% of what was offered.
The best passing step is reported with the server's CPU (``/proc/PID/stat`` of every
server process) and what the generator itself used, beside the cores busy on the whole
machine (``/proc/stat``): the server shares them with the generator, the database and the
store, so a p99 over the bound at a step where every core is busy is the machine's queue,
not what one server core can do.

The generator: ``--procs`` processes, each an asyncio loop over raw sockets with its share
of the 200 persistent HTTP/1.1 connections, hand-written requests and a minimal response
parser; every request carries its ``Authorization: Bearer``. That it is not the bottleneck
is shown three ways in every report: its own CPU seconds beside the server's, offered
against achieved rate, and the ``trivial`` workload, the same generator against a
minimal HTTP server (``_trivial_server``) that answers a canned 200.

    .venv/bin/python tools/bench_server.py [--database sqlite|postgresql|both]
        [--workload trivial health me parts create read complete complete-s3] [--step-seconds 4] [--json]

``complete`` runs on directory storage with single-part 1 KiB sessions whose part is
stored before the step (the completion links it into place and records the asset).
``complete-s3`` is the same on S3 storage, the part sent straight to the store as a
daemon sends it, and its ETag told at completion as the daemon tells it: the completion
completes the multipart upload, reads the object back and records it, so it measures the
store's calls too. The rest runs
against SeaweedFS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import secrets
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from seaweed import Seaweed
from stack import Stack

CLIENTS = 200
#: Workloads run on the server with S3 storage; ``complete`` has its own on directory storage
#: (``complete-s3`` is the same on S3: one-part sessions whose part went straight to the store).
#: ``health`` (no token, no database) and ``me`` (the token's lookup alone) show the floor.
S3_WORKLOADS = ("health", "me", "parts", "create", "read", "complete-s3")
COMPLETIONS = ("complete", "complete-s3")
PART_SIZE = 5 * 1024 * 1024
PARTS_PER_SESSION = 10_000
PG_URL = "postgresql+psycopg://root@127.0.0.1:5432/{db}"
TICKS = os.sysconf("SC_CLK_TCK")


# --- CPU -------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(_children(p))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (their own, not reaped children's)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy so far, all cores (``/proc/stat``): what the server,
    the generator, the database and the store share. A p99 over the bound while this is at the
    machine's core count is the machine's queue, not one server core's."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields)
    return (user + nice + system + irq + softirq + steal) / TICKS


# --- the load generator (runs in child processes) ------------------------------------


@dataclass
class Shard:
    """One generator process's share of a step."""

    host: str
    port: int
    token: str
    workload: str
    rate: float
    seconds: float
    connections: int
    start_at: float  # time.time() at which the first request is due
    items: list[Any] = field(default_factory=list)  # per-workload inputs (upload ids, asset ids, …)


def _request(shard: Shard, index: int) -> bytes:
    """The ``index``-th request of this shard, as bytes on the wire."""
    w = shard.workload
    body = b""
    if w == "parts":
        upload_id = shard.items[index % len(shard.items)]
        number = 1 + (index // len(shard.items)) % (PARTS_PER_SESSION - 1)
        method, path = "POST", f"/api/v1/uploads/{upload_id}/parts/{number}/target"
        body = json.dumps({"sha256": secrets.token_hex(32), "size": PART_SIZE}).encode()
    elif w == "create":
        user_id = shard.items[0]
        method, path = "POST", "/api/v1/uploads"
        body = json.dumps({
            "owner_type": "user", "owner_id": user_id, "file_name": "run.h5", "size": 64 << 20,
            "part_size": 16 << 20, "sha256": secrets.token_hex(32), "idempotency_key": "k" + secrets.token_hex(12),
        }).encode()
    elif w in COMPLETIONS:
        upload_id, sha, etag = shard.items[index]
        method, path = "POST", f"/api/v1/uploads/{upload_id}/complete"
        told = {"parts": [{"number": 1, "etag": etag}]} if etag else {}  # as the daemon tells a store's ETags
        body = json.dumps({"idempotency_key": "c" + upload_id, "sha256": sha, **told}).encode()
    elif w == "read":
        method, path = "GET", f"/api/v1/assets/{shard.items[index % len(shard.items)]}"
    elif w == "health":
        method, path = "GET", "/api/v1/health"
    elif w == "me":
        method, path = "GET", "/api/v1/me"
    elif w == "trivial":
        method, path = "GET", "/"
    else:
        raise ValueError(w)
    head = (f"{method} {path} HTTP/1.1\r\nHost: {shard.host}:{shard.port}\r\n"
            f"Authorization: Bearer {shard.token}\r\n")
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one response; its status. Bodies come with Content-Length (JSON) here."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def _run_shard(shard: Shard) -> dict[str, Any]:
    count = int(shard.rate * shard.seconds)
    if shard.workload in COMPLETIONS:
        count = min(count, len(shard.items))
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    conns = [await asyncio.open_connection(shard.host, shard.port) for _ in range(shard.connections)]
    for _, writer in conns:
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    requests = [_request(shard, i) for i in range(count)]  # built before the clock starts
    loop = asyncio.get_running_loop()
    # The wall clock is shared by the processes; the loop's clock is what sleeps use.
    base = loop.time() + (shard.start_at - time.time())

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal errors
        while (job := await queue.get()) is not None:
            index, due = job
            try:
                writer.write(requests[index])
                status = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                return
            latencies.append(loop.time() - due)
            statuses[status] = statuses.get(status, 0) + 1

    async def offer() -> None:
        interval = 1.0 / shard.rate
        for i in range(count):
            due = base + i * interval
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.put_nowait((i, due))
        for _ in conns:
            queue.put_nowait(None)

    cpu0 = time.process_time()
    tasks = [asyncio.create_task(worker(r, w)) for r, w in conns]
    await offer()
    await asyncio.gather(*tasks)
    end = loop.time()
    cpu = time.process_time() - cpu0
    for _, writer in conns:
        writer.close()
    return {"latencies": latencies, "statuses": statuses, "errors": errors, "cpu": cpu,
            "wall": end - base, "offered": count}


def _shard_main(shard: Shard, out: Any) -> None:
    out.put(asyncio.run(_run_shard(shard)))


# --- a trivial server, for the generator's own ceiling ---------------------------------


def _trivial_server(port_out: Any) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":")[1]))
                writer.write(answer)
        except (asyncio.IncompleteReadError, OSError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
        port_out.put(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


# --- a step and the search -------------------------------------------------------------


@dataclass
class Step:
    workload: str
    offered_rate: float
    achieved_rate: float
    requests: int
    errors: int
    non_2xx: int
    p50_ms: float
    p99_ms: float
    server_cpu_s: float
    server_cores: float
    requests_per_server_cpu_s: float
    generator_cpu_s: float
    generator_cores: float
    #: Cores busy on the whole machine during the step (of ``os.cpu_count()``), the server's included.
    machine_cores: float
    #: The server answered (2xx) at least 95% of the offered rate, in time for the step to end.
    kept_up: bool
    #: ``kept_up`` and p99 under the bound.
    ok: bool


def run_step(url: str, token: str, workload: str, rate: float, seconds: float, procs: int,
             items: list[Any], server_pids: list[int], p99_ms: float) -> Step:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    start_at = time.time() + 1.0 + 0.002 * CLIENTS  # time to connect everything first
    per_proc = [CLIENTS // procs + (1 if i < CLIENTS % procs else 0) for i in range(procs)]
    children = []
    for i in range(procs):
        if workload in COMPLETIONS:
            mine = items[i::procs]
        elif workload in ("parts",):
            mine = items[sum(per_proc[:i]):sum(per_proc[:i + 1])]
        else:
            mine = items
        shard = Shard(parts.hostname, parts.port, token, workload, rate / procs, seconds, per_proc[i], start_at, mine)
        child = ctx.Process(target=_shard_main, args=(shard, out))
        child.start()
        children.append(child)
    pids = tree(server_pids[0]) if server_pids else []
    time.sleep(max(0.0, start_at - time.time()))
    cpu0, busy0, clock0 = cpu_seconds(pids), machine_busy_seconds(), time.monotonic()
    results = [out.get() for _ in children]
    cpu = cpu_seconds(pids) - cpu0
    machine = (machine_busy_seconds() - busy0) / (time.monotonic() - clock0)
    for child in children:
        child.join()
    latencies = sorted(x for r in results for x in r["latencies"])
    wall = max(r["wall"] for r in results)
    done = len(latencies)
    offered = sum(r["offered"] for r in results)
    statuses: dict[int, int] = {}
    for r in results:
        for k, v in r["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    non_2xx = sum(v for k, v in statuses.items() if not 200 <= k < 300)
    errors = sum(r["errors"] for r in results)
    p50 = latencies[len(latencies) // 2] * 1000 if latencies else float("inf")
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000 if latencies else float("inf")
    gen_cpu = sum(r["cpu"] for r in results)
    achieved = done / wall
    kept_up = errors == 0 and non_2xx == 0 and done >= 0.95 * offered and achieved >= 0.95 * rate
    return Step(workload, rate, round(achieved, 1), done, errors, non_2xx, round(p50, 1), round(p99, 1),
                round(cpu, 2), round(cpu / wall, 2), round(done / cpu, 1) if cpu else 0.0,
                round(gen_cpu, 2), round(gen_cpu / wall, 2), round(machine, 2), kept_up, kept_up and p99 < p99_ms)


# --- fixtures: users, sessions, assets ---------------------------------------------------


def _http(url: str, token: str, method: str, path: str, body: Any = None) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(timeout=60) as client:
        r = client.request(method, url + path, json=body, headers=headers)
    r.raise_for_status()
    return r.json() if r.content and r.headers.get("content-type", "").startswith("application/json") else None


def _parallel(fn: Any, items: list[Any], threads: int = 16) -> list[Any]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, items))


def new_sessions(url: str, token: str, user_id: str, count: int, size: int, part_size: int) -> list[str]:
    def one(_: int) -> str:
        body = {"owner_type": "user", "owner_id": user_id, "file_name": "f.bin", "size": size,
                "part_size": part_size, "sha256": None, "idempotency_key": "s" + secrets.token_hex(12)}
        return str(_http(url, token, "POST", "/api/v1/uploads", body)["upload_id"])

    return _parallel(one, list(range(count)))


def stored_sessions(url: str, token: str, user_id: str, count: int) -> list[tuple[str, str, str | None]]:
    """Single-part 1 KiB sessions whose part is stored: (upload id, whole SHA-256, the ETag
    the store answered the part with, None where the server took it)."""
    import hashlib

    import httpx

    def one(_: int) -> tuple[str, str, str | None]:
        data = secrets.token_bytes(1024)
        sha = hashlib.sha256(data).hexdigest()
        body = {"owner_type": "user", "owner_id": user_id, "file_name": "f.bin", "size": len(data),
                "part_size": 1 << 20, "sha256": sha, "idempotency_key": "s" + secrets.token_hex(12)}
        upload_id = _http(url, token, "POST", "/api/v1/uploads", body)["upload_id"]
        target = _http(url, token, "POST", f"/api/v1/uploads/{upload_id}/parts/1/target",
                       {"sha256": sha, "size": len(data)})
        with httpx.Client(timeout=60) as client:
            sent = client.put(target["url"], content=data, headers=target["headers"])
        sent.raise_for_status()
        own = target["url"].startswith(url)
        return upload_id, sha, None if own else sent.headers.get("etag")

    return _parallel(one, list(range(count)))


def new_assets(url: str, token: str, user_id: str, count: int) -> list[str]:
    done = stored_sessions(url, token, user_id, count)
    return [_http(url, token, "POST", f"/api/v1/uploads/{u}/complete", {"sha256": s})["asset_id"] for u, s, _ in done]


# --- servers ----------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    import psycopg

    name = f"bench_server_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect("host=127.0.0.1 user=root dbname=postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_URL.format(db=name)
    finally:
        with psycopg.connect("host=127.0.0.1 user=root dbname=postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def server(root: Path, database: str | None, storage: str | None, env: dict[str, str]) -> Iterator[Stack]:
    stack = Stack(root)
    stack.start_server(database=database, storage=storage, env=env)
    try:
        yield stack
    finally:
        stack.stop_server()


def search(url: str, token: str, workload: str, items_for: Any, server_pids: list[int], args: argparse.Namespace,
           report: list[Step]) -> dict[str, Step | None]:
    """Raise the rate until the server no longer keeps up (or p99 passes a second); the best step
    with p99 under the bound, and the fastest the server kept up with."""
    rate, best, fastest = args.start_rate, None, None
    for _ in range(args.max_steps):
        items = items_for(rate)
        step = run_step(url, token, workload, rate, args.step_seconds, args.procs, items, server_pids, args.p99_ms)
        report.append(step)
        print(f"  {workload:9} offered {rate:7.0f}/s achieved {step.achieved_rate:7.1f}/s p50 {step.p50_ms:7.1f} "
              f"p99 {step.p99_ms:7.1f} ms  server {step.server_cores:.2f} cores "
              f"{step.requests_per_server_cpu_s:6.0f} req/CPU-s  generator {step.generator_cores:.2f} cores  "
              f"machine {step.machine_cores:.2f}/{os.cpu_count()} cores"
              f"{'' if step.ok else '  (p99 over)' if step.kept_up else '  (behind)'}"
              f"{f'  errors {step.errors} non-2xx {step.non_2xx}' if step.errors or step.non_2xx else ''}",
              flush=True)
        if not step.kept_up or step.p99_ms > 1000:
            break
        fastest = step
        if step.ok:
            best = step
        rate *= args.step_factor
    return {"p99": best, "kept_up": fastest}


def bench_database(kind: str, args: argparse.Namespace, seaweed: Seaweed | None, bucket: str,
                   steps: list[Step]) -> dict[str, Any]:
    best: dict[str, Any] = {}
    with contextlib.ExitStack() as stack_:
        database = stack_.enter_context(postgres_database()) if kind == "postgresql" else None
        database2 = stack_.enter_context(postgres_database()) if kind == "postgresql" else None
        root = Path(stack_.enter_context(tempfile.TemporaryDirectory(prefix="bench-server-")))
        s3_work = [w for w in args.workload if w in S3_WORKLOADS]
        if s3_work:
            assert seaweed is not None
            st = stack_.enter_context(server(root / "s3", database, f"s3://{bucket}/{kind}", seaweed.env))
            assert st.url is not None and st.server is not None
            token = st.add_user("fleet@example.org")
            user_id = _http(st.url, token, "GET", "/api/v1/me")["user_id"]
            pids = [st.server.pid]
            print(f"{kind}, S3 storage: server pid {st.server.pid}", flush=True)
            for w in s3_work:
                if w == "parts":
                    sessions = new_sessions(st.url, token, user_id, CLIENTS, PART_SIZE * PARTS_PER_SESSION, PART_SIZE)
                    best[w] = search(st.url, token, w, lambda _r, found=sessions: found, pids, args, steps)
                elif w in ("create", "health", "me"):
                    best[w] = search(st.url, token, w, lambda _r: [user_id], pids, args, steps)
                elif w == "complete-s3":
                    url = st.url
                    best[w] = search(url, token, w, lambda rate, url=url, token=token, user_id=user_id: stored_sessions(
                        url, token, user_id, int(rate * args.step_seconds) + 1), pids, args, steps)
                elif w == "read":
                    asset_ids = new_assets(st.url, token, user_id, 50)
                    best[w] = search(st.url, token, w, lambda _r, found=asset_ids: found, pids, args, steps)
        if "complete" in args.workload:
            st = stack_.enter_context(server(root / "dir", database2, None, {}))
            assert st.url is not None and st.server is not None
            token = st.add_user("fleet@example.org")
            user_id = _http(st.url, token, "GET", "/api/v1/me")["user_id"]
            print(f"{kind}, directory storage: server pid {st.server.pid}", flush=True)
            url = st.url
            best["complete"] = search(
                url, token, "complete",
                lambda rate: stored_sessions(url, token, user_id, int(rate * args.step_seconds) + 1),
                [st.server.pid], args, steps)
    return {w: {k: (asdict(s) if s else None) for k, s in found.items()} for w, found in best.items()}


def bench_trivial(args: argparse.Namespace, steps: list[Step]) -> dict[str, Any]:
    ctx = multiprocessing.get_context("fork")
    port_out = ctx.Queue()
    proc = ctx.Process(target=_trivial_server, args=(port_out,))
    proc.start()
    try:
        port = port_out.get(timeout=10)
        print(f"trivial server pid {proc.pid}", flush=True)
        step = search(f"http://127.0.0.1:{port}", "x" * 47, "trivial", lambda _r: [], [proc.pid], args, steps)
    finally:
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGTERM)
        proc.join()
    return {"trivial": {k: (asdict(s) if s else None) for k, s in step.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--workload", nargs="+",
                        default=["trivial", "parts", "create", "complete", "complete-s3", "read"],
                        choices=["trivial", *S3_WORKLOADS, "complete"])
    parser.add_argument("--procs", type=int, default=4, help="generator processes (default 4)")
    parser.add_argument("--start-rate", type=float, default=50.0)
    parser.add_argument("--step-factor", type=float, default=1.4)
    parser.add_argument("--step-seconds", type=float, default=4.0)
    parser.add_argument("--max-steps", type=int, default=14)
    parser.add_argument("--p99-ms", type=float, default=50.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    steps: list[Step] = []
    result: dict[str, Any] = {"cpus": os.cpu_count(), "clients": CLIENTS, "procs": args.procs}
    if "trivial" in args.workload:
        result["generator"] = bench_trivial(args, steps)
    kinds = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    with contextlib.ExitStack() as stack_:
        seaweed = None
        bucket = "bench-server"
        if any(w in args.workload for w in S3_WORKLOADS):
            seaweed = stack_.enter_context(Seaweed(Path(stack_.enter_context(tempfile.TemporaryDirectory()))))
            seaweed.create_bucket(bucket)
        for kind in kinds:
            result[kind] = bench_database(kind, args, seaweed, bucket, steps)
    result["steps"] = [asdict(s) for s in steps]
    print()
    print(f"| database | workload | best rate with p99 < {args.p99_ms:.0f} ms: rate, p50, p99, server req/CPU-s "
          "| fastest rate kept up with: rate, p50, p99, server cores, server req/CPU-s, generator cores, "
          "machine cores busy |")
    print("|---|---|---|---|")
    for kind in ["generator", *kinds]:
        for workload, found in result.get(kind, {}).items():
            cells = []
            for key in ("p99", "kept_up"):
                s = found[key]
                if s is None:
                    cells.append("none")
                elif key == "p99":
                    cells.append(f"{s['achieved_rate']:.0f}/s, {s['p50_ms']} ms, {s['p99_ms']} ms, "
                                 f"{s['requests_per_server_cpu_s']:.0f}")
                else:
                    cells.append(f"{s['achieved_rate']:.0f}/s, {s['p50_ms']} ms, {s['p99_ms']} ms, "
                                 f"{s['server_cores']}, {s['requests_per_server_cpu_s']:.0f}, {s['generator_cores']}, "
                                 f"{s['machine_cores']}")
            print(f"| {kind} | {workload} | {cells[0]} | {cells[1]} |")
    if args.json:
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
