"""The watch scenario of ``make soak`` (tools/soak.py): writers keep writing into watched folders
while the daemon is SIGKILLed, the server restarts and the network drops; afterwards, every
file the writers finished must be on the server exactly once, with its digest, no content on
the server may be a prefix of a file, and every local file a watch deleted or moved must have
been verified first.

Three watches in one project, each under its own prefix, each fed by writer processes
(tools/soak_writer.py) that hold their files open while they write, in bursts with pauses
longer than the watches' windows:

- ``close-keep``: ``complete_when=close``, ``after_upload=keep``, two writers;
- ``stable-delete``: ``complete_when=stable:2s``, ``after_upload=delete``, one writer;
- ``sentinel-move``: ``complete_when=sentinel:DONE``, ``after_upload=move:DIR``, one writer
  of run directories (a dataset each, one asset each). DIR is on another filesystem where
  there is one (a directory in /dev/shm, removed afterwards), as an instrument PC's
  "uploaded" disk often is: the watch then copies, and a fault can land in the copy.

The checks read the server from both its sides: the assets through its HTTP API (one per
path, whose latest content is the writer's digest), and every content of every asset from
its database (read-only), since the API lists only an asset's latest content and a content
that was superseded is exactly where a half-written file would hide. A content that is not
the finished file is told apart: a prefix of it (taken while still written), or other bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soak_writer import content, digest
from stack import Stack

MiB = 1024 * 1024
#: The file states that are still on their way (``contract.PENDING_WATCH_FILE_STATES``).
PENDING = ("seen", "complete", "queued", "uploaded")
WRITER = Path(__file__).resolve().parent / "soak_writer.py"
#: How often the watches' lag is looked at during the faults.
LAG_EVERY_S = 5.0

Call = Callable[[Callable[[Any], Any]], Any]


@dataclass(frozen=True)
class WatchSpec:
    name: str  # also the prefix of its assets in the project
    complete_when: str
    after_upload: str  # keep, delete or move (to a directory the scenario chooses)
    writers: int
    mode: str  # the writers' mode: files or datasets

    @property
    def final_state(self) -> str:
        """Where each of its files ends: kept and ``verified``, or ``cleaned`` (deleted or moved)."""
        return "verified" if self.after_upload == "keep" else "cleaned"


SPECS = (
    WatchSpec("close-keep", "close", "keep", writers=2, mode="files"),
    WatchSpec("stable-delete", "stable:2s", "delete", writers=1, mode="files"),
    WatchSpec("sentinel-move", "sentinel:DONE", "move", writers=1, mode="datasets"),
)


@dataclass
class Entry:
    """What a writer finished: a file, or a dataset directory (its files by name)."""

    spec: WatchSpec
    rel: str  # relative to the watch's root
    kind: str
    size: int
    sha256: str  # of the file, or of the dataset's stream (set once its order is known)
    seed: int = 0
    files: list[dict[str, Any]] = field(default_factory=list)
    #: A dataset's file names in its content's stream order (from the server), else in name order.
    order: list[str] = field(default_factory=list)

    @property
    def asset_path(self) -> str:
        return f"{self.spec.name}/{self.rel}"


@dataclass
class Watched:
    spec: WatchSpec
    root: Path
    moved_to: Path | None
    watch_id: str = ""
    writers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    manifests: list[Path] = field(default_factory=list)


class WatchScenario:
    def __init__(self, stack: Stack, call: Call, top: Path, seed: int) -> None:
        self.stack = stack
        self.call = call
        self.top = top
        self.seed = seed
        self.elsewhere = _other_filesystem(top)
        self.stop_file = top / "stop-writing"
        self.project_id = ""
        self.watched: list[Watched] = []
        self.max_lag: dict[str, float] = {}
        self._next_lag = 0.0
        self._entries: list[Entry] | None = None

    def rpc(self, method: str, params: dict[str, Any]) -> Any:
        """One call of the daemon's protocol, through the daemon's restarts."""
        return self.call(lambda client: client.call(method, params))

    # --- during the faults -----------------------------------------------------------------

    def start(self) -> None:
        """The project, the watches (before any fault), then the writers."""
        self.top.mkdir(parents=True, exist_ok=True)
        self.project_id = self.call(lambda c: c.create_project("soak-watch")).project_id
        for spec in SPECS:
            root = self.top / spec.name
            root.mkdir()
            moved_to = (self.elsewhere or self.top) / f"{spec.name}-moved" if spec.after_upload == "move" else None
            after = f"move:{moved_to}" if moved_to else spec.after_upload
            watch = self.rpc("watch.add", {"root": str(root), "project_id": self.project_id, "prefix": spec.name,
                                           "complete_when": spec.complete_when, "after_upload": after})
            self.watched.append(Watched(spec, root, moved_to, watch["watch_id"]))
        log = open(self.top / "writers.log", "ab")  # noqa: SIM115 - the writers own it
        for n, w in enumerate(self.watched):
            for i in range(w.spec.writers):
                manifest = self.top / f"{w.spec.name}-w{i}.jsonl"
                w.manifests.append(manifest)
                w.writers.append(subprocess.Popen(
                    [sys.executable, str(WRITER), "--root", str(w.root), "--name", f"w{i}",
                     "--manifest", str(manifest), "--stop", str(self.stop_file),
                     "--seed", str(self.seed * 100 + n * 10 + i), "--mode", w.spec.mode],
                    stdout=log, stderr=log))
        log.close()

    def tick(self) -> None:
        for w in self.watched:
            for writer in w.writers:
                if writer.poll() is not None:
                    raise RuntimeError(f"a writer of {w.spec.name} exited with {writer.returncode} during the "
                                       f"soak; see {self.top}/writers.log")
        if time.monotonic() < self._next_lag:
            return
        self._next_lag = time.monotonic() + LAG_EVERY_S
        for w in self.watched:
            lag = self.rpc("watch.get", {"watch_id": w.watch_id})["lag_s"] or 0.0
            self.max_lag[w.spec.name] = max(self.max_lag.get(w.spec.name, 0.0), lag)

    def wind_down(self) -> None:
        """Tell the writers to stop, and wait for them to finish what they are writing."""
        self.stop_file.touch()
        for w in self.watched:
            for writer in w.writers:
                if writer.wait(120) != 0:
                    raise RuntimeError(f"a writer of {w.spec.name} exited with {writer.returncode}; "
                                       f"see {self.top}/writers.log")

    def close(self, keep: bool) -> None:
        """However the soak ends: no writer outlives it, and what was moved to another filesystem
        goes with the soak's directory unless it is kept."""
        if self.elsewhere is not None and not keep:
            shutil.rmtree(self.elsewhere, ignore_errors=True)
        self.stop_file.parent.mkdir(parents=True, exist_ok=True)
        self.stop_file.touch()
        for w in self.watched:
            for writer in w.writers:
                try:
                    writer.wait(30)
                except subprocess.TimeoutExpired:
                    writer.kill()
                    writer.wait()

    # --- after the faults ----------------------------------------------------------------

    def entries(self) -> list[Entry]:
        """Every entry the writers recorded as finished (read once they all stopped)."""
        if self._entries is None:
            found = []
            for w in self.watched:
                for manifest in w.manifests:
                    for line in manifest.read_text().splitlines():
                        e = json.loads(line)
                        if e["kind"] == "file":
                            found.append(Entry(w.spec, e["path"], "file", e["size"], e["sha256"], e["seed"]))
                        else:
                            found.append(Entry(w.spec, e["path"], "dataset", sum(f["size"] for f in e["files"]),
                                               "", files=e["files"]))
            self._entries = found
        return self._entries

    def files_of(self, watch_id: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        after = None
        while True:
            page = self.rpc("watch.files", {"watch_id": watch_id, "after": after, "limit": 1000})
            out.update((f["path"], f) for f in page["files"])
            after = page["next_after"]
            if after is None:
                return out

    def stuck(self) -> list[str]:
        """What keeps the scenario from being settled (empty once it is): pending files, files
        not yet in their final state, watches not active."""
        lines = []
        by_watch: dict[str, list[Entry]] = {}
        for e in self.entries():
            by_watch.setdefault(e.spec.name, []).append(e)
        for w in self.watched:
            watch = self.rpc("watch.get", {"watch_id": w.watch_id})
            pending = {s: watch["files"][s] for s in PENDING if watch["files"][s]}
            if w.spec.final_state == "cleaned" and watch["files"]["verified"]:
                pending["verified"] = watch["files"]["verified"]
            if watch["state"] != "active" or pending:
                lines.append(f"{w.spec.name}: {watch['state']} {watch.get('problem') or ''} pending {pending}")
                continue
            rows = self.files_of(w.watch_id)
            behind = [e.rel for e in by_watch.get(w.spec.name, [])
                      if rows.get(e.rel, {}).get("state") != w.spec.final_state]
            if behind:
                lines.append(f"{w.spec.name}: {len(behind)} finished files not {w.spec.final_state}, as "
                             f"{behind[0]} ({rows.get(behind[0], {}).get('state', 'unknown to the watch')})")
        return lines

    def verify(self) -> list[str]:
        problems: list[str] = []
        assets = self._server_assets(problems)
        contents = stored_contents(self.stack, self.project_id)
        rows = {w.spec.name: self.files_of(w.watch_id) for w in self.watched}
        expected: set[str] = set()
        for e in self.entries():
            expected.add(e.asset_path)
            asset = assets.get(e.asset_path)
            if asset is None:
                problems.append(f"{e.asset_path}: finished by its writer, not on the server")
                continue
            if e.kind == "dataset":
                self._dataset_digest(e, asset, problems)
            latest = asset["latest_content"] or {}
            if (latest.get("size"), latest.get("sha256")) != (e.size, e.sha256):
                problems.append(f"{e.asset_path}: the latest content is {latest.get('size')} bytes "
                                f"{latest.get('sha256')}, not the {e.size} bytes {e.sha256} written")
            self._contents(e, asset, contents.get(asset["asset_id"], []), problems)
            self._local(e, asset, rows[e.spec.name].get(e.rel), problems)
        for path in sorted(set(assets) - expected):
            problems.append(f"{path}: an asset no writer finished")
        return problems

    def _server_assets(self, problems: list[str]) -> dict[str, dict[str, Any]]:
        """The project's assets by path, from the HTTP API; two at one path is a problem."""
        found: list[dict[str, Any]] = []
        cursor: str | None = None
        with self.stack.api() as api:
            while True:
                page = api.get("/assets", params={"project_id": self.project_id, "limit": 1000,
                                                  **({"cursor": cursor} if cursor else {})}).json()
                found += page["assets"]
                cursor = page.get("next_cursor")
                if not cursor:
                    break
        by_path: dict[str, dict[str, Any]] = {}
        for asset in found:
            if asset["path"] in by_path:
                problems.append(f"{asset['path']}: two assets, {by_path[asset['path']]['asset_id']} and "
                                f"{asset['asset_id']} (stored twice)")
            by_path[asset["path"]] = asset
        return by_path

    def _manifest_of(self, asset_id: str, content_id: str) -> list[dict[str, Any]]:
        files: list[dict[str, Any]] = []
        cursor: str | None = None
        with self.stack.api() as api:
            while True:
                page = api.get(f"/assets/{asset_id}/files", params={
                    "content_id": content_id, "limit": 1000, **({"cursor": cursor} if cursor else {})}).json()
                files += page["files"]
                cursor = page.get("next_cursor")
                if not cursor:
                    return files

    def _dataset_digest(self, e: Entry, asset: dict[str, Any], problems: list[str]) -> None:
        """A dataset's digest is its stream's: its files end to end in the content's order. Check the
        latest content lists exactly the files written, then compute that digest from the seeds."""
        content_id = (asset["latest_content"] or {}).get("content_id")
        listed = self._manifest_of(asset["asset_id"], content_id) if content_id else []
        top = e.rel.rsplit("/", 1)[-1]
        written = {f"{top}/{f['name']}": f for f in e.files}
        if sorted((f["path"], f["size"]) for f in listed) != sorted((p, f["size"]) for p, f in written.items()):
            problems.append(f"{e.asset_path}: the dataset holds {_describe(listed, written)}")
        in_stream = [f["path"] for f in sorted(listed, key=lambda f: f["offset"])] or sorted(written)
        e.order = [p.rsplit("/", 1)[-1] for p in in_stream if p in written]
        h = hashlib.sha256()
        for name in e.order:
            made = next(f for f in e.files if f["name"] == name)
            for block in content(made["seed"], made["size"]):
                h.update(block)
        e.sha256 = h.hexdigest()

    def _contents(self, e: Entry, asset: dict[str, Any], stored: list[tuple[str, int, str]],
                  problems: list[str]) -> None:
        """Every content of the asset, not only the latest: exactly one, the finished entry; none a prefix."""
        whole = [cid for cid, size, sha in stored if (size, sha) == (e.size, e.sha256)]
        if len(whole) != 1:
            problems.append(f"{e.asset_path}: {len(whole)} contents hold the finished {e.kind} "
                            f"({len(stored)} contents in all)")
        for cid, size, sha in stored:
            if (size, sha) == (e.size, e.sha256):
                continue
            if e.kind == "file" and size < e.size and digest(e.seed, size) == sha:
                problems.append(f"{e.asset_path}: content {cid} is a prefix of the file ({size} of {e.size} "
                                "bytes): it was taken while still written")
            elif e.kind == "dataset":
                listed = self._manifest_of(asset["asset_id"], cid)
                top = e.rel.rsplit("/", 1)[-1]
                written = {f"{top}/{f['name']}": f for f in e.files}
                problems.append(f"{e.asset_path}: content {cid} ({size} bytes) is not the dataset written: "
                                f"{_describe(listed, written)}")
            else:
                problems.append(f"{e.asset_path}: content {cid} holds other bytes ({size} bytes {sha}), "
                                f"not the {e.size} bytes written")

    def _local(self, e: Entry, asset: dict[str, Any], row: dict[str, Any] | None, problems: list[str]) -> None:
        """The ledger's word and the disk: a kept file is there and whole; a file no longer there was
        cleaned, after its digest was verified against both the writer's and the server's."""
        server_sha = (asset["latest_content"] or {}).get("sha256")
        if row is None:
            problems.append(f"{e.asset_path}: on the server, unknown to its watch")
            return
        if row["state"] != e.spec.final_state:
            problems.append(f"{e.asset_path}: {row['state']} in its watch, not {e.spec.final_state} "
                            f"({row.get('error')})")
        if row["asset_id"] != asset["asset_id"] or row["sha256"] != e.sha256 or row["sha256"] != server_sha:
            problems.append(f"{e.asset_path}: the watch recorded asset {row['asset_id']} sha256 {row['sha256']}; "
                            f"the server holds {asset['asset_id']} {server_sha}, the writer wrote {e.sha256}")
        w = next(w for w in self.watched if w.spec is e.spec)
        here = w.root / e.rel
        if here.exists():
            if e.spec.final_state == "cleaned":
                problems.append(f"{e.asset_path}: still in the watched folder after {e.spec.after_upload}")
            elif _on_disk(here, e) != e.sha256:
                problems.append(f"{e.asset_path}: the kept file is not what its writer wrote")
        else:
            if row["state"] != "cleaned":
                problems.append(f"{e.asset_path}: gone from the watched folder, but {row['state']} in its watch "
                                "(it went without the watch cleaning it)")
            if w.moved_to is not None and _on_disk(w.moved_to / e.rel, e) != e.sha256:
                problems.append(f"{e.asset_path}: not whole where it was moved to ({w.moved_to / e.rel})")

    # --- figures ------------------------------------------------------------------------

    def jobs(self) -> list[dict[str, Any]]:
        """The watches' upload jobs."""
        jobs: list[dict[str, Any]] = self.rpc("job.list", {})["jobs"]
        return [j for j in jobs if (j.get("client") or "").startswith("watch:")]

    def summary(self) -> list[str]:
        entries = self.entries()
        by_spec = Counter(e.spec.name for e in entries)
        size = sum(e.size for e in entries)
        jobs = self.jobs()
        states = Counter(j["state"] for j in jobs)
        failed = Counter((j.get("error") or {}).get("code") for j in jobs if j["state"] == "failed")
        lines = [f"watch: {len(entries)} entries finished by the writers ({size / MiB:.0f} MiB): "
                 + ", ".join(f"{name} {n}" for name, n in by_spec.items()),
                 f"watch: upload jobs {dict(states)}" + (f", failed by code {dict(failed)}" if failed else "")
                 + f", deduplicated {sum(1 for j in jobs if j.get('deduplicated'))}",
                 "watch: lag during the faults at most " + ", ".join(
                     f"{name} {lag:.0f} s" for name, lag in self.max_lag.items())]
        return lines

    def resent(self) -> tuple[int, int]:
        """Bytes the server received for the watches' uploads beyond their sizes, sessions left
        unfinished included, and parts stored twice: from the server's database, in one query
        each instead of a request per file."""
        with _server_db(self.stack) as db:
            extra = db.execute(
                "SELECT COALESCE(SUM(CASE WHEN state = 'completed' THEN MAX(0, bytes_received - size) "
                "ELSE bytes_received END), 0) FROM upload_sessions WHERE project_id = ?",
                (self.project_id,)).fetchone()[0]
            twice = db.execute(
                "SELECT COUNT(*) FROM upload_parts p JOIN upload_sessions s ON s.id = p.upload_id "
                "WHERE s.project_id = ? AND p.writes > 1", (self.project_id,)).fetchone()[0]
        return int(extra), int(twice)


@contextlib.contextmanager
def _server_db(stack: Stack) -> Iterator[sqlite3.Connection]:
    """The server's database, read-only (the soak's server runs on SQLite in its data directory)."""
    db = sqlite3.connect(f"file:{stack.server_dir / 'repository.sqlite3'}?mode=ro", uri=True, timeout=30)
    try:
        yield db
    finally:
        db.close()


def _other_filesystem(near: Path) -> Path | None:
    """A new directory on another filesystem than ``near``'s (tmpfs), or None if there is none."""
    shm = Path("/dev/shm")
    try:
        if os.stat(shm).st_dev == os.stat(near.parent).st_dev or not os.access(shm, os.W_OK):
            return None
    except OSError:
        return None
    return Path(tempfile.mkdtemp(prefix="dataerai-soak-moved-", dir=shm))


def stored_contents(stack: Stack, project_id: str) -> dict[str, list[tuple[str, int, str]]]:
    """Every content of every asset of the project, oldest first, by asset id, from the server's
    database (read-only): the HTTP API shows an asset's latest content only."""
    with _server_db(stack) as db:
        rows = db.execute(
            "SELECT c.asset_id, c.id, c.size, c.sha256 FROM contents c JOIN assets a ON a.id = c.asset_id "
            "WHERE a.project_id = ? ORDER BY c.created_at, c.id", (project_id,)).fetchall()
    out: dict[str, list[tuple[str, int, str]]] = {}
    for asset_id, content_id, size, sha in rows:
        out.setdefault(asset_id, []).append((content_id, int(size), sha))
    return out


def _on_disk(path: Path, e: Entry) -> str | None:
    """The SHA-256 of the file at ``path``, or of a dataset directory's files as one stream (in the
    order of its content on the server); None if missing."""
    h = hashlib.sha256()
    paths = [path] if e.kind == "file" else [path / name for name in e.order]
    try:
        for p in paths:
            with open(p, "rb") as f:
                while block := f.read(MiB):
                    h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def _describe(listed: list[dict[str, Any]], written: dict[str, dict[str, Any]]) -> str:
    """How a dataset's content differs from what was written: files missing, extra, or short."""
    have = {f["path"]: f["size"] for f in listed}
    parts = [f"no {p}" for p in sorted(set(written) - set(have))]
    parts += [f"an extra {p}" for p in sorted(set(have) - set(written))]
    parts += [f"{p} of {have[p]} bytes, not {written[p]['size']}" for p in sorted(set(have) & set(written))
              if have[p] != written[p]["size"]]
    return "; ".join(parts) or "the files written, with other bytes"
