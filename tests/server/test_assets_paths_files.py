"""Asset paths, listing by prefix and glob, deletion, and multi-file contents."""

from __future__ import annotations

from typing import Any

import httpx
from server_harness import Env, create_upload, data_of, error, new_project, ok, send_part, sha256, upload


def _paths(page: dict[str, Any]) -> list[str]:
    return [asset["path"] for asset in page["assets"]]


def _list(client: httpx.Client, **params: Any) -> dict[str, Any]:
    return ok(client.get("/api/v1/assets", params=params))  # type: ignore[no-any-return]


def _project_with_paths(env: Env, paths: list[str]) -> tuple[str, dict[str, str]]:
    pid = new_project(env.ada, "paths")["project_id"]
    ids = {path: upload(env.ada, pid, data_of(10, i), path=path)["asset_id"] for i, path in enumerate(paths)}
    return pid, ids


def test_asset_path_defaults_and_changes(env: Env) -> None:
    pid = new_project(env.ada, "defaults")["project_id"]
    by_name = upload(env.ada, pid, data_of(5))  # file_name run42.h5
    assert ok(env.ada.get(f"/api/v1/assets/{by_name['asset_id']}"))["path"] == "run42.h5"
    nameless = upload(env.ada, pid, data_of(5, 1), file_name=None)
    asset = ok(env.ada.get(f"/api/v1/assets/{nameless['asset_id']}"))
    assert asset["path"] == nameless["asset_id"]
    assert asset["latest_content"]["files"][0]["path"] == nameless["asset_id"]
    given = upload(env.ada, pid, data_of(5, 2), path="raw/day1/run42.h5")
    asset = ok(env.ada.get(f"/api/v1/assets/{given['asset_id']}"))
    assert asset["path"] == "raw/day1/run42.h5"
    assert asset["latest_content"]["files"] == [
        {"path": "run42.h5", "offset": 0, "size": 5, "sha256": sha256(data_of(5, 2))}
    ]
    # PATCH sets it; a new version with a path moves it.
    moved = ok(env.ada.patch(f"/api/v1/assets/{given['asset_id']}", json={"path": "raw/day2/run42.h5"}))
    assert moved["path"] == "raw/day2/run42.h5"
    upload(env.ada, pid, data_of(6, 3), asset_id=given["asset_id"], path="final/run42.h5")
    assert ok(env.ada.get(f"/api/v1/assets/{given['asset_id']}"))["path"] == "final/run42.h5"

    bad = ["", "/abs", "a/../b", "./a", "a//b", "a/", "a\\b", "a\x00b", "x" * 1025, ".."]
    for path in bad:
        assert error(env.ada.patch(f"/api/v1/assets/{given['asset_id']}", json={"path": path}), 400,
                     "invalid_argument")["field"] == "path", path
        body = {"owner_type": "project", "owner_id": pid, "size": 1, "part_size": 65536, "path": path}
        assert error(env.ada.post("/api/v1/uploads", json=body), 400, "invalid_argument")["field"] == "path"
        body = {"owner_type": "project", "owner_id": pid, "size": 1, "part_size": 65536, "file_name": path}
        assert error(env.ada.post("/api/v1/uploads", json=body), 400, "invalid_argument")["field"] == "file_name"
    assert error(env.ada.patch(f"/api/v1/assets/{given['asset_id']}", json={"path": None}), 400,
                 "invalid_argument")["field"] == "path"
    ok(env.ada.patch(f"/api/v1/assets/{given['asset_id']}", json={"path": "x" * 1024}))


