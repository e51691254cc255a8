"""`make soak`: a real stack hurt on purpose while it works, then a check that nothing was
lost, nothing stored twice, and little sent again.

The daemon reaches the repository server through a TCP proxy in this process, so the
network can be cut. For ``--duration`` seconds, while the scenario's work goes on, one of
these happens every 1 to 4 seconds, chosen at random (``--seed``):

- ``daemon_kill``: SIGKILL the daemon, start it again;
- ``server_kill`` / ``server_restart``: SIGKILL or SIGTERM the server, start it again on its port;
- ``network_cut``: reset every connection through the proxy;
- ``outage``: the proxy refuses every connection for 2 to 5 seconds (and resets those open);
- ``token_expiry``: log the daemon in with a token that expires a few seconds later; the
  jobs wait for credentials (``waiting_for_auth``), and the soak logs in again with a
  fresh token when it sees them waiting, as a user would.

The scenarios (``--scenario``; the default, ``all``, runs both at once in one stack, under
the same faults, each in its own project: about three minutes in all):

- ``transfers``: uploads (files of awkward sizes and a directory of small files) and then
  downloads of what arrived are queued as the faults go on. Checked: every upload completed,
  once (one asset per upload, each with its source's SHA-256); every download completed
  with the source's bytes.
- ``watch`` (tools/soak_watch.py): writer processes (tools/soak_writer.py) keep writing files
  of varied sizes, the large ones slowly in bursts while held open, into three watched
  folders with subdirectories (``close`` and keep; ``stable:2s`` and delete; ``sentinel:DONE``
  datasets and move). Checked: every file (or dataset) the writers finished is on the server
  exactly once, as one asset at its path whose every content (read from the server's
  database) is the finished file's, so none is a prefix of it; every local file a watch
  deleted or moved is ``cleaned`` in the watch's ledger with the writer's and the server's
  SHA-256; every kept file is still there, whole.

Then the chaos stops (the writers finish what they are writing and stop), the daemon is
restarted without its bandwidth limit, and everything must settle: every job ends, every
watched file reaches its final state. Also checked: what was sent again (the server's count
of bytes it received for each upload, beyond the file's size) is at most the parts in
flight at the faults. The summary gives the faults by kind and the figures of each
scenario. Exit status 0 only if every check passed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaos_proxy import ChaosProxy
from soak_watch import WatchScenario
from stack import Stack, make_file, wait_for

MiB = 1024 * 1024
CHUNK_MIB = 1
#: Jobs at once and parts per job: at most ACTIVE * PARTS parts are in flight when a fault hits.
ACTIVE, PARTS = 2, 2
#: What the watch scenario adds to the bandwidth limit: a little more than its writers write,
#: so that its uploads keep up and are still in flight when the faults hit.
WATCH_BPS = 3 * MiB
#: How long everything may take to settle once the faults stopped (a backlog of watched files
#: on a busy machine takes a while), and to stay stuck as it is (longer than the watch's 120 s
#: backoff after a second failed upload of a file): what is stuck then is a problem.
SETTLE_S, STALL_S = 3600, 300


class Scenario(Protocol):
    def tick(self) -> None: ...
    def wind_down(self) -> None: ...
    def stuck(self) -> list[str]: ...
    def verify(self) -> list[str]: ...
    def summary(self) -> list[str]: ...
    def resent(self) -> tuple[int, int]: ...


@dataclass
class Upload:
    source: Path
    sha256: str | None  # None for a directory: compared file by file
    size: int
    job_id: str = ""
    asset_id: str = ""
    download_job: str = ""
    dest: Path | None = None


@dataclass
class Soak:
    """The stack, the proxy and the faults, shared by the scenarios.

    The faults come from a thread of their own (``chaos``), on their schedule whatever the
    scenarios' polling costs; ``quiet`` keeps them out of a request that is not safe to
    send twice (queueing a job), since a retried request is sent again after a fault.
    """

    stack: Stack
    proxy: ChaosProxy
    rng: random.Random
    faults: Counter[str] = field(default_factory=Counter)
    relogins: int = 0
    quiet: threading.Lock = field(default_factory=threading.Lock)
    _login_lock: threading.Lock = field(default_factory=threading.Lock)
    _client: Any = None
    _login_s: float = 0.0

    # --- the daemon, reached through faults ---------------------------------------------

    def call(self, fn: Any, timeout: float = 60.0) -> Any:
        """``fn(client)`` on the SDK's connection, made again and retried while the daemon is
        being restarted (so ``fn`` must be safe to send twice, or run under ``quiet``)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._client is None:
                    self._client = self.stack.client().connect()
                return fn(self._client)
            except (ConnectionError, OSError):
                if self._client is not None:
                    self._client.close()
                    self._client = None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def login(self, expires_in_s: float | None = None) -> None:
        """Log the daemon in with a new token; ``auth login`` checks it with the server, so
        it is tried again while an outage or a restart keeps the server out of reach.

        A token that expires in seconds must outlive that check: it lasts at least twice as
        long as the last login took (a busy machine takes seconds to start the CLI), and
        twice as long again each time it expired before the check."""
        token = ""
        lasting = max(expires_in_s, 2 * self._login_s) if expires_in_s is not None else None

        def logged_in() -> bool:
            nonlocal token, lasting
            token = self.stack.add_user("soak@example.org",
                                        expires_in_days=lasting / 86_400 if lasting is not None else None)
            began = time.monotonic()
            result = self.stack.cli("auth", "login", "--server", f"http://127.0.0.1:{self.proxy.port}",
                                    "--token-stdin", input=token + "\n", check=False)
            if result.returncode == 0:
                self._login_s = time.monotonic() - began
                return True
            if lasting is not None and "auth_expired" in result.stderr:
                lasting *= 2
            elif "unavailable" not in result.stderr:
                raise RuntimeError(f"dataerai auth login failed: {result.stderr}")
            return False

        with self._login_lock:
            wait_for(logged_in, 120, "a login", interval=0.5)
            self.stack.token = token

    def relogin_if_waiting(self) -> None:
        """Jobs waiting for credentials: log in again, as a user would."""
        if self.call(lambda c: c.list_jobs(states=["waiting_for_auth"])):
            self.login()
            self.relogins += 1

    # --- the faults ---------------------------------------------------------------------

    def fault(self) -> str:
        kind = self.rng.choices(
            ["daemon_kill", "server_kill", "server_restart", "network_cut", "outage", "token_expiry"],
            weights=[3, 2, 1, 3, 2, 1],
        )[0]
        if kind == "daemon_kill":
            self.stack.stop_daemon(signal.SIGKILL)
            self.stack.start_daemon()
        elif kind in ("server_kill", "server_restart"):
            self.stack.stop_server(signal.SIGKILL if kind == "server_kill" else signal.SIGTERM)
            self.stack.start_server()
        elif kind == "network_cut":
            self.proxy.cut()
        elif kind == "outage":
            self.proxy.outage(self.rng.uniform(2, 5))
        else:
            self.login(expires_in_s=4)
        self.faults[kind] += 1
        return kind

    def chaos(self, duration: float) -> None:
        """A fault every 1 to 4 s for ``duration`` seconds (in a thread of its own), each said as it happens."""
        started = time.monotonic()
        while True:
            pause = self.rng.uniform(1, 4)
            if time.monotonic() + pause - started >= duration:
                time.sleep(max(0.0, duration - (time.monotonic() - started)))
                return
            time.sleep(pause)
            with self.quiet:
                kind = self.fault()
            print(f"  {time.monotonic() - started:6.1f} s  {kind}", flush=True)


