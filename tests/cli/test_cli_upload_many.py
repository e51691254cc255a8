"""``dataerai upload PATH PATH...`` and ``--from-file``: many uploads through ``upload.start_many``,
in calls of at most ``MAX_START_MANY_ITEMS``, against a scripted daemon (``fake_daemon``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from dataerai.contract import MAX_START_MANY_ITEMS

from dataeraid.cli import cli


def invoke(runner: CliRunner, *args: str) -> Any:
    return runner.invoke(cli, list(args), prog_name="dataerai")


def _files(tmp_path: Path, n: int) -> list[Path]:
    made = []
    for i in range(n):
        path = tmp_path / f"r{i}.h5"
        path.write_bytes(b"x")
        made.append(path)
    return made


def _answer(wire: Any) -> Any:
    return lambda p: [wire.job(item["job_id"], local_path=item["local_path"]) for item in p["items"]]


def test_several_paths_go_in_one_call_each_titled_by_its_name(
    runner: CliRunner, fake_daemon: Any, wire: Any, tmp_path: Path
) -> None:
    files = _files(tmp_path, 3)
    fake_daemon.on("upload.start_many", _answer(wire))
    result = invoke(runner, "upload", *map(str, files), "--project", "prj_1", "--tag", "raw", "--no-wait")
    assert result.exit_code == 0, result.output
    (request,) = [r for r in fake_daemon.requests if r.method == "upload.start_many"]
    items = request.params["items"]
    assert [(i["local_path"], i["title"], i["owner_id"], i["tags"]) for i in items] == [
        (str(f), f.name, "prj_1", ["raw"]) for f in files]
    assert result.output.split() == [i["job_id"] for i in items]
    assert "upload.start" not in fake_daemon.methods()


def test_a_list_longer_than_a_call_takes_goes_in_several_calls(
    runner: CliRunner, fake_daemon: Any, wire: Any, tmp_path: Path
) -> None:
    (one,) = _files(tmp_path, 1)
    listed = tmp_path / "list.txt"
    listed.write_text(f"{one}\n\n" * (MAX_START_MANY_ITEMS + 5))
    fake_daemon.on("upload.start_many", _answer(wire))
    result = invoke(runner, "upload", "--from-file", str(listed), "--collection", "col_1", "--no-wait", "--json")
    assert result.exit_code == 0, result.output
    calls = [r.params["items"] for r in fake_daemon.requests if r.method == "upload.start_many"]
    assert [len(items) for items in calls] == [MAX_START_MANY_ITEMS, 5]
    assert calls[0][0]["owner_type"] == "collection"
    assert len([json.loads(line) for line in result.output.splitlines()]) == MAX_START_MANY_ITEMS + 5


def test_a_refused_call_names_the_path_and_what_was_queued_before_it(
    runner: CliRunner, fake_daemon: Any, wire: Any, tmp_path: Path
) -> None:
    files = _files(tmp_path, 2)
    listed = tmp_path / "list.txt"
    listed.write_text("".join(f"{files[0]}\n" for _ in range(MAX_START_MANY_ITEMS)) + f"{files[1]}\n")
    calls = []

    def answer(p: dict[str, Any]) -> Any:
        calls.append(p)
        if len(calls) == 2:
            return wire.error("permission_denied", "items[0]: not readable", index=0)
        return _answer(wire)(p)

    fake_daemon.on("upload.start_many", answer)
    result = invoke(runner, "upload", "--from-file", str(listed), "--project", "prj_1", "--no-wait")
    assert result.exit_code == 1
    assert "permission_denied" in result.output
    assert f"({files[1]})" in result.output
    assert f"{MAX_START_MANY_ITEMS} upload(s) queued before it, none of the 1 from there on" in result.output


def test_options_that_name_one_asset_are_refused_with_several_paths(
    runner: CliRunner, fake_daemon: Any, tmp_path: Path
) -> None:
    files = _files(tmp_path, 2)
    for option in (["--title", "T"], ["--asset", "ast_12345678"], ["--path", "a/b"]):
        result = invoke(runner, "upload", *map(str, files), "--project", "prj_1", *option)
        assert result.exit_code != 0
        assert f"{option[0]} names one asset" in result.output
    assert fake_daemon.requests == []


def test_waiting_prints_a_line_per_upload(runner: CliRunner, fake_daemon: Any, wire: Any, tmp_path: Path) -> None:
    files = _files(tmp_path, 2)
    done = {f"job_{i}": wire.job(f"job_{i}", state="completed", asset_id=f"ast_{i}", content_id=f"cnt_{i}")
            for i in range(2)}
    ids: list[str] = []

    def start(p: dict[str, Any]) -> Any:
        ids.extend(item["job_id"] for item in p["items"])
        return [wire.job(job_id) for job_id in ids]

    fake_daemon.on("upload.start_many", start)
    fake_daemon.on("job.get", lambda p: done[f"job_{ids.index(p['job_id'])}"] | {"job_id": p["job_id"]})
    result = invoke(runner, "upload", *map(str, files), "--project", "prj_1")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith(str(tmp_path))]
    assert lines == [f"{files[0]} ast_0 cnt_0", f"{files[1]} ast_1 cnt_1"]
