"""The access model: members and roles, scopes, collections, and the relationship access matrix."""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import pytest
from server_harness import Env, create_upload, data_of, error, new_project, ok, send_part, upload

ROLES = ("owner", "editor", "viewer")


def _add(owner: httpx.Client, project_id: str, email: str, role: str) -> dict[str, Any]:
    response = owner.post(f"/api/v1/projects/{project_id}/members", json={"email": email, "role": role})
    assert response.status_code in (200, 201), response.text
    return response.json()  # type: ignore[no-any-return]


def _asset(client: httpx.Client, project_id: str, seed: int = 0, **fields: Any) -> str:
    return str(upload(client, project_id, data_of(100, seed), **fields)["asset_id"])


def test_creating_a_project_needs_the_write_scope(env: Env) -> None:
    err = error(env.ada_read.post("/api/v1/projects", json={"name": "nope"}), 403, "permission_denied")
    assert err["required_scope"] == "write"
    names = [p["name"] for p in ok(env.ada.get("/api/v1/projects"))["projects"]]
    assert "nope" not in names


def test_members_and_roles(env: Env, carol: httpx.Client) -> None:
    project = new_project(env.ada, "members")
    pid = project["project_id"]
    (ada,) = ok(env.ada.get(f"/api/v1/projects/{pid}/members"))["members"]
    assert ada["email"] == "ada@example.org" and ada["role"] == "owner" and ada["created_at"].endswith("Z")

    # Only owners add members; a non-member cannot tell the project exists; a read token cannot write.
    body = {"email": "carol@example.org", "role": "editor"}
    error(env.bob.post(f"/api/v1/projects/{pid}/members", json=body), 404, "not_found")
    assert error(env.ada_read.post(f"/api/v1/projects/{pid}/members", json=body), 403, "permission_denied")[
        "required_scope"
    ] == "write"
    added = ok(env.ada.post(f"/api/v1/projects/{pid}/members", json=body), 201)
    assert added["email"] == "carol@example.org" and added["role"] == "editor" and added["user_id"].startswith("usr_")
    error(carol.post(f"/api/v1/projects/{pid}/members", json={"email": "bob@example.org", "role": "viewer"}), 403,
          "permission_denied")

    # Input checks.
    assert error(env.ada.post(f"/api/v1/projects/{pid}/members", json={"email": "nobody@example.org",
                                                                       "role": "viewer"}), 404, "not_found")[
        "field"
    ] == "email"
    assert error(env.ada.post(f"/api/v1/projects/{pid}/members", json={"email": "bob@example.org",
                                                                       "role": "admin"}), 400, "invalid_argument")[
        "field"
    ] == "role"

    # Changing a role answers 200; the last owner cannot step down.
    assert ok(env.ada.post(f"/api/v1/projects/{pid}/members", json={**body, "role": "viewer"}))["role"] == "viewer"
    error(env.ada.post(f"/api/v1/projects/{pid}/members", json={"email": "ada@example.org", "role": "editor"}), 409,
          "conflict")
    members = ok(carol.get(f"/api/v1/projects/{pid}/members"))["members"]
    assert [(m["email"], m["role"]) for m in members] == [("ada@example.org", "owner"), ("carol@example.org", "viewer")]
    error(env.bob.get(f"/api/v1/projects/{pid}/members"), 404, "not_found")

    # GET /projects lists the caller's projects with their role there.
    mine = {p["project_id"]: p["role"] for p in ok(carol.get("/api/v1/projects"))["projects"]}
    assert mine[pid] == "viewer"
    assert pid not in {p["project_id"] for p in ok(env.bob.get("/api/v1/projects"))["projects"]}
    assert ok(env.ada_read.get("/api/v1/projects"))["projects"] == ok(env.ada.get("/api/v1/projects"))["projects"]