class Transfers:
    """Uploads queued one by one as the faults go on, and a download of each that arrived."""

    def __init__(self, soak: Soak, uploads: list[Upload]) -> None:
        self.soak = soak
        self.uploads = uploads
        self.project_id: str = soak.call(lambda c: c.create_project("soak")).project_id

    def queue_next_upload(self) -> bool:
        for upload in self.uploads:
            if not upload.job_id:
                with self.soak.quiet:
                    upload.job_id = self.soak.call(lambda c, u=upload: c.upload(
                        u.source, title=u.source.name, owner_type="project", owner_id=self.project_id,
                        chunk_size_mb=CHUNK_MIB, transfer_timeout_s=None, wait=False)).job_id
                return True
        return False

    def queue_downloads(self) -> None:
        """A download for each upload that completed and has none yet."""
        for upload in self.uploads:
            if not upload.job_id or upload.download_job:
                continue
            job = self.soak.call(lambda c, u=upload: c.call("job.get", {"job_id": u.job_id}))
            if job["state"] == "completed":
                upload.asset_id = job["asset_id"] or ""
                upload.dest = self.soak.stack.root.parent / "downloads" / upload.job_id
                with self.soak.quiet:
                    upload.download_job = self.soak.call(lambda c, u=upload: c.download(
                        u.asset_id, u.dest, transfer_timeout_s=None, wait=False)).job_id

    def tick(self) -> None:
        self.queue_next_upload()
        self.queue_downloads()

    def wind_down(self) -> None:
        pass

    def stuck(self) -> list[str]:
        while self.queue_next_upload():
            pass
        self.queue_downloads()
        mine = {j for u in self.uploads for j in (u.job_id, u.download_job)}
        running = [j for j in self.soak.call(lambda c: c.list_jobs()) if j.job_id in mine and not j.is_terminal]
        lines = [f"transfers: job {j.job_id} is {j.state}" for j in running]
        lines += [f"transfers: {u.source.name} has no download yet" for u in self.uploads if not u.download_job]
        return lines

    def verify(self) -> list[str]:
        problems: list[str] = []
        jobs = {job.job_id: job for job in self.soak.call(lambda c: c.list_jobs())}
        for upload in self.uploads:
            for job_id in (upload.job_id, upload.download_job):
                job = jobs.get(job_id)
                if job is None or job.state != "completed":
                    problems.append(f"{upload.source.name}: job {job_id} is {job.state if job else 'missing'}"
                                    f" {job.error if job else ''}")
        listed: list[dict[str, Any]] = []
        cursor: str | None = None
        with self.soak.stack.api() as api:
            while True:
                page = api.get("/assets", params={"project_id": self.project_id, "limit": 200,
                                                  **({"cursor": cursor} if cursor else {})}).json()
                listed += page["assets"]
                cursor = page.get("next_cursor")
                if not cursor:
                    break
        if len(listed) != len(self.uploads):
            problems.append(f"{len(listed)} assets in the project for {len(self.uploads)} uploads")
        by_id = {a["asset_id"]: a for a in listed}
        for upload in self.uploads:
            asset = by_id.get(upload.asset_id)
            if asset is None:
                problems.append(f"{upload.source.name}: no asset {upload.asset_id!r}")
                continue
            if upload.sha256 is not None and asset["latest_content"]["sha256"] != upload.sha256:
                problems.append(f"{upload.source.name}: the repository holds other bytes")
            if upload.dest is not None and _tree(upload.dest / upload.source.name) != _tree(upload.source):
                problems.append(f"{upload.source.name}: the download differs from the source")
        return problems

    def summary(self) -> list[str]:
        total = sum(u.size for u in self.uploads)
        return [f"transfers: uploads {len(self.uploads)} ({total / MiB:.0f} MiB), downloads {len(self.uploads)}"]

    def resent(self) -> tuple[int, int]:
        """Bytes the server received for the uploads beyond their sizes, and parts it stored more than once."""
        extra = twice = 0
        with self.soak.stack.api() as api:
            for upload in self.uploads:
                upload_id = self.soak.call(lambda c, u=upload: c.call("job.get", {"job_id": u.job_id})).get(
                    "upload_id")
                if not upload_id:
                    continue  # deduplicated or empty: nothing went over the wire
                session = api.get(f"/uploads/{upload_id}").json()
                extra += max(0, int(session.get("bytes_received", 0)) - upload.size)
                twice += sum(1 for part in session.get("parts", []) if part.get("writes", 1) > 1)
        return extra, twice


