"""Signed URLs, ranged content reads, asset metadata, and a server restart."""

from __future__ import annotations

import json
import socket
import time
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from dataerai_server.signing import SECRET_KEY, UrlSigner
from server_harness import (
    PART,
    Env,
    Server,
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


def _server_signer(server: Server, *, seconds_ago: float = 0) -> UrlSigner:
    """A signer holding the server's own secret (read from its database), with its clock moved back."""
    with server.db() as db:
        (secret,) = db.execute("select value from server_settings where key = ?", (SECRET_KEY,)).fetchone()
    return UrlSigner(bytes.fromhex(secret), clock=lambda: time.time() - seconds_ago)


def _with(url: str, **changes: str) -> str:
    parsed = httpx.URL(url)
    params = dict(parsed.params)
    params.update(changes)
    return str(parsed.copy_with(query=urlencode(params).encode()))


@pytest.fixture(scope="module")
def stored(env: Env) -> dict[str, Any]:
    """One 2.5 MiB asset of ada's own (several read blocks; a user's asset counts against no
    project's allocation), with its download link."""
    data = data_of(5 * 512 * 1024 + 123, seed=20)
    user_id = ok(env.ada.get("/api/v1/me"))["user_id"]
    result = upload(env.ada, user_id, data, owner_type="user", part_size=1 << 20)
    link = ok(env.ada.get(f"/api/v1/assets/{result['asset_id']}/download"))
    return {"data": data, "result": result, "link": link}


def test_download_link(env: Env, stored: dict[str, Any]) -> None:
    link, data = stored["link"], stored["data"]
    assert link["content_id"] == stored["result"]["content_id"]
    assert link["size"] == len(data) and link["sha256"] == sha256(data) and link["file_name"] == "run42.h5"
    assert link["headers"] == {} and link["expires_at"].endswith("Z")
    assert link["url"].startswith(env.server.url + "/api/v1/contents/")
    ok(env.ada_read.get(f"/api/v1/assets/{stored['result']['asset_id']}/download"))
    error(env.bob.get(f"/api/v1/assets/{stored['result']['asset_id']}/download"), 404, "not_found")


def test_whole_and_ranged_reads(stored: dict[str, Any]) -> None:
    url, data = stored["link"]["url"], stored["data"]
    whole = httpx.get(url, trust_env=False)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-length"] == str(len(data))
    assert whole.headers["x-content-sha256"] == sha256(data)
    size = len(data)
    cases = {
        "bytes=0-0": (0, 0),
        "bytes=10-19": (10, 19),
        "bytes=4095-4097": (4095, 4097),  # across a 4 KiB boundary
        "bytes=1000000-2100000": (1000000, 2100000),  # across 1 MiB read blocks, unaligned
        f"bytes={size - 5}-": (size - 5, size - 1),
        "bytes=-7": (size - 7, size - 1),
        f"bytes=100-{size + 1000}": (100, size - 1),  # the end is clipped
    }
    for header, (first, last) in cases.items():
        part = httpx.get(url, headers={"Range": header}, trust_env=False)
        assert part.status_code == 206, header
        assert part.content == data[first : last + 1], header
        assert part.headers["content-range"] == f"bytes {first}-{last}/{size}", header
        assert part.headers["content-length"] == str(last - first + 1), header
        assert part.headers["x-content-sha256"] == sha256(data)
    for header in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}", "bytes=-0"):
        refused = httpx.get(url, headers={"Range": header}, trust_env=False)
        assert refused.status_code == 416, header
        assert refused.headers["content-range"] == f"bytes */{size}"
    # A Range this server does not take (several ranges) is ignored: the whole content.
    assert httpx.get(url, headers={"Range": "bytes=0-1,5-6"}, trust_env=False).content == data
    head = httpx.head(url, trust_env=False)
    assert head.status_code == 200 and head.headers["content-length"] == str(size) and head.content == b""


