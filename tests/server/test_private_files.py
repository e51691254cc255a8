"""The server's files are its user's alone: what it creates (whatever the umask), and what it finds."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import httpx
import pytest
from server_harness import SERVER, Server, data_of, new_project, ok, upload


def _modes(root: Path) -> dict[str, int]:
    """Every path under ``root`` (itself included) → its permission bits."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_everything_the_server_creates_is_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    server = Server(tmp_path / "new" / "data", umask=umask)
    # The first command on a fresh data directory creates it and the database.
    token = server.add_user("ada@example.org").strip()
    server.start()
    try:
        with server.client(token) as client:
            project = new_project(client)
            data = data_of(3 * 64 * 1024 + 17, seed=31)
            result = upload(client, project["project_id"], data)
            link = ok(client.get(f"/api/v1/assets/{result['asset_id']}/download"))
            assert httpx.get(link["url"], trust_env=False).content == data
            # A session left open keeps its parts in storage: they are checked too.
            open_session = ok(
                client.post(
                    "/api/v1/uploads",
                    json={"owner_type": "project", "owner_id": project["project_id"], "size": 10, "part_size": 65536},
                ),
                201,
            )
            assert open_session["state"] == "open"
        modes = _modes(server.data_dir)
    finally:
        server.stop()
    # What this test expects to exist, so that an empty walk cannot pass.
    for expected in (".", "repository.sqlite3", "repository.sqlite3-wal", "objects", "objects/contents"):
        assert expected in modes, sorted(modes)
    assert any(name.endswith(".part") or "/0000" in name for name in modes), sorted(modes)
    exposed = {name: f"{mode:04o}" for name, mode in modes.items() if mode & 0o077}
    assert exposed == {}
    # The parent the data directory was created in came from the server too.
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) & 0o077 == 0


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SERVER, *args], capture_output=True, text=True, timeout=60)


def test_a_database_other_users_can_read_is_refused_with_the_fix(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert _run("users", "add", "ada@example.org", "--data-dir", str(data_dir)).returncode == 0
    database = data_dir / "repository.sqlite3"
    database.chmod(0o644)  # as SQLite made it under umask 022, before this check existed
    for args in (
        ["run", "--data-dir", str(data_dir), "--bind", "127.0.0.1:0"],
        ["users", "add", "bob@example.org", "--data-dir", str(data_dir)],
    ):
        done = _run(*args)
        assert done.returncode != 0 and done.stdout == ""
        (line,) = done.stderr.strip().splitlines()
        assert str(database) in line and "0644" in line and f"chmod 600 {database}" in line, line
    # The command it names is the fix.
    subprocess.run(["chmod", "600", str(database)], check=True)
    assert _run("users", "add", "bob@example.org", "--data-dir", str(data_dir)).returncode == 0


def test_a_data_directory_other_users_can_list_is_warned_about(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    done = _run("users", "add", "ada@example.org", "--data-dir", str(data_dir))
    assert done.returncode == 0 and done.stdout.startswith("dtk_")
    assert f"{data_dir} is mode 0755" in done.stderr and f"chmod 700 {data_dir}" in done.stderr
    # Left as the administrator made it; the database inside is private anyway.
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o755
    assert stat.S_IMODE((data_dir / "repository.sqlite3").stat().st_mode) == 0o600
