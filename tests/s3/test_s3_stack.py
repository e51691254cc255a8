"""The repository server on PostgreSQL and SeaweedFS (S3), with the daemon, as real processes.

Needs ``DATAERAI_TEST_POSTGRES_URL`` (skipped with a message otherwise); SeaweedFS is
started by the tests (``tools/seaweed.py``). Parts are at least 5 MiB: S3 refuses
smaller ones except the last.
"""

from __future__ import annotations

import hashlib
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from stack import Stack, make_file, wait_for

MiB = 1024 * 1024


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _requests(log: Path) -> list[dict[str, Any]]:
    lines = []
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "request":
            lines.append(entry)
    return lines


@pytest.fixture
def s3_stack(tmp_path_factory: pytest.TempPathFactory, seaweed: Any, s3_bucket: str,
             postgres_database: str) -> Iterator[Any]:
    """``s3_stack(prefix, parts="server", daemon_config=...)``: a server on PostgreSQL and S3,
    a daemon, a user, a project."""
    stacks: list[Stack] = []

    def make(prefix: str, parts: str = "server", daemon_config: dict[str, Any] | None = None) -> Stack:
        stack = Stack(tmp_path_factory.mktemp("s3st", numbered=True), daemon_config=daemon_config)
        stacks.append(stack)
        stack.start_server(storage=f"s3://{s3_bucket}/{prefix}?parts={parts}", database=postgres_database,
                           env=seaweed.env)
        stack.login(stack.add_user(f"{prefix}@example.org", scope="write"))
        stack.start_daemon()
        with stack.client() as client:
            stack.project_id = client.create_project(prefix).project_id
        return stack

    yield make
    for stack in stacks:
        stack.close()


def test_upload_and_download_through_the_daemon(s3_stack: Any, seaweed: Any, s3_bucket: str,
                                                tmp_path: Path) -> None:
    stack = s3_stack("roundtrip")
    source = make_file(tmp_path / "data.bin", 12 * MiB + 321, seed=1)
    with stack.client() as client:
        result = client.upload(source, title="s3", owner_type="project", owner_id=stack.project_id, chunk_size_mb=5)
        dl = client.download(result.asset_id, dest_dir=tmp_path / "out")
    assert sha256(Path(dl.files[0].local_path)) == sha256(source)
    # The bytes are in the bucket, as one object of three parts...
    head = seaweed.client().head_object(Bucket=s3_bucket, Key=_only_content(seaweed, s3_bucket, "roundtrip"))
    assert head["ContentLength"] == 12 * MiB + 321
    # ... and the download went straight to the store: the server served no content bytes.
    served = [r for r in _requests(stack.root / "server.log") if r["path"].startswith("/api/v1/contents/")]
    assert served == []
    parts_in = [r for r in _requests(stack.root / "server.log") if "/parts/" in r["path"] and r["method"] == "PUT"]
    assert len(parts_in) == 3  # ?parts=server: the server took the parts and sent them on


def _only_content(seaweed: Any, bucket: str, prefix: str) -> str:
    listed = seaweed.client().list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/contents/")
    keys = [o["Key"] for o in listed.get("Contents", [])]
    assert len(keys) == 1, keys
    return str(keys[0])


def _open_uploads(seaweed: Any, bucket: str, prefix: str) -> list[str]:
    listed = seaweed.client().list_multipart_uploads(Bucket=bucket, Prefix=f"{prefix}/")
    return [u["UploadId"] for u in listed.get("Uploads", [])]