def _request_lines(server: Server, path: str, count: int) -> list[dict[str, Any]]:
    """The request log lines for ``path``, waiting until there are ``count`` (a line is written
    once its response is sent, so it may lag the client a little)."""
    deadline = time.monotonic() + 10
    while True:
        lines = []
        for text in server.log_file.read_text().splitlines():
            if text.startswith("{"):
                entry = json.loads(text)
                if entry.get("event") == "request" and entry.get("path") == path:
                    lines.append(entry)
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def test_content_reads_are_logged_with_range_and_bytes(env: Env) -> None:
    data = data_of(3 * PART + 10, seed=24)
    user_id = ok(env.ada.get("/api/v1/me"))["user_id"]
    result = upload(env.ada, user_id, data, owner_type="user")
    url = ok(env.ada.get(f"/api/v1/assets/{result['asset_id']}/download"))["url"]
    path = httpx.URL(url).path
    assert httpx.get(url, trust_env=False).status_code == 200
    assert httpx.get(url, headers={"Range": "bytes=100-70000"}, trust_env=False).status_code == 206
    assert httpx.get(url, headers={"Range": f"bytes={len(data)}-"}, trust_env=False).status_code == 416
    assert httpx.head(url, trust_env=False).status_code == 200
    lines = _request_lines(env.server, path, 4)
    summary = [(e["method"], e["status"], e["range"], e["bytes"]) for e in lines]
    assert summary == [
        ("GET", 200, None, len(data)),
        ("GET", 206, "bytes=100-70000", 69901),
        ("GET", 416, f"bytes={len(data)}-", lines[2]["bytes"]),  # the error body
        ("HEAD", 200, None, 0),
    ]
    for entry in lines:
        # The path alone: the query carries the URL's signature.
        assert "?" not in entry["path"] and "signature" not in json.dumps(entry)
        assert isinstance(entry["duration_ms"], float) and entry["level"] == "info"
    # Every other request has its line too, with the same keys (and no `range`).
    error(env.ada.get("/api/v1/assets/ast_logged", params={"x": "1"}), 404, "not_found")
    (other,) = _request_lines(env.server, "/api/v1/assets/ast_logged", 1)
    assert (other["method"], other["status"]) == ("GET", 404) and other["bytes"] > 0 and "range" not in other


def test_a_read_stops_when_its_client_goes_away(env: Env) -> None:
    data = data_of(16 * 1024 * 1024, seed=25)  # more than the socket buffers hold
    user_id = ok(env.ada.get("/api/v1/me"))["user_id"]
    result = upload(env.ada, user_id, data, owner_type="user", part_size=len(data))
    url = httpx.URL(ok(env.ada.get(f"/api/v1/assets/{result['asset_id']}/download"))["url"])
    assert url.port is not None
    with socket.create_connection((url.host, url.port)) as sock:
        sock.sendall(f"GET {url.raw_path.decode()} HTTP/1.1\r\nHost: {url.host}\r\n\r\n".encode())
        received = 0
        while received < 100_000:
            received += len(sock.recv(65536))
    (line,) = _request_lines(env.server, url.path, 1)
    assert line["client_disconnected"] is True and line["status"] == 200
    assert line["bytes"] < len(data) // 2  # it stopped reading rather than send the rest to nobody


def test_signed_url_tampering_and_expiry(env: Env, stored: dict[str, Any]) -> None:
    url = stored["link"]["url"]
    signature = httpx.URL(url).params["signature"]
    forged = ("0" if signature[0] != "0" else "1") + signature[1:]
    expires = int(httpx.URL(url).params["expires"])
    for bad in (_with(url, signature=forged), _with(url, expires=str(expires + 3600)), url.split("?")[0]):
        err = error(httpx.get(bad, trust_env=False), 403, "permission_denied")
        assert err["reason"] == "bad_signature"
    # Another content's path with this signature.
    other = url.replace(stored["result"]["content_id"], "cnt_00000000000000000000")
    assert error(httpx.get(other, trust_env=False), 403, "permission_denied")["reason"] == "bad_signature"
    # Correctly signed by the server's secret, but past its expiry.
    path = httpx.URL(url).path
    stale = _server_signer(env.server, seconds_ago=7200).sign("GET", path, 60)
    err = error(httpx.get(f"{env.server.url}{path}?{urlencode(stale)}", trust_env=False), 403, "permission_denied")
    assert err["reason"] == "url_expired"
    # The same secret with a fresh expiry is accepted: the test signer is faithful.
    fresh = _server_signer(env.server).sign("GET", path, 60)
    assert httpx.get(f"{env.server.url}{path}?{urlencode(fresh)}", trust_env=False).status_code == 200


def test_part_url_tampering_and_expiry(env: Env) -> None:
    project = new_project(env.ada)
    data = data_of(PART, seed=21)
    upload_id = create_upload(env.ada, project["project_id"], data)["upload_id"]
    target = ok(
        env.ada.post(f"/api/v1/uploads/{upload_id}/parts/1/target", json={"sha256": sha256(data), "size": len(data)})
    )
    assert target["headers"] == {"Content-Length": str(len(data))}
    url = target["url"]
    other = data_of(PART, seed=22)
    # Swapping in the digest of other bytes breaks the signature: the store takes only the signed bytes.
    for bad in (
        _with(url, sha256=sha256(other)),
        _with(url, size=str(PART - 1)),
        _with(url, expires=str(int(httpx.URL(url).params["expires"]) + 1)),
        url.replace("/parts/1?", "/parts/2?"),
    ):
        err = error(httpx.put(bad, content=other, trust_env=False), 403, "permission_denied")
        assert err["reason"] == "bad_signature"
    path = httpx.URL(url).path
    stale = _server_signer(env.server, seconds_ago=7200).sign(
        "PUT", path, 60, {"sha256": sha256(data), "size": str(len(data))}
    )
    err = error(
        httpx.put(f"{env.server.url}{path}?{urlencode(stale)}", content=data, trust_env=False), 403, "permission_denied"
    )
    assert err["reason"] == "url_expired"
    assert ok(env.ada.get(f"/api/v1/uploads/{upload_id}"))["parts"] == []
    ok(httpx.put(url, content=data, trust_env=False))