def test_viewers_read_but_do_not_change(env: Env, carol: httpx.Client) -> None:
    pid = new_project(env.ada, "viewers")["project_id"]
    _add(env.ada, pid, "carol@example.org", "viewer")
    asset_id = _asset(env.ada, pid)
    assert ok(carol.get(f"/api/v1/assets/{asset_id}"))["asset_id"] == asset_id
    ok(carol.get(f"/api/v1/assets/{asset_id}/download"))
    error(carol.patch(f"/api/v1/assets/{asset_id}", json={"title": "x"}), 403, "permission_denied")
    error(carol.delete(f"/api/v1/assets/{asset_id}"), 403, "permission_denied")
    data = data_of(10)
    for fields in ({"owner_type": "project", "owner_id": pid}, {"asset_id": asset_id}):
        body = {"file_name": "x", "size": len(data), "part_size": 65536, **fields}
        error(carol.post("/api/v1/uploads", json=body), 403, "permission_denied")
    # An editor may do all of that.
    _add(env.ada, pid, "carol@example.org", "editor")
    assert ok(carol.patch(f"/api/v1/assets/{asset_id}", json={"title": "x"}))["title"] == "x"
    second = upload(carol, pid, data, asset_id=asset_id)
    assert second["asset_id"] == asset_id


def test_collections(env: Env, carol: httpx.Client) -> None:
    project = new_project(env.ada, "collections")
    pid, root = project["project_id"], project["root_collection_id"]
    made = ok(env.ada.post("/api/v1/collections", json={"project_id": pid, "name": "raw"}), 201)
    assert made["collection_id"].startswith("col_") and made["project_id"] == pid
    assert made["parent_id"] == root and made["name"] == "raw" and made["created_at"].endswith("Z")
    body = {"project_id": pid, "name": "day1", "parent_id": made["collection_id"]}
    nested = ok(env.ada.post("/api/v1/collections", json=body), 201)
    assert nested["parent_id"] == made["collection_id"]
    assert ok(env.ada.get(f"/api/v1/collections/{nested['collection_id']}")) == nested
    listed = ok(env.ada.get(f"/api/v1/projects/{pid}/collections"))["collections"]
    assert [c["collection_id"] for c in listed] == [root, made["collection_id"], nested["collection_id"]]
    assert listed[0]["parent_id"] is None

    # Checks: a parent from another project, empty name, access.
    other = new_project(env.ada, "other")
    err = error(env.ada.post("/api/v1/collections", json={"project_id": pid, "name": "x",
                                                           "parent_id": other["root_collection_id"]}), 404, "not_found")
    assert err["field"] == "parent_id"
    assert error(env.ada.post("/api/v1/collections", json={"project_id": pid, "name": " "}), 400,
                 "invalid_argument")["field"] == "name"
    error(env.bob.post("/api/v1/collections", json={"project_id": pid, "name": "x"}), 404, "not_found")
    error(env.bob.get(f"/api/v1/collections/{made['collection_id']}"), 404, "not_found")
    error(env.bob.get(f"/api/v1/projects/{pid}/collections"), 404, "not_found")
    error(env.ada_read.post("/api/v1/collections", json={"project_id": pid, "name": "x"}), 403, "permission_denied")
    _add(env.ada, pid, "carol@example.org", "viewer")
    assert ok(carol.get(f"/api/v1/collections/{made['collection_id']}")) == made
    error(carol.post("/api/v1/collections", json={"project_id": pid, "name": "x"}), 403, "permission_denied")
    _add(env.ada, pid, "carol@example.org", "editor")
    ok(carol.post("/api/v1/collections", json={"project_id": pid, "name": "carols"}), 201)