def make_sources(top: Path, rng: random.Random) -> list[Upload]:
    """Files of awkward sizes (empty, one byte, a part exactly, a part and a byte, ...) and a
    directory of small files, in a random order."""
    top.mkdir(parents=True, exist_ok=True)
    sizes = [0, 1, 65_535, CHUNK_MIB * MiB, CHUNK_MIB * MiB + 1, 3 * CHUNK_MIB * MiB - 1, 96 * MiB]
    sizes += [rng.randint(1, 40 * MiB) for _ in range(10)]
    uploads = []
    for i, size in enumerate(sizes):
        path = make_file(top / f"f{i:02}.bin", size, seed=10_000 + i)
        uploads.append(Upload(path, _sha256(path), size))
    tree = top / "tree"
    for i in range(60):
        (tree / f"d{i % 4}").mkdir(parents=True, exist_ok=True)
        make_file(tree / f"d{i % 4}" / f"s{i:02}.dat", rng.randint(0, 300_000), seed=20_000 + i)
    uploads.append(Upload(tree, None, sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())))
    rng.shuffle(uploads)
    return uploads


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            digest.update(block)
    return digest.hexdigest()


def _tree(path: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file below ``path``, or of ``path`` itself if a file."""
    if not path.exists():
        return {}
    if path.is_file():
        return {"": _sha256(path)}
    return {p.relative_to(path).as_posix(): _sha256(p) for p in sorted(path.rglob("*")) if p.is_file()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=["transfers", "watch", "all"], default="all",
                        help="what runs under the faults (default all: both at once)")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of faults (default 120)")
    parser.add_argument("--seed", type=int, default=None, help="the faults' random seed (printed)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) afterwards")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    with_transfers, with_watch = args.scenario in ("transfers", "all"), args.scenario in ("watch", "all")
    root = Path(tempfile.mkdtemp(prefix="dataerai-soak-"))
    print(f"soak: {args.scenario}, seed {seed}, {args.duration:.0f} s of faults, in {root}")
    ok = False
    watch: WatchScenario | None = None
    try:
        uploads = make_sources(root / "sources", random.Random(seed)) if with_transfers else []
        total = sum(u.size for u in uploads)
        # Slow enough that the uploads and then the downloads take most of the faults' time.
        limit = max(MiB, int(2 * total / (0.7 * args.duration))) if with_transfers else 0
        limit += WATCH_BPS if with_watch else 0
        config = {"max_active_jobs": ACTIVE, "parts_per_job": PARTS, "default_chunk_size": CHUNK_MIB * MiB,
                  "retry_base_s": 0.2, "retry_cap_s": 2.0}
        with Stack(root / "stack", daemon_config={**config, "bandwidth_limit_bps": limit}) as stack:
            stack.start_server()
            assert stack.port is not None
            proxy = ChaosProxy(stack.port)
            soak = Soak(stack, proxy, random.Random(seed))
            soak.login()
            stack.start_daemon()
            scenarios: list[Scenario] = []
            if with_transfers:
                scenarios.append(Transfers(soak, uploads))
                print(f"  transfers: {len(uploads)} uploads ({total / MiB:.0f} MiB) queued as the faults go on, "
                      "then their downloads")
            if with_watch:
                watch = WatchScenario(stack, soak.call, root / "watch", seed)
                watch.start()
                scenarios.append(watch)
                print("  watch: " + ", ".join(f"{w.spec.name} ({w.spec.writers} writer"
                                              f"{'s' if w.spec.writers > 1 else ''})" for w in watch.watched)
                      + "".join(f"; moving to {w.moved_to}" for w in watch.watched if w.moved_to))
            print(f"  in {CHUNK_MIB} MiB parts, at most {limit / MiB:.1f} MiB/s")
            started = time.monotonic()
            with ThreadPoolExecutor(1) as pool:
                chaos = pool.submit(soak.chaos, args.duration)
                while not chaos.done():
                    for scenario in scenarios:
                        scenario.tick()
                    soak.relogin_if_waiting()
                    time.sleep(0.5)
                chaos.result()
            print(f"  faults over after {time.monotonic() - started:.0f} s: {dict(soak.faults)}; "
                  "waiting for everything to settle")
            for scenario in scenarios:
                scenario.wind_down()
            soak.login()  # a token that lasts, whatever the last fault left
            # The rest at full speed: restart the daemon (itself a fault) without the limit.
            (stack.root / "config" / "dataerai" / "config.toml").write_text(
                "".join(f"{key} = {value!r}\n" for key, value in config.items()))
            stack.stop_daemon(signal.SIGTERM)
            stack.start_daemon()
            soak.faults["daemon_restart"] += 1
            calm = time.monotonic()
            problems: list[str] = []
            said = calm
            last: tuple[list[str], float] = ([], calm)

            def settled() -> bool:
                nonlocal said, last
                stuck = [line for s in scenarios for line in s.stuck()]
                now = time.monotonic()
                if stuck != last[0]:
                    last = (stuck, now)
                elif now - last[1] > STALL_S:
                    raise TimeoutError(f"nothing moved for {STALL_S} s")
                if stuck and now - said > 30:
                    said = now
                    print(f"  {now - calm:4.0f} s later, still on their way: {len(stuck)}, as {stuck[0]}", flush=True)
                return not stuck

            try:
                wait_for(settled, SETTLE_S, "everything to settle", interval=1.0)
            except TimeoutError as exc:
                problems += [f"not settled ({exc}): {line}" for s in scenarios for line in s.stuck()]
            print(f"  settled {time.monotonic() - calm:.0f} s after the faults; logins after an expired token "
                  f"{soak.relogins}")
            for scenario in scenarios:
                problems += scenario.verify()
                for line in scenario.summary():
                    print(f"  {line}")
            extra = twice = 0
            for scenario in scenarios:
                more, again = scenario.resent()
                extra, twice = extra + more, twice + again
            sent = total + sum(e.size for s in scenarios if isinstance(s, WatchScenario) for e in s.entries())
            bound = sum(soak.faults.values()) * ACTIVE * PARTS * CHUNK_MIB * MiB
            print(f"  sent again after {sum(soak.faults.values())} faults: {extra / MiB:.1f} MiB "
                  f"({extra / max(sent, 1):.1%} of the bytes; at most the parts in flight: "
                  f"{ACTIVE * PARTS} x {CHUNK_MIB} MiB a fault, {bound / MiB:.0f} MiB), parts stored twice: {twice}")
            if extra > bound:
                problems.append(f"{extra} bytes sent again, more than the {bound} in flight at the faults")
            for problem in problems:
                print(f"  PROBLEM {problem}")
            ok = not problems
            print("soak: " + ("every byte arrived, once" if ok else f"{len(problems)} problems") +
                  f" ({args.scenario}, seed {seed})")
            soak.close()
            proxy.close()
    finally:
        if watch is not None:
            watch.close(keep=args.keep)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("DATAERAI_LOG_LEVEL", "info")
    sys.exit(main())
