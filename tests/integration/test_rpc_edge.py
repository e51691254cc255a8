"""The daemon's socket as a careless or hostile caller meets it: every frame gets a coded
answer, none gets ``internal``, and the connection goes on (a real daemon and server)."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
from dataerai import protocol
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from rpc_strategies import encode_frame
from rpc_strategies import frames as fuzz_frames
from stack import Stack, make_file

from dataeraid.methods import REGISTRY

#: Frames the fuzz test sends in `make test`; `make fuzz` sends more (DATAERAI_FUZZ_FRAMES).
FUZZ_FRAMES = int(os.environ.get("DATAERAI_FUZZ_FRAMES", "4000"))
FRAMES_PER_EXAMPLE = 20


class Wire:
    """A raw connection that pipelines a frame and a ping and reads every answer."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(120)  # a safety net: each answer normally takes milliseconds
        self.sock.connect(str(path))
        self.buffer = b""
        self.codes: Counter[str] = Counter()
        self.frames = 0

    def send(self, line: bytes) -> None:
        self.sock.sendall(line + b"\n")

    def message(self) -> Any:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(1 << 20)
            assert chunk, "the daemon closed the connection"
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def call(self, method: str, params: dict[str, Any] | None = None, ident: Any = "call") -> Any:
        self.send(json.dumps({"jsonrpc": "2.0", "id": ident, "method": method, "params": params or {}}).encode())
        return self.answer(ident)

    def answer(self, ident: Any) -> Any:
        """Read until the answer with ``ident``; every answer on the way is counted and checked."""
        while True:
            message = self.message()
            for item in message if isinstance(message, list) else [message]:
                if "method" in item:
                    continue  # an event notification
                error = item.get("error")
                code = error["data"]["code"] if error else "ok"
                assert code != "internal", item
                self.codes[code] += 1
                if item.get("id") == ident:
                    return item

    def ping(self, ident: str) -> None:
        self.send(json.dumps({"jsonrpc": "2.0", "id": ident, "method": "daemon.ping"}).encode())
        assert "result" in self.answer(ident), "the connection no longer answers daemon.ping"

    def close(self) -> None:
        self.sock.close()


def _error(answer: dict[str, Any]) -> tuple[str, str | None]:
    data = answer["error"]["data"]
    return data["code"], data.get("param")


def test_caller_errors_are_invalid_argument_naming_the_parameter(make_stack: Any, tmp_path: Path) -> None:
    stack: Stack = make_stack()
    wire = Wire(stack.socket_path)
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("job.get", {"job_id": "\ud800"}, "job_id"),
        ("job.get", {"job_id": "job_\x00" + "0" * 23}, "job_id"),
        ("job.get", {"job_id": "job_00000000000000000000000\r"}, "job_id"),
        ("job.wait", {"job_id": "job_" + "0" * 24, "timeout_s": -1}, "timeout_s"),
        ("job.wait", {"job_id": "job_" + "0" * 24, "timeout_s": float("inf")}, "timeout_s"),
        ("events.list", {"since": 2**63}, "since"),
        ("asset.update", {"asset_id": "ast_0123456789abcdef0123", "metadata": {"x": float("nan")}}, "metadata"),
        ("upload.start", {"local_path": "/tmp/a\x00b", "title": "t", "owner_type": "project",
                          "owner_id": stack.project_id}, "local_path"),
        ("download.start", {"asset_id": "ast_0123456789abcdef0123", "dest_dir": "/tmp/x\x00"}, "dest_dir"),
        ("upload.start", {"local_path": str(make_file(tmp_path / "f", 10)), "title": "t", "owner_type": "project",
                          "owner_id": "col_0123456789abcdef0123"}, "owner_id"),
    ]
    for method, params, param in cases:
        # NaN and 1e400 go out as Python's JSON extensions, which the daemon's reader takes.
        line = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
        wire.send(line)
        assert _error(wire.answer(1)) == ("invalid_argument", param), (method, params)
        wire.ping("p")
    assert wire.codes["internal"] == 0


def test_a_bad_subscription_does_not_close_the_connection(make_stack: Any) -> None:
    stack: Stack = make_stack()
    wire = Wire(stack.socket_path)
    for params in ({"since": 2**63}, {"jobs": ["\ud800"]}, {"types": ["job.state", "\x00"]}):
        answer = wire.call("events.subscribe", params)
        assert _error(answer)[0] == "invalid_argument"
        wire.ping("after")  # on the old daemon: a result, then EOF
    assert "result" in wire.call("events.subscribe", {"since": 0})
    wire.ping("still")


