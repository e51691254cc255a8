"""Tokens, scopes and expiry; the ``users add`` command; health, errors and the OpenAPI document."""

from __future__ import annotations

import re
import subprocess

import httpx
from server_harness import SERVER, Env, error, ok

TOKEN = re.compile(r"dtk_[A-Za-z0-9_-]{43}")


def test_health_needs_no_token(env: Env) -> None:
    assert ok(env.anon.get("/api/v1/health")) == {"status": "ok", "version": "0.1.0"}


def test_users_add_prints_only_the_token_while_the_server_runs(env: Env) -> None:
    out = env.server.add_user("carol@example.org", scope="read")
    assert TOKEN.fullmatch(out.rstrip("\n")), repr(out)
    assert out.count("\n") == 1
    me = ok(env.server.client(out.strip()).get("/api/v1/me"))
    assert me["email"] == "carol@example.org"
    assert me["scopes"] == ["read"]
    assert me["token_expires_at"] is None
    # The same email again: a second token for the same user.
    again = ok(env.server.client(env.server.add_user("carol@example.org").strip()).get("/api/v1/me"))
    assert again["user_id"] == me["user_id"]
    assert again["scopes"] == ["read", "write"]


def test_users_add_needs_a_database() -> None:
    done = subprocess.run([SERVER, "users", "add", "x@example.org"], capture_output=True, timeout=60)
    assert done.returncode != 0
    assert done.stdout == b""


def test_me_and_the_token_errors(env: Env) -> None:
    me = ok(env.ada.get("/api/v1/me"))
    assert me["user_id"].startswith("usr_") and me["email"] == "ada@example.org"
    assert me["scopes"] == ["read", "write"]
    error(env.anon.get("/api/v1/me"), 401, "auth_required")
    error(env.server.client("dtk_" + "x" * 43).get("/api/v1/me"), 401, "auth_required")
    error(env.anon.get("/api/v1/me", headers={"Authorization": "Basic abc"}), 401, "auth_required")


def test_read_token_cannot_write(env: Env) -> None:
    assert ok(env.ada_read.get("/api/v1/me"))["scopes"] == ["read"]
    err = error(env.ada_read.post("/api/v1/projects", json={"name": "no"}), 403, "permission_denied")
    assert err["required_scope"] == "write"


def test_expired_token_is_auth_expired(env: Env) -> None:
    expired = env.server.add_user("dave@example.org", expires_in=0).strip()
    error(env.server.client(expired).get("/api/v1/me"), 401, "auth_expired")
    later = env.server.add_user("dave@example.org", expires_in=30).strip()
    assert ok(env.server.client(later).get("/api/v1/me"))["token_expires_at"].endswith("Z")


def test_unknown_route_bad_json_and_wrong_types(env: Env) -> None:
    error(env.ada.get("/api/v1/nothing-here"), 404, "not_found")
    error(env.anon.get("/elsewhere"), 404, "not_found")
    error(env.ada.post("/api/v1/projects", content=b"{not json"), 400, "invalid_argument")
    error(env.ada.post("/api/v1/projects", content=b"[1, 2]"), 400, "invalid_argument")
    err = error(env.ada.post("/api/v1/projects", json={"name": 7}), 400, "invalid_argument")
    assert err["field"] == "name" and "`name`" in err["message"]
    err = error(
        env.ada.post(
            "/api/v1/uploads", json={"owner_type": "project", "owner_id": "prj_x", "size": "1", "part_size": 65536}
        ),
        400,
        "invalid_argument",
    )
    assert err["field"] == "size"
    err = error(
        env.ada.post(
            "/api/v1/uploads", json={"owner_type": "project", "owner_id": "prj_x", "size": True, "part_size": 65536}
        ),
        400,
        "invalid_argument",
    )
    assert err["field"] == "size"
    response = env.ada.put("/api/v1/me")
    assert response.status_code == 405 and response.json()["error"]["code"] == "invalid_argument"


def test_openapi_lists_every_route(env: Env) -> None:
    from dataerai_server.app import PREFIX, Api

    document = ok(env.anon.get("/api/v1/openapi.json"))
    assert document["openapi"].startswith("3.")
    routes = Api.__new__(Api).routes()
    assert routes
    for route in routes:
        assert route.path.startswith(PREFIX)
        operations = document["paths"].get(route.path)
        assert operations is not None, f"{route.path} is missing from the OpenAPI document"
        for method in route.methods or ():
            if method != "HEAD":
                assert method.lower() in operations, f"{method} {route.path} is missing"


def test_logs_carry_no_token(env: Env) -> None:
    ok(env.ada.get("/api/v1/me"))
    log = env.server.log_file.read_text()
    assert '"path": "/api/v1/me"' in log  # JSON lines: stderr is not a terminal
    for token in env.tokens.values():
        assert token not in log
    assert "signature=" not in log


def test_host_header_decides_signed_url_base(env: Env) -> None:
    # URLs the server hands out are built from the request's own base URL.
    project = ok(env.ada.post("/api/v1/projects", json={"name": "host"}), 201)
    session = ok(
        env.ada.post(
            "/api/v1/uploads",
            json={"owner_type": "project", "owner_id": project["project_id"], "size": 1, "part_size": 65536},
        ),
        201,
    )
    target = env.ada.post(
        f"/api/v1/uploads/{session['upload_id']}/parts/1/target",
        json={"sha256": "0" * 64, "size": 1},
        headers={"Host": "repo.example.org:8443"},
    )
    assert ok(target)["url"].startswith("http://repo.example.org:8443/api/v1/uploads/")
    assert isinstance(httpx.URL(ok(target)["url"]).params["signature"], str)
