"""Content deduplication with proof of possession, on real server processes (directory and S3 storage).

A session whose SHA-256 and size match a held content completes without its bytes once the
client proves it has them: the digests of random byte ranges the server picks. A digest
alone never grants content, a wrong answer never says whether the content existed, the new
content shares the held one's stored bytes, and those go with the last content using them.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_harness import PART, Env, Server, create_upload, error, new_project, ok, parts_of, send_part, sha256


@dataclass
class Repo:
    server: Server
    ada: httpx.Client
    bob: httpx.Client
    #: The smallest part size (all but the last) this storage takes.
    part_size: int


@pytest.fixture(scope="module")
def s3_server(start_server: Any, seaweed: Any, s3_bucket: str) -> Iterator[Repo]:
    import os

    saved = dict(os.environ)
    os.environ.update(seaweed.env)  # the server process reads the store's endpoint and keys from its environment
    try:
        server: Server = start_server("--storage", f"s3://{s3_bucket}/dedup-{secrets.token_hex(4)}?parts=server")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    ada, bob = (server.client(server.add_user(f"{who}@example.org").strip()) for who in ("ada", "bob"))
    yield Repo(server, ada, bob, 5 << 20)
    ada.close()
    bob.close()


@pytest.fixture(params=["local", "s3"])
def repo(request: pytest.FixtureRequest, env: Env) -> Repo:
    if request.param == "local":
        return Repo(env.server, env.ada, env.bob, PART)
    return request.getfixturevalue("s3_server")  # type: ignore[no-any-return]


def full_upload(client: httpx.Client, project_id: str, data: bytes, part_size: int, **fields: Any) -> dict[str, Any]:
    session = create_upload(client, project_id, data, part_size=part_size, **fields)
    for number, body in enumerate(parts_of(data, part_size), start=1):
        ok(send_part(client, session["upload_id"], number, body))
    return ok(client.post(f"/api/v1/uploads/{session['upload_id']}/complete", json={}))  # type: ignore[no-any-return]


def challenge(client: httpx.Client, upload_id: str, digest: str) -> dict[str, Any]:
    return ok(client.post(f"/api/v1/uploads/{upload_id}/dedup", json={"sha256": digest}))  # type: ignore[no-any-return]


def answer(data: bytes, ranges: list[dict[str, int]]) -> list[str]:
    return [sha256(data[r["offset"] : r["offset"] + r["length"]]) for r in ranges]


def prove(client: httpx.Client, upload_id: str, challenge_id: str, digests: list[str], **extra: Any) -> httpx.Response:
    return client.post(f"/api/v1/uploads/{upload_id}/dedup/{challenge_id}", json={"digests": digests, **extra})


def storage_key(server: Server, content_id: str) -> str:
    with server.db() as db:
        row = db.execute("SELECT storage_key FROM contents WHERE id = ?", (content_id,)).fetchone()
    assert row is not None
    return str(row[0])


def download(client: httpx.Client, asset_id: str) -> bytes:
    target = ok(client.get(f"/api/v1/assets/{asset_id}/download"))
    response = httpx.get(target["url"], headers=target["headers"], timeout=30, trust_env=False)
    assert response.status_code == 200, response.text
    return response.content


def test_a_proof_completes_without_the_bytes_and_shares_the_stored_object(repo: Repo) -> None:
    project = new_project(repo.ada)["project_id"]
    data = secrets.token_bytes(300_000)
    held = full_upload(repo.ada, project, data, max(repo.part_size, len(data)))

    # Another user, another project: the repository holds the content, the proof is what counts.
    other = new_project(repo.bob)
    session = create_upload(repo.bob, other["project_id"], data, part_size=repo.part_size, sha256=None,
                            file_name="copy.bin")
    asked = challenge(repo.bob, session["upload_id"], sha256(data))
    ranges = asked["ranges"]
    assert len(ranges) == 4 and all(r["length"] == 64 * 1024 for r in ranges)
    assert all(r["offset"] >= 0 and r["offset"] + r["length"] <= len(data) for r in ranges)
    result = ok(prove(repo.bob, session["upload_id"], asked["challenge_id"], answer(data, ranges),
                      idempotency_key="dedup-1"))
    assert result["deduplicated"] is True
    assert result["sha256"] == sha256(data) and result["size"] == len(data)
    assert result["content_id"] != held["content_id"] and result["asset_id"] != held["asset_id"]

    after = ok(repo.bob.get(f"/api/v1/uploads/{session['upload_id']}"))
    assert after["state"] == "completed" and after["bytes_received"] == 0 and after["parts"] == []
    assert after["result"]["content_id"] == result["content_id"]
    assert storage_key(repo.server, result["content_id"]) == storage_key(repo.server, held["content_id"])
    asset = ok(repo.bob.get(f"/api/v1/assets/{result['asset_id']}"))
    assert asset["latest_content"]["files"] == [{"path": "copy.bin", "offset": 0, "size": len(data),
                                                 "sha256": sha256(data)}]
    assert download(repo.bob, result["asset_id"]) == data
    # The allocation is logical: the deduplicated content counts against bob's project.
    assert ok(repo.bob.get(f"/api/v1/projects/{other['project_id']}"))["used_bytes"] == len(data)

    # A retry (same challenge, same key) and a plain completion with the key return the same result.
    again = ok(prove(repo.bob, session["upload_id"], asked["challenge_id"], answer(data, ranges),
                     idempotency_key="dedup-1"))
    assert again == result
    completed = ok(repo.bob.post(f"/api/v1/uploads/{session['upload_id']}/complete",
                                 json={"idempotency_key": "dedup-1"}))
    assert {k: completed[k] for k in ("asset_id", "content_id", "sha256")} == {
        k: result[k] for k in ("asset_id", "content_id", "sha256")}


def test_a_wrong_proof_says_no_match_exactly_as_when_nothing_is_held(env: Env) -> None:
    project = new_project(env.ada)["project_id"]
    data = secrets.token_bytes(200_000)
    full_upload(env.ada, project, data, PART)
    nothing = secrets.token_bytes(200_000)  # held nowhere

    answers = []
    for claimed in (data, nothing):
        session = create_upload(env.bob, new_project(env.bob)["project_id"], claimed, sha256=None)
        asked = challenge(env.bob, session["upload_id"], sha256(claimed))
        # The challenge looks the same either way: four ranges of 64 KiB, nothing about the content.
        assert set(asked) == {"challenge_id", "ranges", "expires_at"}
        assert [r["length"] for r in asked["ranges"]] == [64 * 1024] * 4
        wrong = [sha256(b"guess %d" % i) for i in range(4)]
        refused = prove(env.bob, session["upload_id"], asked["challenge_id"], wrong)
        # Not sooner than the floor either way, so reading the held ranges does not show.
        assert refused.elapsed.total_seconds() >= 0.1
        answers.append(error(refused, 409, "conflict"))
        # The session goes on: the parts can still be sent and completed as usual.
        view = ok(env.bob.get(f"/api/v1/uploads/{session['upload_id']}"))
        assert view["state"] == "open"
    assert answers[0] == answers[1]
    assert answers[0]["reason"] == "no_match"

    # Knowing the digest and the content's first bytes is not enough either: each range is checked.
    session = create_upload(env.bob, new_project(env.bob)["project_id"], data, sha256=None)
    asked = challenge(env.bob, session["upload_id"], sha256(data))
    digests = answer(data, asked["ranges"])
    digests[-1] = sha256(b"not it")
    assert error(prove(env.bob, session["upload_id"], asked["challenge_id"], digests), 409, "conflict")["reason"] \
        == "no_match"
    for number, body in enumerate(parts_of(data, PART), start=1):
        ok(send_part(env.bob, session["upload_id"], number, body))
    done = ok(env.bob.post(f"/api/v1/uploads/{session['upload_id']}/complete", json={"sha256": sha256(data)}))
    assert done["sha256"] == sha256(data)


def test_a_challenge_answers_once_and_belongs_to_its_session(env: Env) -> None:
    project = new_project(env.ada)["project_id"]
    data = secrets.token_bytes(150_000)
    full_upload(env.ada, project, data, PART)
    session = create_upload(env.ada, project, data)
    asked = challenge(env.ada, session["upload_id"], sha256(data))
    # A wrong answer uses the challenge up: the right one afterwards is refused, a new challenge works.
    assert error(prove(env.ada, session["upload_id"], asked["challenge_id"], [sha256(b"x")] * len(asked["ranges"])),
                 409, "conflict")["reason"] == "no_match"
    used = error(prove(env.ada, session["upload_id"], asked["challenge_id"], answer(data, asked["ranges"])),
                 409, "conflict")
    assert used["reason"] == "challenge_used"
    # Someone else's session, or another session's challenge, is not found.
    error(env.bob.post(f"/api/v1/uploads/{session['upload_id']}/dedup", json={"sha256": sha256(data)}), 404,
          "not_found")
    other = create_upload(env.ada, project, data)
    elsewhere = challenge(env.ada, other["upload_id"], sha256(data))
    error(prove(env.ada, session["upload_id"], elsewhere["challenge_id"], answer(data, elsewhere["ranges"])), 404,
          "not_found")
    # The wrong number of digests, or another digest than the session's, is a bad request that uses nothing up.
    fresh = challenge(env.ada, session["upload_id"], sha256(data))
    error(prove(env.ada, session["upload_id"], fresh["challenge_id"], [sha256(b"x")]), 400, "invalid_argument")
    error(env.ada.post(f"/api/v1/uploads/{session['upload_id']}/dedup", json={"sha256": sha256(b"other")}), 400,
          "invalid_argument")
    error(env.ada_read.post(f"/api/v1/uploads/{session['upload_id']}/dedup", json={"sha256": sha256(data)}), 403,
          "permission_denied")
    result = ok(prove(env.ada, session["upload_id"], fresh["challenge_id"], answer(data, fresh["ranges"])))
    assert result["deduplicated"] is True
    # A completed session takes no new challenge.
    error(env.ada.post(f"/api/v1/uploads/{session['upload_id']}/dedup", json={"sha256": sha256(data)}), 409,
          "conflict")


def test_empty_and_tiny_contents(env: Env) -> None:
    project = new_project(env.ada)["project_id"]
    full_upload(env.ada, project, b"", PART)
    session = create_upload(env.ada, project, b"")
    asked = challenge(env.ada, session["upload_id"], sha256(b""))
    assert asked["ranges"] == []  # nothing to prove about no bytes
    result = ok(prove(env.ada, session["upload_id"], asked["challenge_id"], []))
    assert result["deduplicated"] is True and result["size"] == 0

    tiny = secrets.token_bytes(10)
    full_upload(env.ada, project, tiny, PART)
    session = create_upload(env.ada, project, tiny)
    asked = challenge(env.ada, session["upload_id"], sha256(tiny))
    # Shorter ranges, never the whole content (whose digest the client claimed already).
    assert asked["ranges"] and all(r["length"] == 5 for r in asked["ranges"])
    assert ok(prove(env.ada, session["upload_id"], asked["challenge_id"], answer(tiny, asked["ranges"])))[
        "deduplicated"] is True


def _content_dirs(server: Server, key: str) -> list[Path]:
    return list((server.data_dir / "objects" / "contents").glob(f"*/{key}"))


def test_deleting_keeps_shared_bytes_until_the_last_content_goes(env: Env) -> None:
    project = new_project(env.ada)["project_id"]
    data = secrets.token_bytes(250_000)
    first = full_upload(env.ada, project, data, PART, file_name="first.bin")
    key = storage_key(env.server, first["content_id"])
    assert _content_dirs(env.server, key)
    copies = []
    for name in ("second.bin", "third.bin"):
        session = create_upload(env.ada, project, data, file_name=name)
        asked = challenge(env.ada, session["upload_id"], sha256(data))
        copies.append(ok(prove(env.ada, session["upload_id"], asked["challenge_id"], answer(data, asked["ranges"]))))
    assert ok(env.ada.get(f"/api/v1/projects/{project}"))["used_bytes"] == 3 * len(data)

    ok(env.ada.delete(f"/api/v1/assets/{first['asset_id']}"), 204)
    assert _content_dirs(env.server, key), "the bytes stay while other contents use them"
    assert download(env.ada, copies[0]["asset_id"]) == data
    # The held content is gone, its copies still prove possession against the same bytes.
    session = create_upload(env.ada, project, data, file_name="fourth.bin")
    asked = challenge(env.ada, session["upload_id"], sha256(data))
    fourth = ok(prove(env.ada, session["upload_id"], asked["challenge_id"], answer(data, asked["ranges"])))
    assert storage_key(env.server, fourth["content_id"]) == key

    for copy in (*copies, fourth):
        assert _content_dirs(env.server, key)
        ok(env.ada.delete(f"/api/v1/assets/{copy['asset_id']}"), 204)
    assert not _content_dirs(env.server, key), "the last content took the bytes with it"
    assert ok(env.ada.get(f"/api/v1/projects/{project}"))["used_bytes"] == 0
    # Nothing is held now: the same proof finds no match.
    session = create_upload(env.ada, project, data)
    asked = challenge(env.ada, session["upload_id"], sha256(data))
    assert error(prove(env.ada, session["upload_id"], asked["challenge_id"], answer(data, asked["ranges"])), 409,
                 "conflict")["reason"] == "no_match"


def test_a_directory_content_keeps_its_own_manifest(env: Env) -> None:
    project = new_project(env.ada)["project_id"]
    a, b = secrets.token_bytes(70_000), secrets.token_bytes(90_000)
    data = a + b
    files = [{"path": "run/a.bin", "size": len(a)}, {"path": "run/b.bin", "size": len(b)}]
    full_upload(env.ada, project, data, PART, file_name="run", files=files)
    renamed = [{"path": "other/x.bin", "size": len(a)}, {"path": "other/y.bin", "size": len(b)}]
    session = create_upload(env.ada, project, data, file_name="other", files=renamed)
    asked = challenge(env.ada, session["upload_id"], sha256(data))
    result = ok(prove(env.ada, session["upload_id"], asked["challenge_id"], answer(data, asked["ranges"]),
                      file_sha256=[sha256(a), sha256(b)]))
    listed = ok(env.ada.get(f"/api/v1/assets/{result['asset_id']}/files"))["files"]
    assert [(f["path"], f["offset"], f["size"], f["sha256"]) for f in listed] == [
        ("other/x.bin", 0, len(a), sha256(a)), ("other/y.bin", len(a), len(b), sha256(b))]
    assert hashlib.sha256(download(env.ada, result["asset_id"])).hexdigest() == sha256(data)
