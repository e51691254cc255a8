"""The network between the daemon and the repository fails: connections reset mid-transfer and
a short outage in which every connection is refused. The daemon reaches the real server
through a TCP proxy (``tools/chaos_proxy.py``) that does this on cue."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chaos_proxy import ChaosProxy
from stack import Stack, make_file, wait_for

MiB = 1024 * 1024
PARTS = 4


@pytest.fixture
def proxied(make_stack: Any) -> Iterator[tuple[Stack, ChaosProxy]]:
    config = {"bandwidth_limit_bps": 24 * MiB, "parts_per_job": PARTS, "retry_base_s": 0.1, "retry_cap_s": 1.0}
    stack = make_stack(daemon_config=config, start_daemon=False)
    assert stack.port is not None and stack.token is not None
    proxy = ChaosProxy(stack.port)
    stack.cli("auth", "login", "--server", f"http://127.0.0.1:{proxy.port}", "--token-stdin",
              input=stack.token + "\n")
    stack.start_daemon()
    with stack.client() as client:
        stack.project_id = client.create_project("Beamline 7").project_id
    yield stack, proxy
    proxy.close()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _hurt_at(stack: Stack, job_id: str, faults: dict[int, Any]) -> None:
    """Call each fault once the job has moved past its byte count (in MiB)."""
    for at_mib, fault in sorted(faults.items()):
        def past(at: int = at_mib) -> bool:
            with stack.client() as client:
                job = client.get_job(job_id)
            assert job.state not in ("completed", "failed", "cancelled"), job
            return bool(job.bytes_done >= at * MiB)

        wait_for(past, 60, f"{at_mib} MiB of {job_id}", interval=0.02)
        fault()


def test_an_upload_goes_on_through_resets_and_an_outage_and_makes_one_asset(
        proxied: tuple[Stack, ChaosProxy], tmp_path: Path) -> None:
    stack, proxy = proxied
    size = 32 * MiB
    source = make_file(tmp_path / "run.bin", size, seed=31)
    with stack.client() as client:
        job = client.upload(source, title="run", owner_type="project", owner_id=stack.project_id,
                            chunk_size_mb=1, wait=False)
    _hurt_at(stack, job.job_id, {6: proxy.cut, 14: lambda: proxy.outage(1.5), 22: proxy.cut})
    with stack.client() as client:
        done = client.wait(job.job_id, timeout_s=120)
        upload_id = client.call("job.get", {"job_id": job.job_id})["upload_id"]
    assert done.state == "completed", done
    with stack.api() as api:
        listed = api.get("/assets", params={"project_id": stack.project_id}).json()["assets"]
        session = api.get(f"/uploads/{upload_id}").json()
    assert [a["asset_id"] for a in listed] == [done.asset_id]
    assert listed[0]["latest_content"]["sha256"] == _sha256(source)
    # Each reset loses at most the parts in flight; the outage refuses connections, sends nothing.
    assert session["bytes_received"] - size <= 3 * PARTS * MiB, session["bytes_received"] - size


def test_a_download_goes_on_through_resets(proxied: tuple[Stack, ChaosProxy], tmp_path: Path) -> None:
    stack, proxy = proxied
    source = make_file(tmp_path / "run.bin", 24 * MiB, seed=32)
    with stack.client() as client:
        asset_id = client.upload(source, title="run", owner_type="project", owner_id=stack.project_id).asset_id
        job = client.download(asset_id, tmp_path / "out", wait=False)
    _hurt_at(stack, job.job_id, {4: proxy.cut, 12: proxy.cut})
    with stack.client() as client:
        done = client.wait(job.job_id, timeout_s=120)
    assert done.state == "completed", done
    assert _sha256(tmp_path / "out" / "run.bin") == _sha256(source)
    assert not list((tmp_path / "out").glob("*.part"))
