"""docs/protocol.md cannot drift: every example in it is replayed against a real daemon.

The ```jsonrpc blocks hold `→` lines (sent) and `←` lines (expected back on the
same connection). Placeholders (`$JOB`, …) are replaced by the ids of a scenario
made first; a string with `…` in it matches any string of that shape, `"…"`
alone any value, and an object with a `"…"` key may have more keys. Ids,
times, pids and event ids are not compared.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest
from dataerai.contract import EVENT_TYPES
from dataerai.protocol import ERRORS
from stack import Stack, make_file, wait_for

from dataeraid.methods import REGISTRY

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
VOLATILE = frozenset({"id", "time", "pid", "created_at", "updated_at", "last_event_id"})
MiB = 1024 * 1024

Exchange = tuple[str, list[str]]  # a sent line, and the lines expected back


def blocks(text: str) -> list[list[Exchange]]:
    """The ```jsonrpc blocks of the document, each a list of exchanges."""
    found = []
    for body in re.findall(r"```jsonrpc\n(.*?)```", text, re.S):
        exchanges: list[Exchange] = []
        for line in body.splitlines():
            if line.startswith("→ "):
                exchanges.append((line[2:], []))
            elif line.startswith("← "):
                assert exchanges, f"an answer before any request: {line}"
                exchanges[-1][1].append(line[2:])
            else:
                assert not line.strip(), f"not an example line: {line!r}"
        found.append(exchanges)
    return found


def matches(expected: Any, actual: Any, path: str = "$") -> None:
    if expected == "…":
        return
    if isinstance(expected, str) and "…" in expected:
        pattern = ".*".join(re.escape(part) for part in expected.split("…"))
        assert isinstance(actual, str) and re.fullmatch(pattern, actual, re.S), f"{path}: {actual!r} !~ {expected!r}"
        return
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: {actual!r} is not an object"
        keys = set(expected) - {"…"}
        if "…" in expected:
            assert keys <= set(actual), f"{path}: missing {keys - set(actual)}"
        else:
            assert keys == set(actual), f"{path}: keys {sorted(actual)} != {sorted(keys)}"
        for key in keys:
            if key not in VOLATILE:
                matches(expected[key], actual[key], f"{path}.{key}")
        return
    if isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{path}: {actual!r} vs {expected!r}"
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            matches(e, a, f"{path}[{i}]")
        return
    assert expected == actual, f"{path}: {actual!r} != {expected!r}"


class Wire:
    """A raw connection: send a line, read messages."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(60)
        self.sock.connect(str(path))
        self.buffer = b""

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def receive(self) -> Any:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, "the daemon hung up"
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)


def test_every_method_and_event_and_code_is_documented() -> None:
    text = DOC.read_text()
    sent = {json.loads(line)["method"] for block in blocks(text) for line, _ in block}
    registry = REGISTRY
    assert sent == set(registry.methods), set(registry.methods) ^ sent
    for method in registry.methods:
        assert f"### `{method}`" in text
    for event_type in EVENT_TYPES:
        assert f"- `{event_type}`:" in text
    for code, kind in ERRORS.items():
        assert f"| `{code}` | {kind.rpc_code} |" in text


@pytest.fixture
def scenario(make_stack: Any, tmp_path: Path) -> tuple[Stack, dict[str, str]]:
    # $SLOW must still be running when the examples steer it, however slowly a busy machine
    # replays them: 32 MiB at 256 KiB/s is two minutes, and no example waits for it to end.
    # For the same reason an example that lists assets lists only these, made before any example
    # runs: the examples' own uploads end whenever the machine lets them.
    stack: Stack = make_stack(daemon_config={"bandwidth_limit_bps": 256 * 1024})
    small = make_file(tmp_path / "small.bin", 1000)
    out = tmp_path / "out"
    out.mkdir()
    watched = tmp_path / "watched"
    watched.mkdir()
    with stack.client() as client:
        done = client.upload(small, title="doc example", owner_type="project", owner_id=stack.project_id)
        other = client.upload(make_file(tmp_path / "other.bin", 10), title="derived", owner_type="project",
                              owner_id=stack.project_id)
        slow = client.upload(make_file(tmp_path / "slow.bin", 32 * MiB), title="slow", owner_type="project",
                             owner_id=stack.project_id, chunk_size_mb=1, wait=False)
        wait_for(lambda: client.get_job(slow.job_id).state == "running", 30, "the slow job to run")
    return stack, {"$JOB": done.transfer_id, "$SLOW": slow.job_id, "$ASSET": done.asset_id,
                   "$CONTENT": done.content_id, "$ASSET2": other.asset_id, "$PROJECT": stack.project_id,
                   "$FILE": str(small), "$DIR": str(out), "$WATCHED": str(watched)}


def test_every_example_replays(scenario: tuple[Stack, dict[str, str]]) -> None:
    stack, values = scenario

    def fill(line: str) -> str:
        for name, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
            line = line.replace(name, value)
        return line

    for block in blocks(DOC.read_text()):
        wire = Wire(stack.socket_path)
        try:
            for sent, expected_lines in block:
                request = json.loads(fill(sent))
                expected = [json.loads(fill(line)) for line in expected_lines]
                answer = [e for e in expected if "id" in e and "method" not in e]
                notes = [e for e in expected if "method" in e]
                wire.send(json.dumps(request))
                got_answer, got_notes = None, []
                while got_answer is None or len(got_notes) < len(notes):
                    message = wire.receive()
                    if "method" in message:
                        got_notes.append(message)
                    else:
                        got_answer = message
                where = request["method"]
                assert len(answer) == 1, f"{where}: an example needs exactly one answer"
                assert got_answer["id"] == request["id"]
                matches(answer[0], got_answer, where)
                for i, (e, a) in enumerate(zip(notes, got_notes, strict=True)):
                    matches(e, a, f"{where} notification {i}")
        finally:
            wire.sock.close()