def test_asset_metadata_get_and_patch(env: Env, stored: dict[str, Any]) -> None:
    asset_id = stored["result"]["asset_id"]
    before = ok(env.ada.get(f"/api/v1/assets/{asset_id}"))
    assert before["latest_content"]["size"] == len(stored["data"])
    assert before["created_by"] == ok(env.ada.get("/api/v1/me"))["user_id"]
    changed = ok(
        env.ada.patch(
            f"/api/v1/assets/{asset_id}",
            json={
                "title": "Run 42 v2",
                "tags": ["raw", "checked"],
                "metadata": {"beam": 8},
                "alias": "r42",
                "description": None,
            },
        )
    )
    assert changed["title"] == "Run 42 v2" and changed["tags"] == ["raw", "checked"]
    assert changed["metadata"] == {"beam": 8} and changed["alias"] == "r42" and changed["description"] is None
    assert changed["updated_at"] >= before["updated_at"]
    assert ok(env.ada.get(f"/api/v1/assets/{asset_id}")) == changed
    # metadata replaces, not merges
    assert ok(env.ada.patch(f"/api/v1/assets/{asset_id}", json={"metadata": {"x": 1}}))["metadata"] == {"x": 1}
    assert (
        error(env.ada.patch(f"/api/v1/assets/{asset_id}", json={"size": 3}), 400, "invalid_argument")["field"] == "size"
    )
    assert (
        error(env.ada.patch(f"/api/v1/assets/{asset_id}", json={"tags": "raw"}), 400, "invalid_argument")["field"]
        == "tags"
    )
    assert (
        error(env.ada.patch(f"/api/v1/assets/{asset_id}", json={"metadata": [1]}), 400, "invalid_argument")["field"]
        == "metadata"
    )
    assert (
        error(env.ada.patch(f"/api/v1/assets/{asset_id}", json={"title": 5}), 400, "invalid_argument")["field"]
        == "title"
    )
    error(env.ada_read.patch(f"/api/v1/assets/{asset_id}", json={"title": "x"}), 403, "permission_denied")
    error(env.bob.patch(f"/api/v1/assets/{asset_id}", json={"title": "x"}), 404, "not_found")
    error(env.bob.get(f"/api/v1/assets/{asset_id}"), 404, "not_found")
    error(env.ada.get("/api/v1/assets/ast_nope"), 404, "not_found")


def test_restart_keeps_sessions_parts_and_urls(start_server) -> None:  # type: ignore[no-untyped-def]
    server: Server = start_server()
    client = server.client(server.add_user("eve@example.org").strip())
    project = new_project(client)
    data = data_of(3 * PART - 17, seed=23)
    parts = parts_of(data, PART)
    upload_id = create_upload(client, project["project_id"], data, idempotency_key="job-restart")["upload_id"]
    ok(send_part(client, upload_id, 2, parts[1]))
    ok(send_part(client, upload_id, 1, parts[0]))
    ok(send_part(client, upload_id, 1, parts[0]))
    late = ok(
        client.post(
            f"/api/v1/uploads/{upload_id}/parts/3/target", json={"sha256": sha256(parts[2]), "size": len(parts[2])}
        )
    )
    before = ok(client.get(f"/api/v1/uploads/{upload_id}"))
    client.close()

    assert server.stop() == 0
    assert not server.ready_file.exists()  # removed on a clean stop
    server.start()
    client = server.client(client.headers["Authorization"].split()[1])

    after = ok(client.get(f"/api/v1/uploads/{upload_id}"))
    assert after == before
    assert [(p["number"], p["writes"]) for p in after["parts"]] == [(1, 2), (2, 1)]
    assert after["bytes_received"] == 2 * PART + PART
    # The signing secret lives in the database: a URL minted before the restart still works.
    ok(httpx.put(late["url"], content=parts[2], trust_env=False))
    result = ok(client.post(f"/api/v1/uploads/{upload_id}/complete", json={"idempotency_key": "job-restart"}))
    link = ok(client.get(f"/api/v1/assets/{result['asset_id']}/download"))
    assert httpx.get(link["url"], trust_env=False).content == data
    assert ok(client.get(f"/api/v1/projects/{project['project_id']}"))["used_bytes"] == len(data)
    client.close()


