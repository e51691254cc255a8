"""A fake daemon: a small threaded Unix-socket server speaking docs/protocol.md.

It is the SDK's "fake remote behind the same interface": the framing is the real
one (``dataerai.protocol``), the behaviour is scripted. Tests change it by
replacing entries of ``FakeDaemon.handlers`` (``handler(conn, request) ->
result``; raise ``Fail`` for an error answer; return ``NO_REPLY`` to answer
later, or never) and by setting ``FakeDaemon.plan``, which says how the next
jobs run once a client follows them.

Run as a program (``python sdk_fake_daemon.py daemon run``) it serves
``$DATAERAI_SOCKET`` the way the real daemon would be started by the SDK: a lock
beside the socket lets only one instance serve, a second one exits 0 quietly.
Each instance appends its pid to ``<socket>.pids``; ``FAKE_DAEMON_DELAY``
(seconds) delays the start.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataerai.protocol import (
    FrameError,
    LineSplitter,
    Request,
    Response,
    RpcError,
    encode_notification,
    encode_response,
    encode_responses,
    parse_request_line,
)

# Run as a program (the SDK's auto-start tests), this file does not have the suite's tools/ on its path.
_TOOLS = str(Path(__file__).resolve().parents[2] / "tools")
if _TOOLS not in sys.path:
    sys.path.insert(0, _TOOLS)

from fake_watches import FakeWatches, WatchFault  # noqa: E402
from loopback import LoopbackServer  # noqa: E402

NO_REPLY = object()
FAKE_DAEMON_SCRIPT = Path(__file__).resolve()
TERMINAL = ("completed", "failed", "cancelled")


class Fail(Exception):
    """Raised by a handler: answer with this coded error."""

    def __init__(self, code: str, message: str = "scripted failure", **data: Any) -> None:
        super().__init__(code, message)
        self.error = RpcError(code, message, data)


@dataclass
class Plan:
    """How a job runs once it is followed.

    ``outcome``: ``completed``, ``failed``, ``cancelled`` or ``hang`` (never ends
    until ``FakeDaemon.finish`` is called). ``before_subscribe``: the job ends
    as soon as it is started, so only the replay (``since``) can tell. ``gap``:
    instead of the final event, a ``gap`` is sent (the client must ask
    ``job.get``). ``close``: the connection is closed after the progress events.
    ``job_in_event``: whether the final ``job.state`` event carries the job.
    """

    progress: int = 3
    outcome: str = "completed"
    error: dict[str, Any] = field(default_factory=lambda: {"code": "source_changed", "message": "file changed"})
    before_subscribe: bool = False
    gap: bool = False
    close: bool = False
    job_in_event: bool = True
    sha256: str | None = "ab" * 32
    size: int = 3000
    delay: float = 0.0


class FakeConnection:
    def __init__(self, daemon: FakeDaemon, sock: socket.socket, number: int) -> None:
        self.daemon = daemon
        self.sock = sock
        self.number = number
        self.write_lock = threading.Lock()
        self.subscribed = False
        self.sub_jobs: list[str] | None = None
        self.closed = False

    def send(self, data: bytes) -> None:
        with self.write_lock:
            if self.closed:
                return
            try:
                self.sock.sendall(data)
                return
            except OSError:
                pass
        self.close()  # outside the lock, which close takes too

    def respond(self, request_id: Any, result: Any) -> None:
        self.send(encode_response(Response(request_id, result=result)))

    def fail(self, request_id: Any, code: str, message: str, **data: Any) -> None:
        self.send(encode_response(Response(request_id, error=RpcError(code, message, data))))

    def event(self, event: dict[str, Any]) -> None:
        if self.subscribed and (self.sub_jobs is None or event.get("job_id") in self.sub_jobs or "job_id" not in event):
            self.send(encode_notification("event", event))

    def close(self) -> None:
        self.closed = True
        # Shut down before taking the lock: a sender blocked in sendall (a client that
        # stopped reading) then fails at once and lets go of it.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        with self.write_lock:
            self.sock.close()


Handler = Callable[[FakeConnection, Request], Any]


class FakeDaemon:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.requests: list[Request] = []
        #: Requests in the order their answers were made (what the answer says was read by then).
        self.answered: list[Request] = []
        self.connections: list[FakeConnection] = []
        self.jobs: dict[str, dict[str, Any]] = {}
        self.plans: dict[str, Plan] = {}
        self.plan = Plan()
        self.stored_events: list[dict[str, Any]] = []
        self.assets: dict[str, dict[str, Any]] = {}
        self.auth: dict[str, Any] | None = {
            "server_url": "http://repo.example",
            "user_id": "usr_1",
            "user_email": "ada@example.org",
            "scopes": ["read", "write"],
            "expires_at": "2027-01-01T00:00:00Z",
        }
        self._event_ids = itertools.count(1)
        self._job_ids = itertools.count(1)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: LoopbackServer | None = None
        self.handlers: dict[str, Handler] = {
            "daemon.ping": lambda c, r: {"version": "0.1.0", "pid": os.getpid()},
            "auth.status": self._auth_status,
            "project.create": self._project_create,
            "upload.start": self._upload_start,
            "download.start": self._download_start,
            "job.get": lambda c, r: self._job(r.params.get("job_id")),
            "job.list": self._job_list,
            "job.cancel": self._job_cancel,
            "asset.get": lambda c, r: self._asset(r.params.get("asset_id")),
            "asset.update": self._asset_update,
            "relationship.create": self._relationship_create,
            "events.subscribe": self._subscribe,
            "events.unsubscribe": self._unsubscribe,
        }
        #: The ``watch.*`` methods, over a table of watches tests may fill (``watches.put``).
        self.watches = FakeWatches()
        for method, answer in self.watches.methods().items():
            self.handlers[method] = _faulting(answer)

    # --- life -------------------------------------------------------------

    def start(self) -> FakeDaemon:
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)  # a stale socket from a dead daemon
        self._server = LoopbackServer(self._connected, unix=self.socket_path, backlog=16)
        return self

    def stop(self) -> None:
        self._stop.set()
        for conn in list(self.connections):
            conn.close()
        if self._server is not None:
            self._server.close(timeout=2)
        for thread in self._threads:
            thread.join(timeout=2)
        try:
            os.unlink(self.socket_path)
        except OSError:
            pass

    def __enter__(self) -> FakeDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _connected(self, sock: socket.socket, number: int) -> None:
        conn = FakeConnection(self, sock, number - 1)
        with self._lock:
            self.connections.append(conn)
        self._serve(conn)

    def _serve(self, conn: FakeConnection) -> None:
        splitter = LineSplitter()
        while not self._stop.is_set() and not conn.closed:
            try:
                data = conn.sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            for line in splitter.feed(data):
                incoming, batch = parse_request_line(line)
                answers: list[Response] = []
                for item in incoming:
                    if isinstance(item, FrameError):
                        answers.append(item.response)
                        continue
                    answer = self._dispatch(conn, item)
                    if answer is not None:
                        answers.append(answer)
                if batch and answers:
                    conn.send(encode_responses(answers))
                else:
                    for answer in answers:
                        conn.send(encode_response(answer))
        with self._lock:
            conn.subscribed = False
        conn.close()

    def _dispatch(self, conn: FakeConnection, request: Request) -> Response | None:
        with self._lock:
            self.requests.append(request)
        handler = self.handlers.get(request.method)
        if handler is None:
            error: RpcError | None = RpcError("method_not_found", f"no method {request.method}")
            result = None
        else:
            try:
                result = handler(conn, request)
                error = None
            except Fail as exc:
                result, error = None, exc.error
            except Exception as exc:  # a bug in a scripted handler: say so
                result, error = None, RpcError("internal", repr(exc))
        with self._lock:
            self.answered.append(request)
        if request.is_notification or result is NO_REPLY:
            return None
        return Response(request.id, result=result, error=error)

    # --- helpers for tests ------------------------------------------------------

    def calls(self, method: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.method == method]

    def answered_after(self, first: str, then: str) -> bool:
        """Whether a ``then`` request was answered after the last ``first`` one was."""
        with self._lock:
            methods = [r.method for r in self.answered]
        return first in methods and then in methods[len(methods) - methods[::-1].index(first):]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        end = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > end:
                raise AssertionError("condition not reached")
            time.sleep(0.005)

    def broadcast(self, event: dict[str, Any], *, store: bool = False) -> dict[str, Any]:
        """Send an event (given an id and time here) to every subscribed connection."""
        with self._lock:
            event = {"id": next(self._event_ids), "time": "2026-11-25T14:00:00Z", **event}
            if store:
                self.stored_events.append(event)
            for conn in self.connections:
                conn.event(event)
        return event

    def set_state(self, job_id: str, state: str, **updates: Any) -> dict[str, Any]:
        """Move a job to ``state`` with a durable ``job.state`` event."""
        with self._lock:
            job = self.jobs[job_id]
            previous = job["state"]
            job.update(updates, state=state, updated_at="2026-11-25T14:00:01Z")
            include = self.plans.get(job_id, self.plan).job_in_event
            event: dict[str, Any] = {"type": "job.state", "job_id": job_id, "state": state, "previous_state": previous}
            if include:
                event["job"] = dict(job)
            return self.broadcast(event, store=True)

    def finish(self, job_id: str, outcome: str = "completed") -> None:
        """End a job as its plan says (used for ``hang`` plans and directly by tests)."""
        with self._lock:
            job = self.jobs[job_id]
            plan = self.plans.get(job_id, self.plan)
            if outcome == "completed":
                updates: dict[str, Any] = {"bytes_done": job["bytes_total"], "chunks_done": job["chunk_count"]}
                if job["kind"] == "upload":
                    asset_id = f"ast_{job_id}"
                    updates.update(asset_id=asset_id, content_id=f"cnt_{job_id}")
                    if plan.sha256 is not None:
                        updates["sha256"] = plan.sha256
                    self.assets[asset_id] = _asset_object(asset_id, job, plan)
                else:
                    updates["content_id"] = job.get("content_id") or "cnt_latest"
                    updates["files"] = [
                        {"local_path": os.path.join(job["dest_dir"], "run42.h5"), "size": job["bytes_total"]}
                    ]
                self.set_state(job_id, "completed", **updates)
            elif outcome == "failed":
                self.set_state(job_id, "failed", error=dict(plan.error))
            else:
                self.set_state(job_id, outcome)

    # --- handlers ---------------------------------------------------------------

    def _auth_status(self, conn: FakeConnection, request: Request) -> Any:
        if self.auth is None:
            raise Fail("auth_required", "not logged in: run `dataerai auth login`")
        return dict(self.auth)

    def _project_create(self, conn: FakeConnection, request: Request) -> Any:
        return {
            "project_id": "prj_1",
            "name": request.params["name"],
            "description": request.params.get("description", ""),
            "root_collection_id": "col_1",
            "allocation_bytes": 1 << 40,
            "used_bytes": 0,
            "role": "owner",
            "created_at": "2026-11-25T14:00:00Z",
            "something_new": {"from": "a newer daemon"},
        }

    def _new_job(self, kind: str, **fields: Any) -> dict[str, Any]:
        with self._lock:
            job_id = f"job_{next(self._job_ids):04d}"
            plan = self.plan
            self.plans[job_id] = plan
            job = {
                "job_id": job_id,
                "kind": kind,
                "state": "queued",
                "priority": fields.pop("priority", 0),
                "created_at": "2026-11-25T14:00:00Z",
                "updated_at": "2026-11-25T14:00:00Z",
                "bytes_done": 0,
                "bytes_total": plan.size,
                "chunk_count": max(1, plan.progress),
                "chunks_done": 0,
                "file_name": "run42.h5",
                "local_path": None,
                "dest_dir": None,
                "asset_id": None,
                "content_id": None,
                "files": [],
                "error": None,
                **fields,
            }
            self.jobs[job_id] = job
            self.stored_events.append(
                {
                    "id": next(self._event_ids),
                    "type": "job.state",
                    "time": "2026-11-25T14:00:00Z",
                    "job_id": job_id,
                    "state": "queued",
                    "previous_state": None,
                    "job": dict(job),
                }
            )
            if plan.before_subscribe:
                self.set_state(job_id, "running")
                self.finish(job_id, plan.outcome if plan.outcome != "hang" else "completed")
            return dict(self.jobs[job_id])

    def _upload_start(self, conn: FakeConnection, request: Request) -> Any:
        p = request.params
        # As the daemon: a new version of ``asset_id`` needs no title or owner.
        for key in ("local_path",) if "asset_id" in p else ("local_path", "title", "owner_type", "owner_id"):
            if key not in p:
                raise Fail("invalid_argument", f"{key} is required")
        if not os.path.isabs(p["local_path"]):
            raise Fail("invalid_argument", "local_path must be absolute")
        return self._new_job("upload", local_path=p["local_path"], priority=p.get("priority", 0))

    def _download_start(self, conn: FakeConnection, request: Request) -> Any:
        p = request.params
        if p.get("asset_id") == "missing":
            raise Fail("not_found", "no such asset")
        return self._new_job(
            "download",
            dest_dir=p["dest_dir"],
            asset_id=p["asset_id"],
            content_id=p.get("content_id"),
            priority=p.get("priority", 0),
        )

    def _job(self, job_id: Any) -> Any:
        with self._lock:
            if job_id not in self.jobs:
                raise Fail("not_found", f"no job {job_id}")
            return dict(self.jobs[job_id])

    def _job_list(self, conn: FakeConnection, request: Request) -> Any:
        states = request.params.get("states")
        with self._lock:
            jobs = [dict(j) for j in self.jobs.values() if states is None or j["state"] in states]
        return {"jobs": jobs}

    def _job_cancel(self, conn: FakeConnection, request: Request) -> Any:
        job_id = str(request.params.get("job_id"))
        job = self._job(job_id)
        if job["state"] in TERMINAL:
            raise Fail("conflict", f"job {job_id} is {job['state']}")
        self.set_state(job_id, "cancelled")
        return self._job(job_id)

    def _asset(self, asset_id: Any) -> Any:
        with self._lock:
            if asset_id not in self.assets:
                raise Fail("not_found", f"no asset {asset_id}")
            return dict(self.assets[asset_id])

    def _asset_update(self, conn: FakeConnection, request: Request) -> Any:
        params = dict(request.params)
        asset_id = params.pop("asset_id")
        asset = self._asset(asset_id)
        unknown = set(params) - {"title", "description", "alias", "tags", "metadata"}
        if unknown:
            raise Fail("invalid_argument", f"unknown fields {sorted(unknown)}")
        with self._lock:
            self.assets[asset_id] = {**asset, **params, "updated_at": "2026-11-25T15:00:00Z"}
            return dict(self.assets[asset_id])

    def _relationship_create(self, conn: FakeConnection, request: Request) -> Any:
        p = request.params
        return {
            "relationship_id": "rel_1",
            **p,
            "related_asset": {"id": p["to_asset_id"], "title": "raw"},
            "created_at": "2026-11-25T14:00:00Z",
        }

    def _subscribe(self, conn: FakeConnection, request: Request) -> Any:
        since = request.params.get("since")
        jobs = request.params.get("jobs")
        with self._lock:
            conn.subscribed = True
            conn.sub_jobs = list(jobs) if jobs is not None else None
            last = self.stored_events[-1]["id"] if self.stored_events else 0
            replay = [
                e
                for e in self.stored_events
                if since is not None and e["id"] > since and (jobs is None or e.get("job_id") in jobs)
            ]
            conn.respond(request.id, {"last_event_id": last})
            for event in replay:
                conn.send(encode_notification("event", event))
            for job_id in jobs or []:
                if job_id in self.jobs and self.jobs[job_id]["state"] not in TERMINAL:
                    self._spawn(self._run, conn, job_id)
        return NO_REPLY

    def _unsubscribe(self, conn: FakeConnection, request: Request) -> Any:
        with self._lock:
            conn.subscribed = False
            conn.sub_jobs = None
        return {}

    def _run(self, conn: FakeConnection, job_id: str) -> None:
        plan = self.plans.get(job_id, self.plan)
        with self._lock:
            if self.jobs[job_id]["state"] == "queued":
                self.set_state(job_id, "running")
            total = self.jobs[job_id]["bytes_total"]
        for i in range(plan.progress):
            if plan.delay:
                time.sleep(plan.delay)
            done = total * (i + 1) // plan.progress
            self.broadcast(
                {
                    "type": "job.progress",
                    "job_id": job_id,
                    "bytes_done": done,
                    "bytes_total": total,
                    "chunk_index": i,
                    "chunk_count": plan.progress,
                    "rate_bps": 2_500_000.0,
                    "file_index": 0,
                    "file_name": "run42.h5",
                    "a_field_from_the_future": True,
                }
            )
        if plan.close:
            conn.close()
            return
        if plan.outcome == "hang":
            return
        if plan.gap:
            with self._lock:
                # The final state change happens, but this subscriber only learns of a gap.
                self.jobs[job_id]["state"] = "running"
                subscribed, conn.subscribed = conn.subscribed, False
                self.finish(job_id, "completed")
                conn.subscribed = subscribed
            self.broadcast({"type": "gap", "missed_from": 1, "missed_to": 99})
            return
        self.finish(job_id, plan.outcome)


def _faulting(answer: Callable[[dict[str, Any]], Any]) -> Handler:
    """A ``FakeWatches`` method as a handler: its ``WatchFault`` becomes an error answer."""

    def handler(conn: FakeConnection, request: Request) -> Any:
        try:
            return answer(dict(request.params))
        except WatchFault as fault:
            raise Fail(fault.code, fault.message, **fault.data) from None

    return handler


def _asset_object(asset_id: str, job: dict[str, Any], plan: Plan) -> dict[str, Any]:
    return {
        "asset_id": asset_id,
        "title": "Run 42",
        "description": None,
        "alias": None,
        "tags": ["raw"],
        "metadata": {"beam": 7},
        "owner_type": "project",
        "owner_id": "prj_1",
        "project_id": "prj_1",
        "collection_id": "col_1",
        "created_by": "usr_1",
        "created_at": "2026-11-25T14:00:00Z",
        "updated_at": "2026-11-25T14:00:00Z",
        "latest_content": {
            "content_id": f"cnt_{job['job_id']}",
            "size": job["bytes_total"],
            "sha256": "cd" * 32,
            "file_name": "run42.h5",
            "created_at": "2026-11-25T14:00:00Z",
        },
    }


def make_binary(directory: Path, body: str, name: str = "dataerai") -> Path:
    """An executable shell script standing in for the `dataerai` CLI."""
    path = directory / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def fake_daemon_binary(directory: Path) -> Path:
    """A `dataerai` whose `daemon run` is the fake daemon, run by this Python."""
    return make_binary(directory, f'exec "{sys.executable}" "{FAKE_DAEMON_SCRIPT}" "$@"')


def main(argv: list[str]) -> int:
    """``sdk_fake_daemon.py daemon run``: serve $DATAERAI_SOCKET until SIGTERM."""
    if argv[1:3] != ["daemon", "run"]:
        print("usage: sdk_fake_daemon.py daemon run", file=sys.stderr)
        return 2
    path = os.environ["DATAERAI_SOCKET"]
    with open(path + ".pids", "a") as pids:
        pids.write(f"{os.getpid()}\n")
    delay = float(os.environ.get("FAKE_DAEMON_DELAY", "0"))
    lock = open(path + ".lock", "w")  # noqa: SIM115 - held for the life of the process
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another instance serves: exit quietly
    time.sleep(delay)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    daemon = FakeDaemon(path).start()
    try:
        while not stop.wait(0.1):
            pass
    finally:
        daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
