"""dataerai.protocol: the sans-I/O framing, fuzzed without a socket."""

from __future__ import annotations

import json
from typing import Any

import pytest
from dataerai import protocol
from dataerai.protocol import (
    ERRORS,
    MAX_LINE_BYTES,
    FrameError,
    LineSplitter,
    Notification,
    Request,
    Response,
    RpcError,
    encode_notification,
    encode_request,
    encode_response,
    encode_responses,
    error_kind,
    parse_request_line,
    parse_server_line,
)
from hypothesis import given, settings
from hypothesis import strategies as st

# --- strategies ---------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(), json_values, max_size=5)
ids = st.integers() | st.text()
methods = st.text(min_size=1)


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


def _model_lines(stream: bytes, max_line: int) -> list[bytes | None]:
    """What a splitter must report for ``stream``: every ended line, None for an over-long one."""
    *ended, rest = stream.split(b"\n")
    out: list[bytes | None] = [line if len(line) <= max_line else None for line in ended]
    if len(rest) > max_line:
        out.append(None)
    return out


# --- LineSplitter ------------------------------------------------------------------


@given(st.lists(st.binary().map(lambda b: b.replace(b"\n", b"")), max_size=8), st.lists(st.integers(0, 10_000)))
def test_any_chunking_gives_the_same_lines(lines: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    splitter = LineSplitter()
    got: list[bytes | None] = []
    for piece in _cut(stream, cuts):
        got.extend(splitter.feed(piece))
    assert got == lines
    assert splitter.pending == 0


@given(
    st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=8),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
    st.lists(st.integers(0, 10_000)),
    st.integers(1, 20),
)
def test_over_long_lines_are_reported_once_and_skipped(
    lines: list[bytes], tail: bytes, cuts: list[int], max_line: int
) -> None:
    stream = b"".join(line + b"\n" for line in lines) + tail
    splitter = LineSplitter(max_line)
    got: list[bytes | None] = []
    for piece in _cut(stream, cuts):
        got.extend(splitter.feed(piece))
    assert got == _model_lines(stream, max_line)
    assert splitter.pending <= max_line


def test_splitter_byte_at_a_time_and_memory_bound() -> None:
    splitter = LineSplitter(8)
    got: list[bytes | None] = []
    for byte in b"short\n" + b"x" * 100 + b"\nok\n":
        got.extend(splitter.feed(bytes([byte])))
        assert splitter.pending <= 8
    assert got == [b"short", None, b"ok"]


def test_a_line_of_exactly_the_cap_is_kept() -> None:
    assert LineSplitter(4).feed(b"abcd\nabcde\n") == [b"abcd", None]
    assert LineSplitter(4).feed(b"") == []


# --- parse_request_line --------------------------------------------------------------


@given(st.binary(max_size=300))
def test_parse_request_line_never_raises_on_bytes(line: bytes) -> None:
    items, batch = parse_request_line(line)
    assert isinstance(batch, bool)
    assert all(isinstance(item, (Request, FrameError)) for item in items)


@given(json_values)
def test_parse_request_line_never_raises_on_any_json(value: Any) -> None:
    items, _ = parse_request_line(json.dumps(value).encode())
    for item in items:
        if isinstance(item, FrameError):
            assert item.response.error is not None
            assert item.response.error.code in ERRORS


def test_parse_request_line_cases() -> None:
    (req,), batch = parse_request_line(b'{"jsonrpc":"2.0","id":1,"method":"job.get","params":{"job_id":"j"}}')
    assert req == Request("job.get", {"job_id": "j"}, 1) and not batch
    (note,), _ = parse_request_line(b'{"jsonrpc":"2.0","method":"x"}')
    assert isinstance(note, Request) and note.is_notification and note.params == {}

    def error_of(line: bytes | None) -> str:
        (item,), _ = parse_request_line(line)
        assert isinstance(item, FrameError) and item.response.error is not None
        return item.response.error.code

    assert error_of(None) == "frame_too_large"
    assert error_of(b"{not json") == "parse_error"
    assert error_of(b"\xff\xfe\x00") == "parse_error"
    assert error_of(b"[" * 100_000) == "parse_error"  # too deep for json: not a crash
    assert error_of(b"[]") == "invalid_request"
    assert error_of(b"42") == "invalid_request"
    assert error_of(b'{"jsonrpc":"1.0","id":1,"method":"m"}') == "invalid_request"
    assert error_of(b'{"jsonrpc":"2.0","id":1.5,"method":"m"}') == "invalid_request"
    assert error_of(b'{"jsonrpc":"2.0","id":true,"method":"m"}') == "invalid_request"
    assert error_of(b'{"jsonrpc":"2.0","id":1,"method":""}') == "invalid_request"
    assert error_of(b'{"jsonrpc":"2.0","id":1,"method":"m","params":[1]}') == "invalid_argument"
    assert parse_request_line(b"   ") == ([], False)
    items, batch = parse_request_line(b'[{"jsonrpc":"2.0","id":1,"method":"a"}, 5]')
    assert batch and isinstance(items[0], Request) and isinstance(items[1], FrameError)


# --- round trips -----------------------------------------------------------------------


@given(methods, json_objects, st.none() | ids)
def test_request_round_trip(method: str, params: dict[str, Any], id_: int | str | None) -> None:
    line = encode_request(Request(method, params, id_))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    (lines,) = [LineSplitter().feed(line)]
    assert parse_request_line(lines[0]) == ([Request(method, params, id_)], False)