#: Signature and expiry values no signer makes, as they appear in the raw query (already
#: percent-encoded where they are, or lone escapes that decode to nothing valid).
ODD_QUERY_VALUES = (
    "%C3%BC",  # ü
    "%E6%97%A5%E6%9C%AC" * 8,  # 日本…, non-ASCII and as long as a real signature
    "%E2%98%83",  # ☃
    "%",  # a lone percent sign
    "%zz",
    "%f",
    "%FF",  # decodes to no valid UTF-8
    "%00",
    "a" * 6000,  # long, but inside the server's request-line limit
    "%C3%BC" * 1000,
)


def _raw_target(url: str, name: str, raw_value: str) -> str:
    """The request target of ``url`` with query parameter ``name`` set to ``raw_value`` exactly as written."""
    parsed = httpx.URL(url)
    pairs = [p if not p.startswith(name + "=") else f"{name}={raw_value}" for p in parsed.query.decode().split("&")]
    return parsed.path + "?" + "&".join(pairs)


def _with_raw(url: str, name: str, raw_value: str) -> httpx.URL:
    """``url`` with query parameter ``name`` replaced by ``raw_value`` (no re-encoding)."""
    return httpx.URL(url).copy_with(raw_path=_raw_target(url, name, raw_value).encode())


@pytest.mark.parametrize("raw_value", ODD_QUERY_VALUES)
@pytest.mark.parametrize("name", ["signature", "expires"])
def test_odd_signatures_are_bad_signatures_on_both_signed_routes(
    env: Env, stored: dict[str, Any], name: str, raw_value: str
) -> None:
    project = new_project(env.ada)
    data = data_of(PART, seed=23)
    upload_id = create_upload(env.ada, project["project_id"], data)["upload_id"]
    part_url = ok(
        env.ada.post(f"/api/v1/uploads/{upload_id}/parts/1/target", json={"sha256": sha256(data), "size": len(data)})
    )["url"]
    content_url = stored["link"]["url"]
    # What any other bad signature answers: the odd ones must answer exactly that.
    wrong = "0" * 64 if name == "signature" else "1"
    expected_put = httpx.put(_with_raw(part_url, name, wrong), content=data, trust_env=False)
    expected_get = httpx.get(_with_raw(content_url, name, wrong), trust_env=False)
    assert error(expected_put, 403, "permission_denied")["reason"] == "bad_signature"
    assert error(expected_get, 403, "permission_denied")["reason"] == "bad_signature"

    put = httpx.put(_with_raw(part_url, name, raw_value), content=data, trust_env=False)
    get = httpx.get(_with_raw(content_url, name, raw_value), trust_env=False)
    assert (put.status_code, put.json()) == (403, expected_put.json())
    assert (get.status_code, get.json()) == (403, expected_get.json())
    # Nothing was stored, and the honest URL still works.
    assert ok(env.ada.get(f"/api/v1/uploads/{upload_id}"))["parts"] == []
    ok(httpx.put(part_url, content=data, trust_env=False))


def test_a_signature_longer_than_a_request_line_may_be_is_refused_not_a_server_error(
        env: Env, stored: dict[str, Any]) -> None:
    url = httpx.URL(stored["link"]["url"])
    for raw_value in ("b" * 100_000, "%C3%BC" * 20_000):
        target = _raw_target(str(url), "signature", raw_value)
        assert url.port is not None
        with socket.create_connection((url.host, url.port)) as sock:
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {url.host}\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500, answer[:200]


def test_a_large_part_refused_before_its_body_is_read_is_answered_at_once(env: Env) -> None:
    """The answer must not wait on the unread body (bodies.py): before, the third such PUT on one
    connection hung until the client's timeout."""
    user_id = ok(env.ada.get("/api/v1/me"))["user_id"]  # her own: no project allocation to fit in
    data = data_of(16 << 20, seed=24)
    upload_id = create_upload(env.ada, user_id, data, part_size=len(data), owner_type="user")["upload_id"]
    target = ok(
        env.ada.post(f"/api/v1/uploads/{upload_id}/parts/1/target", json={"sha256": sha256(data), "size": len(data)})
    )
    forged = _with(target["url"], signature="0" * 64)
    with httpx.Client(timeout=60, trust_env=False) as parts:
        for _ in range(3):
            response = parts.put(forged, content=data, headers=target["headers"])
            assert error(response, 403, "permission_denied")["reason"] == "bad_signature"
            assert response.headers["Connection"] == "close"
        ok(parts.put(target["url"], content=data, headers=target["headers"]))