@pytest.mark.parametrize("parts", ["server", "direct"])
def test_sigkill_mid_upload_resumes_the_same_multipart_upload(s3_stack: Any, seaweed: Any, s3_bucket: str,
                                                              tmp_path: Path, parts: str) -> None:
    prefix = f"killed-{parts}"
    stack = s3_stack(prefix, parts=parts, daemon_config={"bandwidth_limit_bps": 24 * MiB, "parts_per_job": 2})
    size = 40 * MiB
    source = make_file(tmp_path / "big.bin", size, seed=7)
    with stack.client() as client:
        job = client.upload(source, title="big", owner_type="project", owner_id=stack.project_id,
                            chunk_size_mb=5, wait=False)

        def far_enough() -> bool:
            state = client.call("job.get", {"job_id": job.job_id})
            assert state["state"] not in ("completed", "failed"), state
            return bool(state["chunks_done"] >= 3)

        wait_for(far_enough, 60, "three parts", interval=0.05)
        upload_id = client.call("job.get", {"job_id": job.job_id})["upload_id"]
    before = _open_uploads(seaweed, s3_bucket, prefix)
    assert len(before) == 1  # one S3 multipart upload holds the parts so far
    stack.stop_daemon(signal.SIGKILL)
    stack.start_daemon()
    with stack.client() as client:
        done = client.wait(job.job_id, timeout_s=120)
        assert done.state == "completed", done
        assert client.call("job.get", {"job_id": job.job_id})["upload_id"] == upload_id  # the same session
    with stack.api() as api:
        session = api.get(f"/uploads/{upload_id}").json()
    if parts == "server":
        resent = sum(p["writes"] - 1 for p in session["parts"])
        assert session["bytes_received"] - size <= 2 * 5 * MiB
    else:
        # Each attempt to send a part asks the server for its URL first: count those.
        targets = [r["path"] for r in _requests(stack.root / "server.log")
                   if r["method"] == "POST" and r["path"].endswith("/target")]
        assert len(set(targets)) == 8
        resent = len(targets) - len(set(targets))
    assert resent <= 2, f"{resent} parts were sent twice"
    # The same multipart upload was completed: no other was opened, none is left.
    assert _open_uploads(seaweed, s3_bucket, prefix) == []
    head = seaweed.client().head_object(Bucket=s3_bucket, Key=f"{prefix}/contents/{upload_id}", ChecksumMode="ENABLED")
    assert head["ContentLength"] == size and head.get("ChecksumSHA256", "").endswith("-8")
    with stack.client() as client:
        dl = client.download(done.asset_id, dest_dir=tmp_path / "out")
    assert sha256(Path(dl.files[0].local_path)) == sha256(source)


def test_two_servers_on_one_database_and_bucket_serve_one_upload(s3_stack: Any, seaweed: Any, s3_bucket: str,
                                                                 postgres_database: str, tmp_path: Path) -> None:
    one = s3_stack("twoservers")
    two = Stack(tmp_path / "two")
    try:
        two.start_server(storage=f"s3://{s3_bucket}/twoservers?parts=server&reads=server",
                         database=postgres_database, env=seaweed.env)
        assert two.url != one.url
        data = make_file(tmp_path / "f.bin", 11 * MiB + 7, seed=3).read_bytes()
        part = 5 * MiB
        pieces = [data[i : i + part] for i in range(0, len(data), part)]
        apis = [one.api(), two.api(one.token)]
        body = {"owner_type": "project", "owner_id": one.project_id, "file_name": "f.bin", "size": len(data),
                "part_size": part, "sha256": hashlib.sha256(data).hexdigest(), "idempotency_key": "two-1"}
        created = apis[0].post("/uploads", json=body)
        assert created.status_code == 201, created.text
        upload_id = created.json()["upload_id"]
        with httpx.Client(timeout=60) as http:
            for number, piece in enumerate(pieces, start=1):
                api = apis[number % 2]  # parts 1 and 3 through server two, part 2 through server one
                target = api.post(f"/uploads/{upload_id}/parts/{number}/target",
                                  json={"sha256": hashlib.sha256(piece).hexdigest(), "size": len(piece)}).json()
                assert target["url"].startswith(api.base_url.scheme + "://" + api.base_url.netloc.decode())
                put = http.request(target["method"], target["url"], content=piece, headers=target["headers"])
                assert put.status_code == 200, put.text
        # Each server sees the parts the other took: the database is the truth, not the process.
        assert [p["number"] for p in apis[0].get(f"/uploads/{upload_id}").json()["parts"]] == [1, 2, 3]
        done = apis[1].post(f"/uploads/{upload_id}/complete", json={"idempotency_key": "two-1"})
        assert done.status_code == 200, done.text
        again = apis[0].post(f"/uploads/{upload_id}/complete", json={"idempotency_key": "two-1"})
        assert again.json() == done.json()
        asset_id = done.json()["asset_id"]
        with httpx.Client(timeout=60) as http:
            for api in apis:
                target = api.get(f"/assets/{asset_id}/download").json()
                got = http.get(target["url"], headers={**target["headers"], "Range": f"bytes={part - 3}-{part + 3}"})
                assert got.status_code == 206 and got.content == data[part - 3 : part + 4]
                assert http.get(target["url"], headers=target["headers"]).content == data
        # Server one hands out presigned S3 URLs; server two (reads=server) serves the bytes itself.
        assert "X-Amz-Signature" in apis[0].get(f"/assets/{asset_id}/download").json()["url"]
        assert "/api/v1/contents/" in apis[1].get(f"/assets/{asset_id}/download").json()["url"]
        for api in apis:
            api.close()
    finally:
        two.close()