def test_listing_by_prefix_and_glob(env: Env) -> None:
    paths = ["z.nwb", "a.txt", "sub/b.nwb", "sub/deep/c.nwb", "sub/deep/d.txt", "sub2/e.nwb", "b.txt"]
    pid, ids = _project_with_paths(env, paths)
    everything = _list(env.ada, project_id=pid)
    assert _paths(everything) == sorted(paths) and everything["next_cursor"] is None
    assert everything["assets"][0]["asset_id"] == ids["a.txt"]
    # A listing tells how many files each content has, not which (GET …/files pages them).
    listed = everything["assets"][0]["latest_content"]
    assert listed["file_count"] == 1 and "files" not in listed and listed["size"] == 10
    one = ok(env.ada.get(f"/api/v1/assets/{ids['a.txt']}"))["latest_content"]
    assert one["file_count"] == 1 and one["files"][0]["size"] == 10

    cases = {
        "*.nwb": ["z.nwb"],
        "**/*.nwb": ["sub/b.nwb", "sub/deep/c.nwb", "sub2/e.nwb", "z.nwb"],
        "**.nwb": ["sub/b.nwb", "sub/deep/c.nwb", "sub2/e.nwb", "z.nwb"],
        "sub/*": ["sub/b.nwb"],
        "sub/**": ["sub/b.nwb", "sub/deep/c.nwb", "sub/deep/d.txt"],
        "sub*/*.nwb": ["sub/b.nwb", "sub2/e.nwb"],
        "?.txt": ["a.txt", "b.txt"],
        "[ab].txt": ["a.txt", "b.txt"],
        "[!a].txt": ["b.txt"],
        "sub/deep/c.nwb": ["sub/deep/c.nwb"],
        "*.NWB": [],
    }
    for glob, expected in cases.items():
        assert _paths(_list(env.ada, project_id=pid, glob=glob)) == expected, glob
    assert _paths(_list(env.ada, project_id=pid, path_prefix="sub/")) == ["sub/b.nwb", "sub/deep/c.nwb",
                                                                          "sub/deep/d.txt"]
    assert _paths(_list(env.ada, project_id=pid, path_prefix="sub")) == ["sub/b.nwb", "sub/deep/c.nwb",
                                                                         "sub/deep/d.txt", "sub2/e.nwb"]
    assert _paths(_list(env.ada, project_id=pid, path_prefix="SUB")) == []  # case matters
    assert _paths(_list(env.ada, project_id=pid, path_prefix="sub/", glob="**/*.txt")) == ["sub/deep/d.txt"]
    assert _paths(_list(env.ada, project_id=pid, glob="%")) == []  # not a LIKE pattern

    # Pages of two, chained by cursor, give everything once, in order.
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = _list(env.ada, project_id=pid, limit=2, **({"cursor": cursor} if cursor else {}))
        seen += _paths(page)
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(paths) and pages == 4
    # The same with a glob that skips most rows.
    first = _list(env.ada, project_id=pid, glob="**/*.nwb", limit=3)
    assert _paths(first) == ["sub/b.nwb", "sub/deep/c.nwb", "sub2/e.nwb"] and first["next_cursor"]
    rest = _list(env.ada, project_id=pid, glob="**/*.nwb", limit=3, cursor=first["next_cursor"])
    assert _paths(rest) == ["z.nwb"] and rest["next_cursor"] is None


def test_listing_equal_paths_orders_by_id_and_pages_through(env: Env) -> None:
    pid = new_project(env.ada, "dupes")["project_id"]
    ids = sorted(upload(env.ada, pid, data_of(3, i), path="same.bin")["asset_id"] for i in range(3))
    seen = []
    page = _list(env.ada, project_id=pid, limit=1)
    seen += [a["asset_id"] for a in page["assets"]]
    while page["next_cursor"]:
        page = _list(env.ada, project_id=pid, limit=1, cursor=page["next_cursor"])
        seen += [a["asset_id"] for a in page["assets"]]
    assert seen == ids


