"""`make soak`: many transfers through a real stack while it is hurt on purpose, then a check
that nothing was lost, nothing stored twice, and little sent again.

The daemon reaches the repository server through a TCP proxy in this process, so the
network can be cut. For ``--duration`` seconds, while uploads (files of awkward sizes
and a directory of small files) and then downloads of what arrived are queued, one of
these happens every 1 to 4 seconds, chosen at random (``--seed``):

- ``daemon_kill``: SIGKILL the daemon, start it again;
- ``server_kill`` / ``server_restart``: SIGKILL or SIGTERM the server, start it again on its port;
- ``network_cut``: reset every connection through the proxy;
- ``outage``: the proxy refuses every connection for 2 to 5 seconds (and resets those open);
- ``token_expiry``: log the daemon in with a token that expires a few seconds later; the
  jobs wait for credentials (``waiting_for_auth``), and the soak logs in again with a
  fresh token when it sees them waiting, as a user would.

Then the chaos stops, the daemon is restarted without its bandwidth limit, and every job
must complete. Checked: every upload completed, once (one asset per upload in the
project, each with its source's SHA-256); every download completed with the source's
bytes; what was sent again (the server's count of bytes it received for each upload,
beyond the file's size) is at most the parts in flight at the faults. Exit status 0 only
if every check passed.
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
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaos_proxy import ChaosProxy
from stack import Stack, make_file, wait_for

MiB = 1024 * 1024
CHUNK_MIB = 1
#: Jobs at once and parts per job: at most ACTIVE * PARTS parts are in flight when a fault hits.
ACTIVE, PARTS = 2, 2


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
    stack: Stack
    proxy: ChaosProxy
    rng: random.Random
    root: Path
    project_id: str = ""
    uploads: list[Upload] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    relogins: int = 0

    # --- the daemon, reached through faults ---------------------------------------------

    def call(self, fn: Any, timeout: float = 60.0) -> Any:
        """``fn(client)`` on a fresh SDK connection, retried while the daemon is being restarted."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.stack.client() as client:
                    return fn(client)
            except (ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def login(self, expires_in_days: float | None = None) -> None:
        """Log the daemon in with a new token; ``auth login`` checks it with the server, so
        it is tried again while an outage or a restart keeps the server out of reach."""
        token = self.stack.add_user("soak@example.org", expires_in_days=expires_in_days)

        def logged_in() -> bool:
            result = self.stack.cli("auth", "login", "--server", f"http://127.0.0.1:{self.proxy.port}",
                                    "--token-stdin", input=token + "\n", check=False)
            if result.returncode != 0 and "unavailable" not in result.stderr:
                raise RuntimeError(f"dataerai auth login failed: {result.stderr}")
            return result.returncode == 0

        wait_for(logged_in, 60, "a login", interval=0.5)
        self.stack.token = token

    # --- the workload -------------------------------------------------------------------

    def queue_next_upload(self) -> bool:
        for upload in self.uploads:
            if not upload.job_id:
                upload.job_id = self.call(lambda c, u=upload: c.upload(
                    u.source, title=u.source.name, owner_type="project", owner_id=self.project_id,
                    chunk_size_mb=CHUNK_MIB, transfer_timeout_s=None, wait=False)).job_id
                return True
        return False

    def queue_downloads(self) -> None:
        """A download for each upload that completed and has none yet; relogin for waiting jobs."""
        jobs = {job.job_id: job for job in self.call(lambda c: c.list_jobs())}
        if any(job.state == "waiting_for_auth" for job in jobs.values()):
            self.login()
            self.relogins += 1
        for upload in self.uploads:
            job = jobs.get(upload.job_id)
            if job is not None and job.state == "completed" and not upload.download_job:
                upload.asset_id = job.asset_id or ""
                upload.dest = self.root / "downloads" / upload.job_id
                upload.download_job = self.call(lambda c, u=upload: c.download(
                    u.asset_id, u.dest, transfer_timeout_s=None, wait=False)).job_id

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
            self.login(expires_in_days=4 / 86_400)
        self.faults[kind] += 1
        return kind

    # --- the checks ---------------------------------------------------------------------

    def verify(self) -> list[str]:
        problems: list[str] = []
        jobs = {job.job_id: job for job in self.call(lambda c: c.list_jobs())}
        for upload in self.uploads:
            for job_id in (upload.job_id, upload.download_job):
                job = jobs.get(job_id)
                if job is None or job.state != "completed":
                    problems.append(f"{upload.source.name}: job {job_id} is {job.state if job else 'missing'}"
                                    f" {job.error if job else ''}")
        listed: list[dict[str, Any]] = []
        cursor: str | None = None
        with self.stack.api() as api:
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

    def resent(self) -> tuple[int, int]:
        """Bytes the server received for the uploads beyond their sizes, and parts it stored more than once."""
        extra = twice = 0
        with self.stack.api() as api:
            for upload in self.uploads:
                upload_id = self.call(lambda c, u=upload: c.call("job.get", {"job_id": u.job_id})).get("upload_id")
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
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of faults (default 120)")
    parser.add_argument("--seed", type=int, default=None, help="the faults' random seed (printed)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) afterwards")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="dataerai-soak-"))
    print(f"soak: seed {seed}, {args.duration:.0f} s of faults, in {root}")
    ok = False
    try:
        uploads = make_sources(root / "sources", rng)
        total = sum(u.size for u in uploads)
        # Slow enough that the uploads and then the downloads take most of the faults' time.
        limit = max(MiB, int(2 * total / (0.7 * args.duration)))
        config = {"max_active_jobs": ACTIVE, "parts_per_job": PARTS, "retry_base_s": 0.2, "retry_cap_s": 2.0}
        with Stack(root / "stack", daemon_config={**config, "bandwidth_limit_bps": limit}) as stack:
            stack.start_server()
            assert stack.port is not None
            proxy = ChaosProxy(stack.port)
            soak = Soak(stack, proxy, rng, root, uploads=uploads)
            soak.login()
            stack.start_daemon()
            soak.project_id = soak.call(lambda c: c.create_project("soak")).project_id
            print(f"  {len(uploads)} uploads ({total / MiB:.0f} MiB) queued as the faults go on, then their "
                  f"downloads, at most {limit / MiB:.1f} MiB/s")
            started = time.monotonic()
            next_fault = started + rng.uniform(1, 4)
            while time.monotonic() - started < args.duration:
                soak.queue_next_upload()
                soak.queue_downloads()
                if time.monotonic() >= next_fault:
                    print(f"  {time.monotonic() - started:6.1f} s  {soak.fault()}", flush=True)
                    next_fault = time.monotonic() + rng.uniform(1, 4)
                time.sleep(0.5)
            print(f"  faults over after {time.monotonic() - started:.0f} s: {dict(soak.faults)}; "
                  "waiting for every job")
            soak.login()  # a token that lasts, whatever the last fault left
            # The rest at full speed: restart the daemon (itself a fault) without the limit.
            (stack.root / "config" / "dataerai" / "config.toml").write_text(
                "".join(f"{key} = {value!r}\n" for key, value in config.items()))
            stack.stop_daemon(signal.SIGTERM)
            stack.start_daemon()
            soak.faults["daemon_restart"] += 1

            def settled() -> bool:
                while soak.queue_next_upload():
                    pass
                soak.queue_downloads()
                jobs = soak.call(lambda c: c.list_jobs())
                return all(u.download_job for u in soak.uploads) and all(j.is_terminal for j in jobs)

            wait_for(settled, 600, "every job to end", interval=1.0)
            problems = soak.verify()
            extra, twice = soak.resent()
            total = sum(u.size for u in soak.uploads)
            print(f"  uploads {len(soak.uploads)} ({total / MiB:.0f} MiB), downloads {len(soak.uploads)}, "
                  f"logins after an expired token {soak.relogins}")
            bound = sum(soak.faults.values()) * ACTIVE * PARTS * CHUNK_MIB * MiB
            print(f"  sent again after {sum(soak.faults.values())} faults: {extra / MiB:.1f} MiB "
                  f"({extra / max(total, 1):.1%} of the bytes; at most the parts in flight: "
                  f"{ACTIVE * PARTS} x {CHUNK_MIB} MiB a fault, {bound / MiB:.0f} MiB), parts stored twice: {twice}")
            if extra > bound:
                problems.append(f"{extra} bytes sent again, more than the {bound} in flight at the faults")
            for problem in problems:
                print(f"  PROBLEM {problem}")
            ok = not problems
            print("soak: " + ("every byte arrived, once" if ok else f"{len(problems)} problems") +
                  f" (seed {seed})")
            proxy.close()
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("DATAERAI_LOG_LEVEL", "info")
    sys.exit(main())