def test_parts_straight_to_the_store(s3_stack: Any, seaweed: Any, s3_bucket: str, tmp_path: Path) -> None:
    stack = s3_stack("direct", parts="direct", daemon_config={"retry_base_s": 0.1, "retry_cap_s": 0.5})
    source = make_file(tmp_path / "direct.bin", 11 * MiB, seed=5)
    with stack.client() as client:
        job = client.upload(source, title="direct", owner_type="project", owner_id=stack.project_id,
                            chunk_size_mb=5, wait=False)
        done = client.wait(job.job_id, timeout_s=120)
    # The bytes went straight to the store: the server took no part body.
    assert not [r for r in _requests(stack.root / "server.log") if "/parts/" in r["path"] and r["method"] == "PUT"]
    assert done.state == "completed", done
    with stack.client() as client:
        dl = client.download(done.asset_id, dest_dir=tmp_path / "out")
    assert hashlib.sha256(Path(dl.files[0].local_path).read_bytes()).hexdigest() == \
        hashlib.sha256(source.read_bytes()).hexdigest()


def test_parts_smaller_than_s3_takes_are_refused_at_creation(s3_stack: Any, tmp_path: Path) -> None:
    stack = s3_stack("small", parts="direct")
    with stack.api() as api:
        response = api.post("/uploads", json={
            "owner_type": "project", "owner_id": stack.project_id, "title": "small", "file_name": "s.bin",
            "size": 11 * MiB, "part_size": MiB, "idempotency_key": "small-parts"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_argument", "part_size")


def test_the_same_file_twice_on_s3_is_one_object(s3_stack: Any, seaweed: Any, s3_bucket: str, tmp_path: Path) -> None:
    # Parts straight to the store; a copy under another inode (speculative) and the file again (digest cache).
    stack = s3_stack("dedup", parts="direct", daemon_config={"bandwidth_limit_bps": 16 * MiB, "parts_per_job": 2})
    source = make_file(tmp_path / "data.bin", 30 * MiB, seed=9)
    copy = tmp_path / "copy.bin"
    copy.write_bytes(source.read_bytes())
    results = []
    with stack.client() as client:
        for path in (source, copy, source):
            results.append(client.upload(path, title=path.name, owner_type="project", owner_id=stack.project_id,
                                         chunk_size_mb=5))
        assert [r.deduplicated for r in results] == [False, True, True]
        dl = client.download(results[1].asset_id, dest_dir=tmp_path / "out")
    assert sha256(Path(dl.files[0].local_path)) == sha256(source)
    assert len({r.content_id for r in results}) == 3
    _only_content(seaweed, s3_bucket, "dedup")  # one object in the bucket for the three contents
    assert _open_uploads(seaweed, s3_bucket, "dedup") == []  # the deduplicated sessions' uploads were aborted
    with stack.api() as api:
        sessions = [api.get(f"/uploads/{client_job}").json() for client_job in
                    (_upload_id(stack, r.transfer_id) for r in results)]
    assert sessions[0]["bytes_received"] == 30 * MiB
    assert sessions[1]["bytes_received"] < 30 * MiB // 2 and sessions[2]["bytes_received"] == 0


def _upload_id(stack: Stack, job_id: str) -> str:
    with stack.client() as client:
        return str(client.call("job.get", {"job_id": job_id})["upload_id"])


def test_s3_sessions_take_each_part_s_own_digest_only(s3_stack: Any) -> None:
    # The store checks the digest signed into a part's URL against that part alone.
    stack = s3_stack("own-digests", parts="direct")
    with stack.api() as api:
        session = api.post("/uploads", json={
            "owner_type": "project", "owner_id": stack.project_id, "title": "own", "file_name": "o.bin",
            "size": 11 * MiB, "part_size": 5 * MiB, "idempotency_key": "own-digests"}).json()
        assert session["part_digests"] == ["sha256"]
        response = api.post(f"/uploads/{session['upload_id']}/parts/2/target",
                            json={"prefix_sha256": "0" * 64, "size": 5 * MiB})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_argument", "prefix_sha256")