def test_ids_that_carry_a_path_reach_no_url(make_stack: Any, tmp_path: Path) -> None:
    stack: Stack = make_stack()
    with stack.api() as api:
        session = api.post("/uploads", json={"owner_type": "project", "owner_id": stack.project_id,
                                             "title": "open", "size": 10, "file_name": "a.bin",
                                             "part_size": 64 * 1024}).json()
        upload_id = session["upload_id"]
        wire = Wire(stack.socket_path)
        answer = wire.call("asset.get", {"asset_id": "../me"})
        assert _error(answer) == ("invalid_argument", "asset_id")  # the old daemon answered the /me object
        answer = wire.call("asset.delete", {"asset_id": f"../uploads/{upload_id}"})
        assert _error(answer) == ("invalid_argument", "asset_id")  # the old one aborted the session
        assert api.get(f"/uploads/{upload_id}").json()["state"] == "open"


def test_batches_are_bounded_and_refused_whole(make_stack: Any) -> None:
    stack: Stack = make_stack()
    wire = Wire(stack.socket_path)
    too_many = [{"jsonrpc": "2.0", "id": i, "method": "job.list"} for i in range(protocol.MAX_BATCH_ITEMS + 1)]
    wire.send(json.dumps(too_many).encode())
    answer = wire.message()
    assert answer["id"] is None and answer["error"]["data"]["code"] == "frame_too_large"
    ok = too_many[: protocol.MAX_BATCH_ITEMS]
    wire.send(json.dumps(ok).encode())
    answers = wire.message()
    assert isinstance(answers, list) and len(answers) == protocol.MAX_BATCH_ITEMS
    assert all("result" in a for a in answers)
    wire.ping("p")


def test_a_half_close_right_after_subscribing_crashes_nothing(make_stack: Any) -> None:
    stack: Stack = make_stack()
    for i in range(20):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(stack.socket_path))
            sock.sendall(json.dumps({"jsonrpc": "2.0", "id": i, "method": "events.subscribe",
                                     "params": {"since": 0}}).encode() + b"\n")
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            assert b'"result"' in data.split(b"\n")[0] or b"last_event_id" in data
    wire = Wire(stack.socket_path)
    wire.ping("alive")
    log = (stack.root / "daemon.log").read_text()
    assert "Nursery is closed" not in log and "crashed" not in log


def test_fuzzed_frames_get_coded_answers_and_the_connection_goes_on(make_stack: Any) -> None:
    stack: Stack = make_stack()
    assert stack.daemon is not None
    daemon = psutil.Process(stack.daemon.pid)
    wire = Wire(stack.socket_path)
    counter = iter(range(10**9))
    any_frame = fuzz_frames(REGISTRY)
    rss_start = daemon.memory_info().rss
    rss_peak = rss_start

    @settings(max_examples=max(1, FUZZ_FRAMES // FRAMES_PER_EXAMPLE), deadline=None, database=None,
              derandomize=True, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(st.data())
    def frames(data: st.DataObject) -> None:
        nonlocal rss_peak
        for _ in range(FRAMES_PER_EXAMPLE):
            ident = next(counter)
            wire.send(encode_frame(data.draw(any_frame, label="frame"), ident))
            wire.frames += 1
            wire.ping(f"ping-{ident}")
        assert stack.daemon is not None and stack.daemon.poll() is None, "the daemon died"
        rss_peak = max(rss_peak, daemon.memory_info().rss)

    started = time.monotonic()
    frames()
    elapsed = time.monotonic() - started
    print(f"\nfuzz: {wire.frames} frames in {elapsed:.1f} s; answers by code: {dict(wire.codes.most_common())}; "
          f"daemon RSS {rss_start / 2**20:.1f} -> peak {rss_peak / 2**20:.1f} MiB")
    assert wire.frames >= FUZZ_FRAMES
    assert wire.codes["internal"] == 0
    assert "invalid_argument" in wire.codes and "ok" in wire.codes
    # Flat: what the campaign leaves in the daemon does not grow with the frames sent.
    assert rss_peak - rss_start < 64 * 2**20, (rss_start, rss_peak)
    stack.daemon.send_signal(signal.SIGTERM)
    assert stack.daemon.wait(60) == 0
