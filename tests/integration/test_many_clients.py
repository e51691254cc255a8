"""Twenty client processes at once on one daemon: each submits and watches its own jobs,
and each gets its own results and events, tagged as its own client."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from stack import Stack, make_file

CLIENTS = 20
CHILD = textwrap.dedent("""
    import hashlib, json, sys
    from dataerai import DataeraiClient

    socket_path, project_id, *paths = sys.argv[1:]
    sys.stdin.readline()  # the start signal: all twenty submit at once
    with DataeraiClient(socket_path=socket_path, auto_start=False) as client, \\
            DataeraiClient(socket_path=socket_path, auto_start=False) as watcher:
        jobs = [client.upload(p, title=p, owner_type="project", owner_id=project_id, wait=False) for p in paths]
        ids = {j.job_id for j in jobs}
        ended, events = set(), []
        with watcher.events(since=0, jobs=ids) as stream:
            for event in stream:
                events.append({"id": event.id, "type": event.type, "job_id": event.job_id, "state": event.state})
                if event.type == "job.state" and event.state in ("completed", "failed", "cancelled"):
                    ended.add(event.job_id)
                if ended == ids:
                    break
        results = [client.wait(j.job_id, timeout_s=120) for j in jobs]
        back = [client.download(r.asset_id, paths[0] + ".back") for r in results]
        print(json.dumps({
            "jobs": [{"job_id": r.job_id, "state": r.state, "asset_id": r.asset_id, "client": r.client,
                      "local_path": r.local_path} for r in results],
            "events": events,
            "downloads": [hashlib.sha256(open(d.files[0].local_path, "rb").read()).hexdigest() for d in back],
        }))
""")


@pytest.mark.slow
def test_twenty_processes_each_get_their_own_results_and_events(stack: Stack, tmp_path: Path) -> None:
    children = []
    files: list[list[Path]] = []
    for i in range(CLIENTS):
        mine = [make_file(tmp_path / f"c{i}-{k}.bin", 20_000 + 1000 * i + k, seed=100 * i + k) for k in range(2)]
        files.append(mine)
        children.append(subprocess.Popen(
            [sys.executable, "-c", CHILD, str(stack.socket_path), stack.project_id, *map(str, mine)],
            env=stack.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    try:
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        outputs = [child.communicate(timeout=300) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert [child.returncode for child in children] == [0] * CLIENTS, [err for _, err in outputs if err][:1]
    reports = [json.loads(out) for out, _ in outputs]

    all_jobs, all_assets, tags = set(), set(), set()
    for child, report, mine in zip(children, reports, files, strict=True):
        jobs = report["jobs"]
        ids = {j["job_id"] for j in jobs}
        assert [j["local_path"] for j in jobs] == [str(p) for p in mine]
        assert {j["state"] for j in jobs} == {"completed"}
        assert {j["client"] for j in jobs} == {f"pid:{child.pid}"}
        tags.add(f"pid:{child.pid}")
        # Its events are its own jobs' only, in increasing id order, and end with both completed.
        assert report["events"] and {e["job_id"] for e in report["events"]} == ids
        event_ids = [e["id"] for e in report["events"]]
        assert event_ids == sorted(set(event_ids))
        completed = {e["job_id"] for e in report["events"] if e["state"] == "completed"}
        assert completed == ids
        assert report["downloads"] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in mine]
        all_jobs |= ids
        all_assets |= {j["asset_id"] for j in jobs}
    assert len(all_jobs) == len(all_assets) == 2 * CLIENTS
    assert len(tags) == CLIENTS
