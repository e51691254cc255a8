"""Many uploads queued in one call through real processes: the SDK's ``upload_many`` and
``dataerai upload PATH...`` over ``upload.start_many``, all or nothing, in order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from dataerai import DaemonError

ITEMS = 300


def test_hundreds_of_uploads_go_in_one_call_all_or_nothing(make_stack: Any, tmp_path: Path) -> None:
    stack = make_stack()
    files = []
    for i in range(ITEMS):
        path = tmp_path / f"s{i:03d}.dat"
        path.write_bytes(b"%d" % i)
        files.append(path)
    (tmp_path / "empty").mkdir()

    def item(path: Path, **more: Any) -> dict[str, Any]:
        return {"local_path": path, "title": path.name, "owner_type": "project", "owner_id": stack.project_id,
                "path": f"many/{path.name}", **more}

    with stack.client() as client:
        spoiled = [item(p) for p in files]
        spoiled[150] = item(tmp_path / "empty")
        with pytest.raises(DaemonError) as refused:
            client.upload_many(spoiled)
        assert refused.value.code == "invalid_argument"
        assert refused.value.data["index"] == 150
        assert client.list_jobs() == [], "nothing of a refused call is queued"

        # The last item first: the scheduler starts it before the 299 queued ahead of it.
        jobs = client.upload_many([item(p, priority=9 if i == ITEMS - 1 else 0) for i, p in enumerate(files)])
        assert [job.local_path for job in jobs] == [str(p) for p in files]
        assert len({job.job_id for job in jobs}) == ITEMS
        assert len(client.list_jobs()) == ITEMS
        done = client.wait(jobs[-1].job_id, timeout_s=60)
        assert done.state == "completed"
        assert client.get_metadata(done.asset_id or "").title == files[-1].name

    listed = tmp_path / "list.txt"
    listed.write_text("".join(f"{p}\n\n" for p in files[:3]))
    out = stack.cli("upload", "--from-file", str(listed), "--project", stack.project_id, "--no-wait", "--json")
    queued = [json.loads(line) for line in out.stdout.splitlines()]
    assert [job["local_path"] for job in queued] == [str(p) for p in files[:3]]
    assert {job["state"] for job in queued} <= {"queued", "running", "completed"}