def test_listing_by_collection_and_the_checks(env: Env) -> None:
    pid = new_project(env.ada, "by collection")["project_id"]
    col = ok(env.ada.post("/api/v1/collections", json={"project_id": pid, "name": "c"}), 201)["collection_id"]
    upload(env.ada, pid, data_of(4), path="root.bin")
    upload(env.ada, col, data_of(4, 1), owner_type="collection", path="in/c.bin")
    upload(env.ada, pid, data_of(4, 2), collection_id=col, path="in/p.bin")
    assert _paths(_list(env.ada, collection_id=col)) == ["in/c.bin", "in/p.bin"]
    assert _paths(_list(env.ada, project_id=pid)) == ["in/c.bin", "in/p.bin", "root.bin"]
    assert _paths(_list(env.ada_read, project_id=pid, glob="in/c*")) == ["in/c.bin"]

    def bad(status: int, code: str, **params: Any) -> dict[str, Any]:
        return error(env.ada.get("/api/v1/assets", params=params), status, code)

    assert bad(400, "invalid_argument")["field"] == "project_id"
    assert bad(400, "invalid_argument", project_id=pid, collection_id=col)["field"] == "project_id"
    for limit in ("0", "1001", "x", "-1"):
        assert bad(400, "invalid_argument", project_id=pid, limit=limit)["field"] == "limit"
    assert _paths(_list(env.ada, project_id=pid, limit=1000)) == ["in/c.bin", "in/p.bin", "root.bin"]
    assert bad(400, "invalid_argument", project_id=pid, cursor="not-a-cursor")["field"] == "cursor"
    error(env.bob.get("/api/v1/assets", params={"project_id": pid}), 404, "not_found")
    error(env.bob.get("/api/v1/assets", params={"collection_id": col}), 404, "not_found")
    error(env.anon.get("/api/v1/assets", params={"project_id": pid}), 401, "auth_required")


def test_delete_asset(env: Env) -> None:
    pid = new_project(env.ada, "delete")["project_id"]
    data = data_of(70_000, seed=9)  # two parts
    gone = upload(env.ada, pid, data, path="gone.bin")
    upload(env.ada, pid, data_of(1000, 10), asset_id=gone["asset_id"])  # a second version
    kept = upload(env.ada, pid, data_of(100, 11), path="kept.bin")
    assert ok(env.ada.get(f"/api/v1/projects/{pid}"))["used_bytes"] == len(data) + 1000 + 100
    for source, target in ((gone, kept), (kept, gone)):
        body = {"to_asset_id": target["asset_id"], "rel_type": "derived_from"}
        ok(env.ada.post(f"/api/v1/assets/{source['asset_id']}/relationships", json=body), 201)
    link = ok(env.ada.get(f"/api/v1/assets/{gone['asset_id']}/download"))
    assert httpx.get(link["url"], trust_env=False).content == data_of(1000, 10)
    with env.server.db() as db:
        rows = db.execute("select storage_key from contents where asset_id = ?", (gone["asset_id"],))
        keys = [row[0] for row in rows]
    objects = [env.server.data_dir / "objects" / "contents" / key[-2:] / key for key in keys]
    assert len(objects) == 2 and all(path.exists() for path in objects)

    error(env.bob.delete(f"/api/v1/assets/{gone['asset_id']}"), 404, "not_found")
    error(env.ada_read.delete(f"/api/v1/assets/{gone['asset_id']}"), 403, "permission_denied")
    ok(env.ada.delete(f"/api/v1/assets/{gone['asset_id']}"), 204)

    error(env.ada.get(f"/api/v1/assets/{gone['asset_id']}"), 404, "not_found")
    error(env.ada.delete(f"/api/v1/assets/{gone['asset_id']}"), 404, "not_found")
    assert ok(env.ada.get(f"/api/v1/projects/{pid}"))["used_bytes"] == 100
    assert ok(env.ada.get(f"/api/v1/assets/{kept['asset_id']}/relationships"))["relationships"] == []
    assert _paths(_list(env.ada, project_id=pid)) == ["kept.bin"]
    error(httpx.get(link["url"], trust_env=False), 404, "not_found")
    # The rows and the stored bytes of both versions are gone; the other asset is untouched.
    assert not any(path.exists() for path in objects)
    with env.server.db() as db:
        for table, column in (("contents", "asset_id"), ("relationships", "from_asset_id"),
                              ("relationships", "to_asset_id")):
            count = db.execute(f"select count(*) from {table} where {column} = ?", (gone["asset_id"],)).fetchone()
            assert count == (0,), table
        assert db.execute("select count(*) from content_files where content_id = ?",
                          (gone["content_id"],)).fetchone() == (0,)
        # Deleted at once: nothing left queued for the sweep.
        placeholders = ",".join("?" * len(keys))
        assert db.execute(f"select count(*) from storage_deletions where storage_key in ({placeholders})",
                          keys).fetchone() == (0,)
    kept_link = ok(env.ada.get(f"/api/v1/assets/{kept['asset_id']}/download"))
    assert httpx.get(kept_link["url"], trust_env=False).content == data_of(100, 11)