def test_upload_owned_by_a_collection(env: Env, carol: httpx.Client) -> None:
    pid = new_project(env.ada, "collection uploads")["project_id"]
    col = ok(env.ada.post("/api/v1/collections", json={"project_id": pid, "name": "raw"}), 201)["collection_id"]
    data = data_of(3000, seed=4)
    result = upload(env.ada, col, data, owner_type="collection", title="in a collection")
    asset = ok(env.ada.get(f"/api/v1/assets/{result['asset_id']}"))
    assert (asset["owner_type"], asset["owner_id"]) == ("collection", col)
    assert (asset["project_id"], asset["collection_id"]) == (pid, col)
    assert ok(env.ada.get(f"/api/v1/projects/{pid}"))["used_bytes"] == len(data)
    # Members of the project see it; others do not.
    error(env.bob.get(f"/api/v1/assets/{result['asset_id']}"), 404, "not_found")
    _add(env.ada, pid, "carol@example.org", "viewer")
    ok(carol.get(f"/api/v1/assets/{result['asset_id']}"))

    body = {"owner_type": "collection", "owner_id": col, "file_name": "x", "size": 1, "part_size": 65536}
    error(carol.post("/api/v1/uploads", json=body), 403, "permission_denied")
    error(env.bob.post("/api/v1/uploads", json=body), 404, "not_found")
    error(env.ada.post("/api/v1/uploads", json={**body, "owner_id": "col_nope"}), 404, "not_found")
    root = ok(env.ada.get(f"/api/v1/projects/{pid}"))["root_collection_id"]
    assert error(env.ada.post("/api/v1/uploads", json={**body, "collection_id": root}), 400, "invalid_argument")[
        "field"
    ] == "collection_id"
    assert ok(env.ada.post("/api/v1/uploads", json={**body, "collection_id": col}), 201)["state"] == "open"
    assert error(env.ada.post("/api/v1/uploads", json={**body, "owner_type": "team"}), 400, "invalid_argument")[
        "field"
    ] == "owner_type"


# --- relationships ------------------------------------------------------------------------


def _link(client: httpx.Client, source: str, target: str, **fields: Any) -> httpx.Response:
    return client.post(f"/api/v1/assets/{source}/relationships", json={"to_asset_id": target,
                                                                         "rel_type": "derived_from", **fields})


def _expected(source_role: str | None, target_role: str | None) -> tuple[int, str | None]:
    """What linking needs: read on the target and the source (else 404), write on the source (else 403)."""
    if source_role is None or target_role is None:
        return 404, "not_found"
    if source_role == "viewer":
        return 403, "permission_denied"
    return 201, None


@pytest.mark.parametrize(
    ("source_role", "target_role"), list(itertools.product((*ROLES, None), repeat=2))
)
def test_relationship_access_matrix(env: Env, carol: httpx.Client, source_role: str | None,
                                    target_role: str | None) -> None:
    """carol, with every role (or none) in the source's and the target's projects."""
    source_project = new_project(env.ada, "source")["project_id"]
    target_project = new_project(env.ada, "target")["project_id"]
    for project, role in ((source_project, source_role), (target_project, target_role)):
        if role is not None:
            _add(env.ada, project, "carol@example.org", role)
    source, target = _asset(env.ada, source_project, 1), _asset(env.ada, target_project, 2)

    status, code = _expected(source_role, target_role)
    response = _link(carol, source, target)
    if code is None:
        made = ok(response, 201)
        assert made["from_asset_id"] == source and made["related_asset"]["id"] == target
    else:
        error(response, status, code)
    # A read-only token is refused for the scope, whatever the roles.
    assert error(_link(env.ada_read, source, target), 403, "permission_denied")["required_scope"] == "write"
    links = ok(env.ada.get(f"/api/v1/assets/{source}/relationships"))["relationships"]
    assert len(links) == (1 if code is None else 0)


def test_relationship_access_for_user_owned_assets(env: Env, carol: httpx.Client) -> None:
    me = ok(env.ada.get("/api/v1/me"))["user_id"]
    mine = str(upload(env.ada, me, data_of(50, 7), owner_type="user")["asset_id"])
    pid = new_project(env.ada, "p")["project_id"]
    shared = _asset(env.ada, pid, 8)
    ok(_link(env.ada, mine, shared), 201)
    ok(_link(env.ada, shared, mine), 201)
    _add(env.ada, pid, "carol@example.org", "editor")
    # carol cannot see ada's own asset, from either end; nor can bob see anything.
    error(_link(carol, shared, mine), 404, "not_found")
    error(_link(carol, mine, shared), 404, "not_found")
    error(_link(env.bob, shared, mine), 404, "not_found")
    # carol's listing of the shared asset leaves out the links to the asset she cannot see.
    assert ok(carol.get(f"/api/v1/assets/{shared}/relationships"))["relationships"] == []
    assert len(ok(env.ada.get(f"/api/v1/assets/{shared}/relationships"))["relationships"]) == 2


