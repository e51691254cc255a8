"""Tokens, scopes and expiry; the ``users add`` command; health, errors and the OpenAPI document."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from dataerai_server.clock import parse_timestamp
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
    # Tokens expire after 90 days unless told otherwise.
    expires = parse_timestamp(me["token_expires_at"])
    assert expires is not None
    assert timedelta(days=90) - timedelta(minutes=5) < expires - datetime.now(timezone.utc) <= timedelta(days=90)
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
    from dataerai_server.app import Api
    from dataerai_server.operations import PREFIX

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


def _tokens(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SERVER, "tokens", *args, "--data-dir", str(env.server.data_dir)], capture_output=True, text=True, timeout=60
    )


def _expires_in(env: Env, expires_in: str) -> str | None:
    token = env.server.add_user("erin@example.org", expires_in=expires_in).strip()
    return ok(env.server.client(token).get("/api/v1/me"))["token_expires_at"]  # type: ignore[no-any-return]


def test_users_add_expires_in_takes_durations_days_and_never(env: Env) -> None:
    now = datetime.now(timezone.utc)
    for text, expected in (("12h", timedelta(hours=12)), ("30d", timedelta(days=30)), ("1.5", timedelta(days=1.5)),
                           ("2w", timedelta(weeks=2)), ("90m", timedelta(minutes=90))):
        expires = parse_timestamp(_expires_in(env, text) or "")
        assert expires is not None
        assert expected - timedelta(minutes=5) < expires - now < expected + timedelta(minutes=5), text
    assert _expires_in(env, "never") is None
    for bad in ("3x", "-1d", "soon", ""):
        done = subprocess.run(
            [SERVER, "users", "add", "erin@example.org", "--expires-in", bad, "--data-dir", str(env.server.data_dir)],
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 2 and done.stdout == "" and "--expires-in" in done.stderr, (bad, done.stderr)


def test_tokens_list_shows_every_token_but_never_the_token_or_its_hash(env: Env) -> None:
    token = env.server.add_user("frank@example.org", scope="read").strip()
    with env.server.db() as db:
        hashes = [row[0] for row in db.execute("select token_hash from tokens")]
    listed = _tokens(env, "list")
    assert listed.returncode == 0, listed.stderr
    as_json = _tokens(env, "list", "--json")
    rows = json.loads(as_json.stdout)
    for out in (listed.stdout, as_json.stdout):
        assert token not in out and token[8:16] not in out
        assert not any(h in out for h in hashes)
    (mine,) = [row for row in rows if row["email"] == "frank@example.org"]
    assert mine["id"].startswith("tok_") and mine["prefix"] == token[:8]
    assert mine["scopes"] == ["read"] and mine["state"] == "active" and mine["revoked_at"] is None
    assert mine["created_at"].endswith("Z") and mine["expires_at"].endswith("Z")
    assert set(mine) == {"id", "prefix", "user_id", "email", "scopes", "created_at", "expires_at", "revoked_at",
                         "state"}
    assert len(rows) == len(hashes)
    line = next(line for line in listed.stdout.splitlines() if mine["id"] in line)
    assert "frank@example.org" in line and " read " in line and "active" in line and token[:8] + "…" in line
    assert listed.stdout.splitlines()[0].split() == ["ID", "PREFIX", "USER", "SCOPE", "CREATED", "EXPIRES", "REVOKED",
                                                     "STATE"]


@pytest.mark.parametrize("by", ["id", "token"])
def test_a_token_revoked_while_the_server_runs_is_refused_at_its_next_request(env: Env, by: str) -> None:
    token = env.server.add_user("grace@example.org").strip()
    client = env.server.client(token)
    ok(client.get("/api/v1/me"))
    (row,) = [r for r in json.loads(_tokens(env, "list", "--json").stdout) if r["prefix"] == token[:8]
              and r["email"] == "grace@example.org"]
    done = _tokens(env, "revoke", row["id"] if by == "id" else token)
    assert done.returncode == 0 and done.stdout.strip() == f"revoked {row['id']}"
    err = error(client.get("/api/v1/me"), 401, "auth_expired")
    assert "revoked" in err["message"]
    error(client.post("/api/v1/projects", json={"name": "no"}), 401, "auth_expired")
    (after,) = [r for r in json.loads(_tokens(env, "list", "--json").stdout) if r["id"] == row["id"]]
    assert after["state"] == "revoked" and after["revoked_at"].endswith("Z")
    again = _tokens(env, "revoke", row["id"])
    assert again.returncode == 0 and "already revoked" in again.stdout
    # The user's other tokens are untouched.
    assert ok(env.server.client(env.server.add_user("grace@example.org").strip()).get("/api/v1/me"))


def test_revoking_an_unknown_token_fails_with_a_hint(env: Env) -> None:
    done = _tokens(env, "revoke", "tok_00000000000000000000")
    assert done.returncode == 1 and "tokens list" in done.stderr and done.stdout == ""


def test_part_target_reads_token_and_session_in_one_query_and_tells_the_token_first(env: Env) -> None:
    """The part target looks its token up in the same statement as its session: every
    token error still comes first (unknown session or not), then the session's own."""
    project = ok(env.ada.post("/api/v1/projects", json={"name": "targets"}), 201)
    session = ok(env.ada.post("/api/v1/uploads", json={"owner_type": "project", "owner_id": project["project_id"],
                                                        "size": 1, "part_size": 65536}), 201)
    path, nowhere = f"/api/v1/uploads/{session['upload_id']}/parts/1/target", "/api/v1/uploads/upl_x/parts/1/target"
    body = {"sha256": "0" * 64, "size": 1}
    token = env.server.add_user("ada@example.org").strip()
    mine = env.server.client(token)
    assert ok(mine.post(path, json=body))["method"] == "PUT"
    for where in (path, nowhere):
        error(env.anon.post(where, json=body), 401, "auth_required")
        error(env.server.client("dtk_" + "x" * 43).post(where, json=body), 401, "auth_required")
        expired = env.server.add_user("ada@example.org", expires_in=0).strip()
        error(env.server.client(expired).post(where, json=body), 401, "auth_expired")
        assert error(env.ada_read.post(where, json=body), 403, "permission_denied")["required_scope"] == "write"
    error(env.ada.post(nowhere, json=body), 404, "not_found")
    # Another user's session is as unknown as none.
    bob = env.server.client(env.server.add_user("bob@example.org").strip())
    assert error(bob.post(path, json=body), 404, "not_found")["upload_id"] == session["upload_id"]
    # A token revoked by another process is refused at its next part target.
    assert _tokens(env, "revoke", token).returncode == 0
    assert "revoked" in error(mine.post(path, json=body), 401, "auth_expired")["message"]
    error(mine.post(nowhere, json=body), 401, "auth_expired")
    assert ok(env.ada.post(path, json=body))["method"] == "PUT"