# --- multi-file contents ----------------------------------------------------------------------


FILES = [("d/a.txt", 3), ("d/sub/b.bin", 70_000), ("empty", 0), ("c.txt", 5)]


def _tree() -> tuple[bytes, list[dict[str, Any]], list[str]]:
    blobs = [data_of(size, seed=i) for i, (_, size) in enumerate(FILES)]
    files = [{"path": path, "size": size} for path, size in FILES]
    return b"".join(blobs), files, [sha256(blob) for blob in blobs]


def test_multi_file_content(env: Env) -> None:
    pid = new_project(env.ada, "tree")["project_id"]
    data, files, digests = _tree()
    session = create_upload(env.ada, pid, data, file_name="mydir", files=files)
    assert session["files"] == files and session["path"] is None and session["part_count"] == 2
    upload_id = session["upload_id"]
    for number, part in enumerate((data[:65536], data[65536:]), start=1):
        ok(send_part(env.ada, upload_id, number, part))
    # The digests must come one per file.
    assert error(env.ada.post(f"/api/v1/uploads/{upload_id}/complete", json={"file_sha256": digests[:2]}), 400,
                 "invalid_argument")["field"] == "file_sha256"
    assert error(env.ada.post(f"/api/v1/uploads/{upload_id}/complete", json={"file_sha256": ["x"] * 4}), 400,
                 "invalid_argument")["field"] == "file_sha256"
    result = ok(env.ada.post(f"/api/v1/uploads/{upload_id}/complete", json={"file_sha256": digests}))
    assert result["size"] == len(data) and result["sha256"] == sha256(data)

    offsets = [0, 3, 70_003, 70_003]
    expected: list[dict[str, Any]] = [
        {"path": path, "offset": offset, "size": size, "sha256": digest}
        for (path, size), offset, digest in zip(FILES, offsets, digests, strict=True)
    ]
    asset = ok(env.ada.get(f"/api/v1/assets/{result['asset_id']}"))
    assert asset["path"] == "mydir" and asset["latest_content"]["files"] == expected
    target = ok(env.ada.get(f"/api/v1/assets/{result['asset_id']}/download"))
    assert target["files"] == expected and target["size"] == len(data) and target["file_name"] == "mydir"
    assert set(target) >= {"content_id", "size", "sha256", "file_name", "url", "headers", "expires_at", "files"}
    # Each file is its range of the stream.
    for entry in expected:
        if entry["size"]:
            end = entry["offset"] + entry["size"] - 1
            got = httpx.get(target["url"], headers={"Range": f"bytes={entry['offset']}-{end}"}, trust_env=False)
            assert sha256(got.content) == entry["sha256"]

    files_url = f"/api/v1/assets/{result['asset_id']}/files"
    one = ok(env.ada.get(files_url, params={"path": "d/sub/b.bin"}))
    assert one == {**expected[1], "content_id": result["content_id"]}
    assert error(env.ada.get(files_url, params={"path": "d/sub"}), 404, "not_found")["path"] == "d/sub"
    error(env.bob.get(files_url, params={"path": "d/a.txt"}), 404, "not_found")
    listed = ok(env.ada.get(files_url))
    assert listed["files"] == [{**e, "content_id": result["content_id"]} for e in expected]
    assert listed["next_cursor"] is None and listed["content_id"] == result["content_id"]
    page = ok(env.ada.get(files_url, params={"prefix": "d/", "limit": 1}))
    assert [f["path"] for f in page["files"]] == ["d/a.txt"] and page["next_cursor"]
    page = ok(env.ada.get(files_url, params={"prefix": "d/", "limit": 1, "cursor": page["next_cursor"]}))
    assert [f["path"] for f in page["files"]] == ["d/sub/b.bin"] and page["next_cursor"] is None
    assert error(env.ada.get(files_url, params={"cursor": "zz"}), 400, "invalid_argument")["field"] == "cursor"


def test_multi_file_without_reported_digests(env: Env) -> None:
    pid = new_project(env.ada, "tree2")["project_id"]
    data, files, _ = _tree()
    result = upload(env.ada, pid, data, files=files, path="trees/one")
    asset = ok(env.ada.get(f"/api/v1/assets/{result['asset_id']}"))
    assert asset["path"] == "trees/one"
    assert [f["sha256"] for f in asset["latest_content"]["files"]] == [None] * 4