def test_relationship_shape_validation_and_listing(env: Env) -> None:
    pid = new_project(env.ada, "provenance")["project_id"]
    raw, analysis = _asset(env.ada, pid, 1, title="raw"), _asset(env.ada, pid, 2, title="analysis")
    made = ok(
        _link(env.ada, analysis, raw, rel_type="analysis_of", analysis_mode="non_destructive",
              qualifier_note="fit", qualifier_time="2026-11-30T14:00:00+02:00", qualifiers={"tool": "pycroscopy"}),
        201,
    )
    me = ok(env.ada.get("/api/v1/me"))["user_id"]
    assert made["relationship_id"].startswith("rel_") and made["type"] == "analysis_of"
    assert made["related_asset"] == {"id": raw, "title": "raw", "owner_type": "project", "owner_id": pid}
    assert made["analysis_mode"] == "non_destructive" and made["qualifier_note"] == "fit"
    assert made["qualifier_time"] == "2026-11-30T12:00:00Z" and made["qualifiers"] == {"tool": "pycroscopy"}
    assert made["created_by"] == me and made["created_at"].endswith("Z")
    plain = ok(_link(env.ada, analysis, raw, rel_type="x" * 255, qualifier_time="2026-01-02T03:04:05.250Z"), 201)
    assert plain["analysis_mode"] is None and plain["qualifiers"] is None and plain["qualifier_note"] is None
    assert plain["qualifier_time"] == "2026-01-02T03:04:05.250000Z"

    outgoing = ok(env.ada.get(f"/api/v1/assets/{analysis}/relationships"))["relationships"]
    assert [(r["direction"], r["related_asset"]["id"]) for r in outgoing] == [("outgoing", raw)] * 2
    assert {k: v for k, v in outgoing[0].items() if k != "direction"} == made
    incoming = ok(env.ada.get(f"/api/v1/assets/{raw}/relationships"))["relationships"]
    assert [(r["direction"], r["related_asset"]["id"], r["type"]) for r in incoming] == [
        ("incoming", analysis, "analysis_of"),
        ("incoming", analysis, "x" * 255),
    ]

    bad: list[tuple[dict[str, Any], str]] = [
        ({"rel_type": ""}, "rel_type"),
        ({"rel_type": "x" * 256}, "rel_type"),
        ({"rel_type": None}, "rel_type"),
        ({"analysis_mode": "gentle"}, "analysis_mode"),
        ({"analysis_mode": "NON_DESTRUCTIVE"}, "analysis_mode"),
        ({"qualifier_time": "yesterday"}, "qualifier_time"),
        ({"qualifier_time": 5}, "qualifier_time"),
        ({"qualifiers": [1, 2]}, "qualifiers"),
        ({"qualifiers": "x"}, "qualifiers"),
        ({"to_asset_id": analysis}, "to_asset_id"),
        ({"colour": "red"}, "colour"),
    ]
    for fields, field in bad:
        assert error(_link(env.ada, analysis, raw, **fields), 400, "invalid_argument")["field"] == field, fields
    error(_link(env.ada, analysis, "ast_nope"), 404, "not_found")
    error(_link(env.ada, "ast_nope", raw), 404, "not_found")
    assert len(ok(env.ada.get(f"/api/v1/assets/{analysis}/relationships"))["relationships"]) == 2


def test_completion_checks_write_access_again(env: Env, carol: httpx.Client) -> None:
    pid = new_project(env.ada, "late")["project_id"]
    _add(env.ada, pid, "carol@example.org", "editor")
    data = data_of(10)
    session = create_upload(carol, pid, data)
    # Demoted while the session is open: completion checks again.
    _add(env.ada, pid, "carol@example.org", "viewer")
    ok(send_part(carol, session["upload_id"], 1, data))
    error(carol.post(f"/api/v1/uploads/{session['upload_id']}/complete", json={}), 403, "permission_denied")
    assert ok(env.ada.get(f"/api/v1/projects/{pid}"))["used_bytes"] == 0
    _add(env.ada, pid, "carol@example.org", "editor")
    assert ok(carol.post(f"/api/v1/uploads/{session['upload_id']}/complete", json={}))["size"] == len(data)