@given(st.lists(st.tuples(methods, json_objects, ids), min_size=1, max_size=4))
def test_request_batch_round_trip(calls: list[tuple[str, dict[str, Any], int | str]]) -> None:
    objs = [json.loads(encode_request(Request(m, p, i))) for m, p, i in calls]
    items, batch = parse_request_line(json.dumps(objs).encode())
    assert batch and items == [Request(m, p, i) for m, p, i in calls]


error_codes = st.sampled_from(sorted(ERRORS)) | st.text(min_size=1)
rpc_errors = st.builds(
    RpcError, error_codes, st.text(), st.dictionaries(st.text().filter(lambda k: k != "code"), json_values, max_size=3)
)
responses = st.builds(Response, st.none() | ids, result=json_values) | st.builds(
    Response, st.none() | ids, error=rpc_errors
)


@given(responses)
def test_response_round_trip(response: Response) -> None:
    assert list(parse_server_line(encode_response(response).rstrip(b"\n"))) == [response]


@given(st.lists(responses, min_size=1, max_size=4))
def test_response_batch_round_trip(batch: list[Response]) -> None:
    line = encode_responses(batch)
    assert line.count(b"\n") == 1
    assert list(parse_server_line(line)) == batch


@given(methods, json_objects)
def test_notification_round_trip(method: str, params: dict[str, Any]) -> None:
    assert list(parse_server_line(encode_notification(method, params))) == [Notification(method, params)]


def test_lone_surrogates_still_encode_as_valid_utf8() -> None:
    name = b"/data/caf\xe9.csv".decode("utf-8", "surrogateescape")
    line = encode_request(Request("upload.start", {"local_path": name}, 1))
    line.decode("utf-8")  # valid UTF-8 on the wire
    (request,), _ = parse_request_line(line)
    assert isinstance(request, Request) and request.params["local_path"] == name
    assert "é".encode() in encode_request(Request("m", {"t": "é"}, 1))  # readable when it can be


# --- parse_server_line ---------------------------------------------------------------


@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_parse_server_line_raises_only_value_error(line: bytes) -> None:
    try:
        for message in parse_server_line(line):
            assert isinstance(message, (Response, Notification))
    except ValueError:
        pass


def test_parse_server_line_cases() -> None:
    (r,) = parse_server_line(b'{"jsonrpc":"2.0","id":3,"error":{"code":-32004,"message":"gone"}}')
    assert r == Response(3, error=RpcError("not_found", "gone"))  # string code from the rpc code
    (r,) = parse_server_line(b'{"jsonrpc":"2.0","id":3,"error":{"code":-1,"message":"?","data":7}}')
    assert r == Response(3, error=RpcError("internal", "?"))
    (r,) = parse_server_line(b'{"jsonrpc":"2.0","id":3,"error":{"code":[1],"message":"?"}}')
    assert isinstance(r, Response) and r.error is not None and r.error.code == "internal"
    for bad in (
        b"[" * 100_000,
        b"not json",
        b'{"id":1,"result":1}',
        b'{"jsonrpc":"2.0","id":1}',
        b'{"jsonrpc":"2.0","method":"event","params":[1]}',
        b'{"jsonrpc":"2.0","method":5}',
        b'{"jsonrpc":"2.0","id":1,"error":"bad"}',
    ):
        with pytest.raises(ValueError):
            list(parse_server_line(bad))


# --- the catalogue ---------------------------------------------------------------------


def test_every_code_has_a_unique_rpc_code_and_an_http_status() -> None:
    kinds = list(ERRORS.values())
    assert len({k.code for k in kinds}) == len(kinds)
    assert len({k.rpc_code for k in kinds}) == len(kinds)
    for kind in kinds:
        assert ERRORS[kind.code] is kind
        assert 400 <= kind.http_status <= 599
        assert -32768 <= kind.rpc_code <= -32000
        assert kind.summary
    assert error_kind("no_such_code") is ERRORS["internal"]


def test_catalogue_matches_docs_protocol_table() -> None:
    documented = {
        "parse_error": -32700,
        "invalid_request": -32600,
        "method_not_found": -32601,
        "invalid_argument": -32602,
        "internal": -32603,
        "auth_required": -32001,
        "auth_expired": -32002,
        "permission_denied": -32003,
        "not_found": -32004,
        "conflict": -32005,
        "source_changed": -32006,
        "checksum_mismatch": -32007,
        "quota_exceeded": -32008,
        "cancelled": -32009,
        "timeout": -32010,
        "unavailable": -32011,
        "destination_exists": -32012,
        "frame_too_large": -32013,
        "rate_limited": -32014,
        "disk_full": -32015,
        "io_error": -32016,
        "unsafe_path": -32017,
        "systemd_unavailable": -32018,
        "service_failed": -32019,
    }
    assert {code: kind.rpc_code for code, kind in ERRORS.items()} == documented


def test_error_data_code_wins_and_is_not_duplicated() -> None:
    obj = protocol.error_object(RpcError("timeout", "late", {"job_id": "j"}))
    assert obj == {"code": -32010, "message": "late", "data": {"job_id": "j", "code": "timeout"}}


@settings(max_examples=50)
@given(st.integers(0, 64))
def test_max_line_constant(extra: int) -> None:
    assert LineSplitter().feed(b"x" * (MAX_LINE_BYTES + 1 + extra) + b"\n") == [None]


@pytest.mark.parametrize("number", [float("nan"), float("inf"), -float("inf")])
def test_what_json_cannot_hold_is_refused_before_it_is_sent(number: float) -> None:
    with pytest.raises(ValueError):
        protocol.encode_request(protocol.Request("asset.update", {"metadata": {"x": number}}, 1))
    with pytest.raises(ValueError):
        protocol.encode_response(protocol.Response(1, result={"rate": number}))
