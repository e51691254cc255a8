"""Resumable upload sessions end to end against a real server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from server_harness import (
    ALLOCATION,
    PART,
    Env,
    create_upload,
    data_of,
    error,
    new_project,
    ok,
    parts_of,
    send_part,
    sha256,
    upload,
)


def _session(env: Env, upload_id: str, client: httpx.Client | None = None) -> dict[str, Any]:
    return ok((client or env.ada).get(f"/api/v1/uploads/{upload_id}"))  # type: ignore[no-any-return]


def test_project_has_root_collection_and_allocation(env: Env) -> None:
    project = new_project(env.ada, "Beamline 7")
    assert project["project_id"].startswith("prj_")
    assert project["root_collection_id"].startswith("col_")
    assert project["allocation_bytes"] == ALLOCATION
    assert project["used_bytes"] == 0
    assert project["role"] == "owner"
    assert project["description"] == ""
    assert project["created_at"].endswith("Z")
    assert ok(env.ada.get(f"/api/v1/projects/{project['project_id']}")) == project
    assert ok(env.ada_read.get(f"/api/v1/projects/{project['project_id']}")) == project
    error(env.bob.get(f"/api/v1/projects/{project['project_id']}"), 404, "not_found")
    error(env.ada.get("/api/v1/projects/prj_nope"), 404, "not_found")


def test_full_session_out_of_order_with_resend_and_bad_part(env: Env) -> None:
    project = new_project(env.ada)
    data = data_of(4 * PART + 1000, seed=1)
    parts = parts_of(data, PART)
    assert len(parts) == 5
    session = create_upload(
        env.ada,
        project["project_id"],
        data,
        idempotency_key="job-full",
        title="Run 42",
        tags=["raw"],
        metadata={"beam": 7},
    )
    upload_id = session["upload_id"]
    assert session["state"] == "open" and session["part_count"] == 5 and session["parts"] == []
    assert session["bytes_received"] == 0 and session["result"] is None and session["expires_at"].endswith("Z")

    # A body that does not match the signed digest is refused and not stored.
    wrong = bytes(len(parts[4]))
    err = error(send_part(env.ada, upload_id, 5, wrong, signed_sha256=sha256(parts[4])), 422, "checksum_mismatch")
    assert err["expected_sha256"] == sha256(parts[4]) and err["actual_sha256"] == sha256(wrong)
    assert _session(env, upload_id)["parts"] == []

    for number in (3, 1, 5, 2):
        receipt = ok(send_part(env.ada, upload_id, number, parts[number - 1]))
        # Part 1's own digest is its prefix digest too; the others' prefix digests were not asked for.
        prefix = sha256(parts[0]) if number == 1 else None
        assert receipt == {
            "number": number, "size": len(parts[number - 1]), "sha256": sha256(parts[number - 1]),
            "prefix_sha256": prefix,
        }

    # Part 4 is missing: completion says which.
    err = error(
        env.ada.post(f"/api/v1/uploads/{upload_id}/complete", json={"idempotency_key": "job-full"}), 409, "conflict"
    )
    assert err["missing_parts"] == [4]

    ok(send_part(env.ada, upload_id, 4, parts[3]))
    ok(send_part(env.ada, upload_id, 2, parts[1]))  # re-sent: replaces, counted
    state = _session(env, upload_id)
    assert [p["number"] for p in state["parts"]] == [1, 2, 3, 4, 5]
    assert {p["number"]: p["writes"] for p in state["parts"]} == {1: 1, 2: 2, 3: 1, 4: 1, 5: 1}
    assert [p["sha256"] for p in state["parts"]] == [sha256(p) for p in parts]
    # Every body byte read counts: the accepted parts, the re-sent one and the refused one.
    assert state["bytes_received"] == len(data) + len(parts[1]) + len(wrong)

    result = ok(env.ada.post(f"/api/v1/uploads/{upload_id}/complete", json={"idempotency_key": "job-full"}))
    assert result["asset_id"].startswith("ast_") and result["content_id"].startswith("cnt_")
    assert result["size"] == len(data) and result["sha256"] == sha256(data)

    # Idempotency: completing again, re-creating with the same key, completing that.
    assert ok(env.ada.post(f"/api/v1/uploads/{upload_id}/complete", json={"idempotency_key": "job-full"})) == result
    again = env.ada.post(
        "/api/v1/uploads",
        json={
            "owner_type": "project",
            "owner_id": project["project_id"],
            "size": len(data),
            "part_size": PART,
            "sha256": sha256(data),
            "idempotency_key": "job-full",
        },
    )
    assert again.status_code == 200
    assert again.json()["upload_id"] == upload_id and again.json()["state"] == "completed"
    assert again.json()["result"] == result
    assert ok(env.ada.post(f"/api/v1/uploads/{upload_id}/complete", json={})) == result

    # The parts were dropped once the result was recorded.
    assert not (env.server.data_dir / "objects" / "uploads" / upload_id).exists()
    # Exactly one asset and one content version came of it.
    with env.server.db() as db:
        assert db.execute("select count(*) from assets where project_id = ?", (project["project_id"],)).fetchone() == (
            1,
        )
        assert db.execute("select count(*) from contents where asset_id = ?", (result["asset_id"],)).fetchone() == (1,)
    assert ok(env.ada.get(f"/api/v1/projects/{project['project_id']}"))["used_bytes"] == len(data)

    asset = ok(env.ada.get(f"/api/v1/assets/{result['asset_id']}"))
    assert asset["title"] == "Run 42" and asset["tags"] == ["raw"] and asset["metadata"] == {"beam": 7}
    assert asset["owner_type"] == "project" and asset["project_id"] == project["project_id"]
    assert asset["collection_id"] == project["root_collection_id"]
    assert asset["latest_content"]["content_id"] == result["content_id"]
    assert asset["latest_content"]["file_name"] == "run42.h5"

    # A completed session takes no more parts and cannot be aborted.
    error(
        env.ada.post(
            f"/api/v1/uploads/{upload_id}/parts/1/target", json={"sha256": sha256(parts[0]), "size": len(parts[0])}
        ),
        409,
        "conflict",
    )
    error(env.ada.delete(f"/api/v1/uploads/{upload_id}"), 409, "conflict")


def test_completion_key_reused_by_another_session_returns_the_stored_result(env: Env) -> None:
    project = new_project(env.ada)
    data = data_of(PART + 10, seed=2)
    first = upload(env.ada, project["project_id"], data, key="job-crash")
    # The client lost its session (say, its checkpoint) and started over with a new one.
    second = create_upload(env.ada, project["project_id"], data)
    result = ok(env.ada.post(f"/api/v1/uploads/{second['upload_id']}/complete", json={"idempotency_key": "job-crash"}))
    assert result == first
    assert _session(env, second["upload_id"])["state"] == "completed"
    assert not (env.server.data_dir / "objects" / "uploads" / second["upload_id"]).exists()
    with env.server.db() as db:
        assert db.execute("select count(*) from assets where project_id = ?", (project["project_id"],)).fetchone() == (
            1,
        )


def test_whole_file_mismatch_keeps_the_session_open(env: Env) -> None:
    project = new_project(env.ada)
    data = data_of(2 * PART + 5, seed=3)
    session = create_upload(env.ada, project["project_id"], data, sha256="ab" * 32)
    for number, body in enumerate(parts_of(data, PART), start=1):
        ok(send_part(env.ada, session["upload_id"], number, body))
    err = error(env.ada.post(f"/api/v1/uploads/{session['upload_id']}/complete", json={}), 422, "checksum_mismatch")
    assert err["actual_sha256"] == sha256(data) and err["expected_sha256"] == "ab" * 32
    state = _session(env, session["upload_id"])
    assert state["state"] == "open" and len(state["parts"]) == 3 and state["result"] is None
    # A sha256 other than the session's is refused rather than silently preferred.
    error(
        env.ada.post(f"/api/v1/uploads/{session['upload_id']}/complete", json={"sha256": sha256(data)}),
        400,
        "invalid_argument",
    )


def test_single_part_whole_file_mismatch(env: Env) -> None:
    project = new_project(env.ada)
    data = data_of(1000, seed=4)
    session = create_upload(env.ada, project["project_id"], data, sha256="cd" * 32)
    ok(send_part(env.ada, session["upload_id"], 1, data))
    error(env.ada.post(f"/api/v1/uploads/{session['upload_id']}/complete", json={}), 422, "checksum_mismatch")
    assert _session(env, session["upload_id"])["state"] == "open"


def test_sha256_given_at_completion(env: Env) -> None:
    project = new_project(env.ada)
    data = data_of(PART * 2, seed=5)
    session = create_upload(env.ada, project["project_id"], data, sha256=None)
    assert session["sha256"] is None
    for number, body in enumerate(parts_of(data, PART), start=1):
        ok(send_part(env.ada, session["upload_id"], number, body))
    err = error(env.ada.post(f"/api/v1/uploads/{session['upload_id']}/complete", json={}), 400, "invalid_argument")
    assert err["field"] == "sha256"
    result = ok(env.ada.post(f"/api/v1/uploads/{session['upload_id']}/complete", json={"sha256": sha256(data)}))
    assert result["sha256"] == sha256(data)
    assert _session(env, session["upload_id"])["sha256"] == sha256(data)


def test_zero_byte_upload_has_one_empty_part(env: Env) -> None:
    project = new_project(env.ada)
    session = create_upload(env.ada, project["project_id"], b"")
    assert session["part_count"] == 1
    ok(send_part(env.ada, session["upload_id"], 1, b""))
    assert _session(env, session["upload_id"])["parts"] == [
        {"number": 1, "size": 0, "sha256": sha256(b""), "prefix_sha256": sha256(b""), "writes": 1}
    ]
    result = ok(env.ada.post(f"/api/v1/uploads/{session['upload_id']}/complete", json={}))
    assert result["size"] == 0 and result["sha256"] == sha256(b"")
    link = ok(env.ada.get(f"/api/v1/assets/{result['asset_id']}/download"))
    response = httpx.get(link["url"], trust_env=False)
    assert response.status_code == 200 and response.content == b""
    assert response.headers["content-length"] == "0"
    assert httpx.get(link["url"], headers={"Range": "bytes=0-"}, trust_env=False).status_code == 416


def test_quota(env: Env) -> None:
    project = new_project(env.ada)
    pid = project["project_id"]
    err = error(
        env.ada.post(
            "/api/v1/uploads",
            json={"owner_type": "project", "owner_id": pid, "size": ALLOCATION + 1, "part_size": PART},
        ),
        413,
        "quota_exceeded",
    )
    assert err["allocation_bytes"] == ALLOCATION and err["used_bytes"] == 0
    upload(env.ada, pid, data_of(600 * 1024, seed=6))
    assert ok(env.ada.get(f"/api/v1/projects/{pid}"))["used_bytes"] == 600 * 1024
    err = error(
        env.ada.post(
            "/api/v1/uploads", json={"owner_type": "project", "owner_id": pid, "size": 500 * 1024, "part_size": PART}
        ),
        413,
        "quota_exceeded",
    )
    assert err["used_bytes"] == 600 * 1024
    # What still fits is taken.
    ok(
        env.ada.post(
            "/api/v1/uploads",
            json={"owner_type": "project", "owner_id": pid, "size": ALLOCATION - 600 * 1024, "part_size": PART},
        ),
        201,
    )


def test_part_targets_are_checked(env: Env) -> None:
    project = new_project(env.ada)
    data = data_of(PART + 100, seed=7)
    upload_id = create_upload(env.ada, project["project_id"], data)["upload_id"]
    target = f"/api/v1/uploads/{upload_id}/parts"
    err = error(env.ada.post(f"{target}/1/target", json={"sha256": sha256(b"x"), "size": 100}), 400, "invalid_argument")
    assert err["field"] == "size" and err["expected_size"] == PART
    for bad in ("0", "3", "x"):
        err = error(
            env.ada.post(f"{target}/{bad}/target", json={"sha256": sha256(b"x"), "size": 100}), 400, "invalid_argument"
        )
        assert err["field"] == "number"
    err = error(env.ada.post(f"{target}/2/target", json={"sha256": "xyz", "size": 100}), 400, "invalid_argument")
    assert err["field"] == "sha256"
    error(env.ada_read.post(f"{target}/2/target", json={"sha256": sha256(b"x"), "size": 100}), 403, "permission_denied")
    # Sessions are private to whoever opened them.
    error(env.bob.post(f"{target}/2/target", json={"sha256": sha256(b"x"), "size": 100}), 404, "not_found")
    error(env.bob.get(f"/api/v1/uploads/{upload_id}"), 404, "not_found")
    # A body longer or shorter than signed is refused.
    good = data[PART:]
    ok_target = ok(env.ada.post(f"{target}/2/target", json={"sha256": sha256(good), "size": len(good)}))
    for body in (good + b"!", good[:-1]):
        response = httpx.put(ok_target["url"], content=body, trust_env=False)
        assert response.status_code == 422 and response.json()["error"]["code"] == "checksum_mismatch"
    assert _session(env, upload_id)["parts"] == []


def test_create_checks_owner_and_sizes(env: Env) -> None:
    project = new_project(env.ada)
    pid = project["project_id"]
    me = ok(env.ada.get("/api/v1/me"))
    base = {"owner_type": "project", "owner_id": pid, "size": 10, "part_size": PART}
    error(env.bob.post("/api/v1/uploads", json=base), 404, "not_found")
    assert (
        error(env.ada.post("/api/v1/uploads", json={**base, "part_size": 1000}), 400, "invalid_argument")["field"]
        == "part_size"
    )
    assert error(env.ada.post("/api/v1/uploads", json={**base, "size": -1}), 400, "invalid_argument")["field"] == "size"
    assert (
        error(env.ada.post("/api/v1/uploads", json={**base, "owner_type": "team"}), 400, "invalid_argument")["field"]
        == "owner_type"
    )
    assert (
        error(env.ada.post("/api/v1/uploads", json={"size": 10, "part_size": PART}), 400, "invalid_argument")["field"]
        == "owner_type"
    )
    assert (
        error(env.ada.post("/api/v1/uploads", json={**base, "tags": "raw"}), 400, "invalid_argument")["field"] == "tags"
    )
    assert (
        error(
            env.ada.post("/api/v1/uploads", json={**base, "size": 10**12, "part_size": PART}), 400, "invalid_argument"
        )["field"]
        == "part_size"
    )  # more than 10,000 parts
    error(env.ada.post("/api/v1/uploads", json={**base, "collection_id": "col_other"}), 404, "not_found")
    user_owned = {"owner_type": "user", "owner_id": me["user_id"], "size": 10, "part_size": PART}
    error(env.bob.post("/api/v1/uploads", json=user_owned), 403, "permission_denied")


def test_abort(env: Env) -> None:
    project = new_project(env.ada)
    data = data_of(PART * 2, seed=8)
    upload_id = create_upload(env.ada, project["project_id"], data)["upload_id"]
    ok(send_part(env.ada, upload_id, 1, data[:PART]))
    error(env.ada_read.delete(f"/api/v1/uploads/{upload_id}"), 403, "permission_denied")
    assert env.ada.delete(f"/api/v1/uploads/{upload_id}").status_code == 204
    state = _session(env, upload_id)
    assert state["state"] == "aborted" and state["parts"] == []
    assert env.ada.delete(f"/api/v1/uploads/{upload_id}").status_code == 204  # idempotent
    error(env.ada.post(f"/api/v1/uploads/{upload_id}/complete", json={}), 409, "conflict")
    error(
        env.ada.post(f"/api/v1/uploads/{upload_id}/parts/2/target", json={"sha256": sha256(data[PART:]), "size": PART}),
        409,
        "conflict",
    )
    assert not (env.server.data_dir / "objects" / "uploads" / upload_id).exists()


def test_user_owned_asset_is_visible_only_to_its_user(env: Env) -> None:
    me = ok(env.bob.get("/api/v1/me"))
    data = data_of(300, seed=9)
    result = upload(env.bob, me["user_id"], data, owner_type="user", title=None)
    asset = ok(env.bob.get(f"/api/v1/assets/{result['asset_id']}"))
    assert asset["owner_type"] == "user" and asset["owner_id"] == me["user_id"]
    assert asset["project_id"] is None and asset["collection_id"] is None
    assert asset["title"] == "run42.h5"  # the file name when no title was given
    error(env.ada.get(f"/api/v1/assets/{result['asset_id']}"), 404, "not_found")
    error(env.ada.get(f"/api/v1/assets/{result['asset_id']}/download"), 404, "not_found")


def test_new_version_of_an_asset(env: Env) -> None:
    project = new_project(env.ada)
    v1, v2 = data_of(5000, seed=10), data_of(7000, seed=11)
    first = upload(env.ada, project["project_id"], v1)
    second = upload(env.ada, project["project_id"], v2, asset_id=first["asset_id"])
    assert second["asset_id"] == first["asset_id"] and second["content_id"] != first["content_id"]
    asset = ok(env.ada.get(f"/api/v1/assets/{first['asset_id']}"))
    assert asset["latest_content"]["content_id"] == second["content_id"]
    latest = ok(env.ada.get(f"/api/v1/assets/{first['asset_id']}/download"))
    assert httpx.get(latest["url"], trust_env=False).content == v2
    older = ok(env.ada.get(f"/api/v1/assets/{first['asset_id']}/download", params={"content_id": first["content_id"]}))
    assert older["sha256"] == sha256(v1) and httpx.get(older["url"], trust_env=False).content == v1
    error(
        env.ada.get(f"/api/v1/assets/{first['asset_id']}/download", params={"content_id": "cnt_nope"}), 404, "not_found"
    )
    assert ok(env.ada.get(f"/api/v1/projects/{project['project_id']}"))["used_bytes"] == len(v1) + len(v2)
    # Another user cannot add a version to an asset they cannot see.
    error(
        env.bob.post("/api/v1/uploads", json={"asset_id": first["asset_id"], "size": 1, "part_size": PART}),
        404,
        "not_found",
    )


class _ClientDied(Exception):
    """Raised by a request body to stop sending half-way, as a killed client would."""


def test_a_body_cut_off_half_way_still_counts_as_received(env: Env) -> None:
    me = ok(env.ada.get("/api/v1/me"))
    data = data_of(4 * 1024 * 1024, seed=13)  # a user's upload: no project allocation to fit in
    session = create_upload(env.ada, me["user_id"], data, owner_type="user", part_size=len(data))
    upload_id = session["upload_id"]
    ok(send_part(env.ada, upload_id, 1, b"x" * len(data), signed_sha256=sha256(data)), 422)  # refused: counted
    assert _session(env, upload_id)["bytes_received"] == len(data)
    target = ok(
        env.ada.post(f"/api/v1/uploads/{upload_id}/parts/1/target", json={"sha256": sha256(data), "size": len(data)})
    )
    sent = 0

    def half_then_die() -> Iterator[bytes]:
        nonlocal sent
        for start in range(0, len(data) // 2, 64 * 1024):
            chunk = data[start : start + 64 * 1024]
            sent += len(chunk)
            yield chunk
        raise _ClientDied

    # httpx gives up on the connection when the body fails: the server sees it close mid-body.
    with pytest.raises(_ClientDied):
        httpx.put(target["url"], content=half_then_die(), headers=target["headers"], trust_env=False)
    assert sent == len(data) // 2
    # The server counts what it read once it notices the connection is gone.
    deadline = time.monotonic() + 10
    while (state := _session(env, upload_id))["bytes_received"] < len(data) + sent and time.monotonic() < deadline:
        time.sleep(0.02)
    assert state["bytes_received"] == len(data) + sent
    assert state["parts"] == []  # nothing was accepted: `writes` counts accepted bodies only
    ok(send_part(env.ada, upload_id, 1, data))
    state = _session(env, upload_id)
    assert state["bytes_received"] == 2 * len(data) + sent and state["parts"][0]["writes"] == 1


def _prefix_target(env: Env, upload_id: str, number: int, prefix_sha256: str, size: int) -> dict[str, Any]:
    return ok(  # type: ignore[no-any-return]
        env.ada.post(
            f"/api/v1/uploads/{upload_id}/parts/{number}/target",
            json={"prefix_sha256": prefix_sha256, "size": size},
        )
    )


def _put(target: dict[str, Any], body: bytes, url: str | None = None) -> httpx.Response:
    return httpx.put(url or target["url"], content=body, headers=target["headers"], timeout=30, trust_env=False)


def test_parts_sent_with_prefix_digests(env: Env) -> None:
    project = new_project(env.ada)
    data = data_of(3 * PART + 10, seed=70)
    parts = parts_of(data, PART)
    session = create_upload(env.ada, project["project_id"], data)
    upload_id = session["upload_id"]
    assert session["part_digests"] == ["sha256", "prefix_sha256"]

    def prefix(number: int) -> str:
        return sha256(b"".join(parts[:number]))

    # One digest or the other, never both or none.
    for body in ({"size": PART}, {"size": PART, "sha256": sha256(parts[0]), "prefix_sha256": prefix(1)}):
        error(env.ada.post(f"/api/v1/uploads/{upload_id}/parts/1/target", json=body), 400, "invalid_argument")

    # A URL signed for a prefix digest does not pass for a part's own digest (the field's name is signed).
    target = _prefix_target(env, upload_id, 1, prefix(1), PART)
    assert "prefix_sha256=" in target["url"]
    err = error(_put(target, parts[0], target["url"].replace("prefix_sha256=", "sha256=")), 403, "permission_denied")
    assert err["reason"] == "bad_signature"

    # In order, each part is checked against its prefix digest; part 1's is its own digest.
    receipts = [ok(_put(_prefix_target(env, upload_id, n, prefix(n), PART), parts[n - 1])) for n in (1, 2)]
    assert receipts == [
        {"number": 1, "size": PART, "sha256": sha256(parts[0]), "prefix_sha256": prefix(1)},
        {"number": 2, "size": PART, "sha256": None, "prefix_sha256": prefix(2)},
    ]
    # Wrong bytes for part 3's prefix digest: refused, nothing stored.
    target = _prefix_target(env, upload_id, 3, prefix(3), PART)
    err = error(_put(target, bytes(PART)), 422, "checksum_mismatch")
    assert err["expected_sha256"] == prefix(3) and err["actual_sha256"] == sha256(b"".join(parts[:2]) + bytes(PART))
    for number in (3, 4):
        ok(_put(_prefix_target(env, upload_id, number, prefix(number), len(parts[number - 1])), parts[number - 1]))
    held = _session(env, upload_id)["parts"]
    assert [(p["number"], p["sha256"], p["prefix_sha256"]) for p in held] == [
        (1, sha256(parts[0]), prefix(1)), (2, None, prefix(2)), (3, None, prefix(3)), (4, None, prefix(4)),
    ]
    result = ok(env.ada.post(f"/api/v1/uploads/{upload_id}/complete", json={"idempotency_key": "prefix"}))
    assert result["sha256"] == sha256(data) and result["size"] == len(data)
    link = ok(env.ada.get(f"/api/v1/assets/{result['asset_id']}/download"))
    assert httpx.get(link["url"], timeout=30, trust_env=False).content == data


def test_a_prefix_digest_part_out_of_order_is_kept_under_its_own_digest(env: Env) -> None:
    project = new_project(env.ada)
    data = data_of(2 * PART, seed=71)
    parts = parts_of(data, PART)
    upload_id = create_upload(env.ada, project["project_id"], data)["upload_id"]
    # Part 2 before part 1: its prefix digest cannot be checked, so it is kept under its own
    # digest, and the answer says so; the client compares that with its own bytes.
    target = _prefix_target(env, upload_id, 2, sha256(data), PART)
    assert ok(_put(target, parts[1])) == {"number": 2, "size": PART, "sha256": sha256(parts[1]), "prefix_sha256": None}
    ok(_put(_prefix_target(env, upload_id, 1, sha256(parts[0]), PART), parts[0]))
    assert [(p["number"], p["sha256"]) for p in _session(env, upload_id)["parts"]] == [
        (1, sha256(parts[0])), (2, sha256(parts[1])),
    ]
    result = ok(env.ada.post(f"/api/v1/uploads/{upload_id}/complete", json={}))
    assert result["sha256"] == sha256(data)


def env_of(server: Any, client: httpx.Client) -> Env:
    return Env(server, {}, {"ada": client})


def test_expired_sessions_are_aborted_and_their_parts_removed(start_server: Any) -> None:
    server = start_server("--session-ttl", "2")
    with server.client(server.add_user("expiry@example.org").strip()) as client:
        project = new_project(client)
        data = data_of(2 * PART, seed=80)
        parts = parts_of(data, PART)
        stale = create_upload(client, project["project_id"], data)
        upload_id = stale["upload_id"]
        ok(send_part(client, upload_id, 1, parts[0]))
        kept = upload(client, project["project_id"], data_of(PART, seed=81), key="kept")
        part_dir = server.data_dir / "objects" / "uploads" / upload_id
        assert part_dir.is_dir()
        # Nothing comes for it: once its two seconds are over, a sweep aborts it.
        deadline = time.monotonic() + 30
        while _session(env_of(server, client), upload_id)["state"] == "open":
            assert time.monotonic() < deadline, "the expired session was not aborted"
            time.sleep(0.1)
        session = _session(env_of(server, client), upload_id)
        assert session["state"] == "aborted" and session["parts"] == []
        assert not part_dir.exists()
        target = client.post(f"/api/v1/uploads/{upload_id}/parts/2/target", json={"sha256": sha256(parts[1]),
                                                                                   "size": PART})
        error(target, 409, "conflict")
        # A completed upload is no session to expire: its content stays.
        link = ok(client.get(f"/api/v1/assets/{kept['asset_id']}/download"))
        assert httpx.get(link["url"], timeout=30, trust_env=False).content == data_of(PART, seed=81)
    assert "upload.expired" in server.log_file.read_text()