def test_single_file_digest_must_be_the_whole(env: Env) -> None:
    pid = new_project(env.ada, "single")["project_id"]
    data = data_of(100)
    session = create_upload(env.ada, pid, data)
    ok(send_part(env.ada, session["upload_id"], 1, data))
    url = f"/api/v1/uploads/{session['upload_id']}/complete"
    assert error(env.ada.post(url, json={"file_sha256": [sha256(b"other")]}), 400, "invalid_argument")[
        "field"
    ] == "file_sha256"
    result = ok(env.ada.post(url, json={"file_sha256": [sha256(data)]}))
    files = ok(env.ada.get(f"/api/v1/assets/{result['asset_id']}"))["latest_content"]["files"]
    assert files == [{"path": "run42.h5", "offset": 0, "size": 100, "sha256": sha256(data)}]


def test_file_lists_are_checked(env: Env) -> None:
    pid = new_project(env.ada, "checks")["project_id"]

    def refused(files: Any, size: int = 10) -> dict[str, Any]:
        body = {"owner_type": "project", "owner_id": pid, "file_name": "d", "size": size, "part_size": 65536,
                "files": files}
        return error(env.ada.post("/api/v1/uploads", json=body), 400, "invalid_argument")

    cases: list[Any] = [
        [{"path": "a", "size": 4}, {"path": "b", "size": 5}],  # 9 != 10
        [{"path": "a", "size": 5}, {"path": "a", "size": 5}],  # twice
        [{"path": "a", "size": 5}, {"path": "a/b", "size": 5}],  # a file and a directory
        [{"path": "x/a/b", "size": 5}, {"path": "x/a", "size": 5}],
        [{"path": "../a", "size": 10}],
        [{"path": "/a", "size": 10}],
        [{"path": "a//b", "size": 10}],
        [{"path": "a\\b", "size": 10}],
        [{"path": "a", "size": -1}, {"path": "b", "size": 11}],
        [{"path": "a", "size": True}],
        [{"path": 5, "size": 10}],
        [{"path": "a", "size": 10, "mode": 644}],
        [{"path": "a"}],
        ["a"],
        [],
        {"a": 10},
    ]
    for files in cases:
        assert refused(files)["field"] == "files", files
    too_many = [{"path": f"f{i}", "size": 0} for i in range(100_001)]
    assert "100000" in refused(too_many, size=0)["message"]
    # The most files allowed, all empty: accepted (and the body is over the usual 1 MiB).
    most = too_many[:100_000]
    body = {"owner_type": "project", "owner_id": pid, "file_name": "d", "size": 0, "part_size": 65536, "files": most}
    assert len(ok(env.ada.post("/api/v1/uploads", json=body), 201)["files"]) == 100_000


def test_files_of_an_older_version_and_of_a_user_owned_asset(env: Env) -> None:
    me = ok(env.ada.get("/api/v1/me"))["user_id"]
    data, files, _ = _tree()
    first = upload(env.ada, me, data, owner_type="user", files=files, file_name="tree")
    second = upload(env.ada, me, b"flat", owner_type="user", asset_id=first["asset_id"], file_name="flat.txt")
    url = f"/api/v1/assets/{first['asset_id']}/files"
    assert [f["path"] for f in ok(env.ada.get(url))["files"]] == ["flat.txt"]
    older = ok(env.ada.get(url, params={"content_id": first["content_id"]}))
    assert [f["path"] for f in older["files"]] == [path for path, _ in FILES]
    assert ok(env.ada.get(url, params={"content_id": first["content_id"], "path": "c.txt"}))["offset"] == 70_003
    error(env.ada.get(url, params={"content_id": "cnt_nope"}), 404, "not_found")
    error(env.bob.get(url), 404, "not_found")
    # Its owner deletes it; nobody else even sees it.
    error(env.bob.delete(f"/api/v1/assets/{first['asset_id']}"), 404, "not_found")
    ok(env.ada.delete(f"/api/v1/assets/{second['asset_id']}"), 204)
    error(env.ada.get(url), 404, "not_found")
