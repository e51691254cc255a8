"""The wire between the SDK and the daemon: JSON-RPC 2.0, one JSON value per line.

Sans-I/O, standard library only: nothing here touches a socket, so the daemon
and the SDK share one definition of the wire and it can be fuzzed byte by byte.

The error catalogue lives here too. Every error the product reports, from the
repository's HTTP API through the daemon's RPC to ``DaemonError.code`` in the
SDK, carries one of these stable string codes. On the RPC wire the string code
travels in ``error.data.code`` beside the JSON-RPC integer code it maps to.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

#: A line longer than this is refused with ``frame_too_large``, never buffered whole.
MAX_LINE_BYTES: Final = 1 << 20
#: A batch may hold at most this many requests; a longer one is refused whole with
#: ``frame_too_large`` and none of it runs.
MAX_BATCH_ITEMS: Final = 100
#: The longest line the daemon sends (an answer, a batch's answers, an event). An answer
#: that would be longer is replaced by a ``frame_too_large`` error: ask for less (a
#: smaller ``limit``). The SDK reads lines up to this long.
MAX_ANSWER_BYTES: Final = 16 << 20

JSONRPC_VERSION: Final = "2.0"


@dataclass(frozen=True)
class ErrorKind:
    """One entry of the catalogue: the stable code and how each boundary shows it."""

    code: str
    rpc_code: int
    http_status: int
    summary: str


_CATALOGUE: Final[tuple[ErrorKind, ...]] = (
    # The JSON-RPC 2.0 reserved codes keep their meaning.
    ErrorKind("parse_error", -32700, 400, "The frame is not valid JSON."),
    ErrorKind("invalid_request", -32600, 400, "The frame is JSON but not a JSON-RPC request."),
    ErrorKind("method_not_found", -32601, 404, "No such method."),
    ErrorKind("invalid_argument", -32602, 400, "A parameter is missing, of the wrong type or out of range."),
    ErrorKind("internal", -32603, 500, "A bug: the operation failed for a reason the caller cannot fix."),
    # The product's own codes.
    ErrorKind("auth_required", -32001, 401, "No credentials: run `dataerai auth login`."),
    ErrorKind("auth_expired", -32002, 401, "The token expired or was revoked: log in again."),
    ErrorKind("permission_denied", -32003, 403, "The token's user or scope may not do this."),
    ErrorKind("not_found", -32004, 404, "The object does not exist or is not visible to this user."),
    ErrorKind("conflict", -32005, 409, "The request conflicts with the object's current state."),
    ErrorKind("source_changed", -32006, 409, "The local source changed after it was enqueued."),
    ErrorKind("checksum_mismatch", -32007, 422, "Bytes did not match their SHA-256."),
    ErrorKind("quota_exceeded", -32008, 413, "The project's storage allocation is used up."),
    ErrorKind("cancelled", -32009, 409, "The job was cancelled."),
    ErrorKind("timeout", -32010, 504, "The request or transfer did not finish in time."),
    ErrorKind("unavailable", -32011, 503, "The repository cannot be reached right now."),
    ErrorKind("destination_exists", -32012, 409, "A different file is already at the destination."),
    ErrorKind("frame_too_large", -32013, 413, "The frame or request body is larger than allowed."),
    ErrorKind("rate_limited", -32014, 429, "Too many requests; retry later."),
    ErrorKind("disk_full", -32015, 507, "No space left on the local disk."),
    ErrorKind("io_error", -32016, 500, "A local file could not be read or written."),
    ErrorKind("unsafe_path", -32017, 400, "A path would escape its destination directory."),
    # The command line's own: `dataerai service` found no systemd user manager to install into.
    ErrorKind("systemd_unavailable", -32018, 503, "No systemd user manager can be reached (`systemctl --user`)."),
    # `dataerai service install --now`: systemd was reached and ran the daemon, which did not start.
    ErrorKind("service_failed", -32019, 500, "The daemon's systemd service did not start: its journal says why."),
)

ERRORS: Final[Mapping[str, ErrorKind]] = {kind.code: kind for kind in _CATALOGUE}
_BY_RPC_CODE: Final[Mapping[int, ErrorKind]] = {kind.rpc_code: kind for kind in _CATALOGUE}


def error_kind(code: str) -> ErrorKind:
    """The catalogue entry for ``code``; unknown codes read as ``internal``."""
    return ERRORS.get(code, ERRORS["internal"])


# --- messages -------------------------------------------------------------

JSONValue = Any  # json.loads' result; narrowed where it is used


@dataclass(frozen=True)
class Request:
    """A call. ``id`` is None for a notification (no answer is sent)."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)
    id: int | str | None = None

    @property
    def is_notification(self) -> bool:
        return self.id is None


@dataclass(frozen=True)
class RpcError:
    """An error object: the stable string ``code``, a message a person can act on, extra data."""

    code: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Response:
    """The answer to the request with the same ``id``: exactly one of result or error."""

    id: int | str | None
    result: Any = None
    error: RpcError | None = None


@dataclass(frozen=True)
class Notification:
    """A message from the daemon with no id, such as an ``event``."""

    method: str
    params: dict[str, Any]


@dataclass(frozen=True)
class FrameError:
    """A line that could not be read as a request; answer it with ``response``."""

    response: Response


Incoming = Request | FrameError


# --- encoding -------------------------------------------------------------


def _dump(obj: Any) -> bytes:
    """One line of JSON. Raises ``ValueError`` for what JSON cannot hold (NaN, infinity)."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        return text.encode() + b"\n"
    except UnicodeEncodeError:
        # A lone surrogate (a file name that was not UTF-8, decoded with
        # surrogateescape) cannot be UTF-8; escaped as \udcXX it is still valid
        # JSON and reads back to the same Python string on the other side.
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def encode_request(request: Request) -> bytes:
    obj: dict[str, Any] = {"jsonrpc": JSONRPC_VERSION, "method": request.method, "params": request.params}
    if request.id is not None:
        obj["id"] = request.id
    return _dump(obj)


def error_object(error: RpcError) -> dict[str, Any]:
    return {
        "code": error_kind(error.code).rpc_code,
        "message": error.message,
        "data": {**error.data, "code": error.code},
    }


def response_object(response: Response) -> dict[str, Any]:
    obj: dict[str, Any] = {"jsonrpc": JSONRPC_VERSION, "id": response.id}
    if response.error is not None:
        obj["error"] = error_object(response.error)
    else:
        obj["result"] = response.result
    return obj


def encode_response(response: Response) -> bytes:
    return _dump(response_object(response))


def encode_responses(responses: list[Response]) -> bytes:
    """A batch answer: one line holding a JSON array."""
    return _dump([response_object(r) for r in responses])


def encode_notification(method: str, params: Mapping[str, Any]) -> bytes:
    return _dump({"jsonrpc": JSONRPC_VERSION, "method": method, "params": dict(params)})


# --- decoding -------------------------------------------------------------


class LineSplitter:
    """Cuts a byte stream into lines, refusing any line over ``max_line``.

    ``feed`` returns complete lines (without the newline). A line that grows past
    the cap is reported once as ``None`` and the rest of it is skipped, so one
    bad frame costs the connection nothing but that frame and memory stays bounded.
    """

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._max_line = max_line
        self._buffer = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> list[bytes | None]:
        lines: list[bytes | None] = []
        start = 0
        while True:
            newline = data.find(b"\n", start)
            if newline < 0:
                break
            piece = data[start:newline]
            start = newline + 1
            if self._skipping:
                self._skipping = False
                self._buffer.clear()
                continue
            if len(self._buffer) + len(piece) > self._max_line:
                self._buffer.clear()
                lines.append(None)
                continue
            self._buffer += piece
            lines.append(bytes(self._buffer))
            self._buffer.clear()
        rest = data[start:]
        if not self._skipping:
            if len(self._buffer) + len(rest) > self._max_line:
                self._buffer.clear()
                self._skipping = True
                lines.append(None)
            else:
                self._buffer += rest
        return lines

    @property
    def pending(self) -> int:
        """Bytes held for a line not yet ended."""
        return len(self._buffer)


def _invalid(message: str, id_: int | str | None = None) -> FrameError:
    return FrameError(Response(id_, error=RpcError("invalid_request", message)))


def _request_from(obj: Any) -> Incoming:
    if not isinstance(obj, dict):
        return _invalid("a request must be a JSON object")
    raw_id = obj.get("id")
    id_: int | str | None
    if raw_id is None or isinstance(raw_id, str) or (isinstance(raw_id, int) and not isinstance(raw_id, bool)):
        id_ = raw_id
    else:
        return _invalid("`id` must be a string, an integer or absent")
    if obj.get("jsonrpc") != JSONRPC_VERSION:
        return _invalid('`jsonrpc` must be "2.0"', id_)
    method = obj.get("method")
    if not isinstance(method, str) or not method:
        return _invalid("`method` must be a non-empty string", id_)
    params = obj.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        error = RpcError("invalid_argument", "`params` must be an object of named parameters")
        return FrameError(Response(id_, error=error))
    return Request(method=method, params=params, id=id_)


def parse_request_line(line: bytes | None) -> tuple[list[Incoming], bool]:
    """Read one line from a client.

    Returns the requests (or frame errors to answer) it holds and whether it was
    a batch, whose answers go back as one JSON array. ``None`` stands for a line
    the splitter refused as too large.
    """
    if line is None:
        error = RpcError("frame_too_large", f"frame longer than {MAX_LINE_BYTES} bytes")
        return [FrameError(Response(None, error=error))], False
    if not line.strip():
        return [], False
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        return [FrameError(Response(None, error=RpcError("parse_error", f"invalid JSON: {exc}")))], False
    if isinstance(obj, list):
        if not obj:
            return [_invalid("an empty batch")], False
        return [_request_from(item) for item in obj], True
    return [_request_from(obj)], False


def parse_server_line(line: bytes) -> Iterator[Response | Notification]:
    """Read one line from the daemon: responses (a batch gives several) or notifications.

    Raises ``ValueError`` (and nothing else) for a line that is neither, which
    means the peer is broken.
    """
    try:
        obj = json.loads(line)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc
    items = obj if isinstance(obj, list) else [obj]
    for item in items:
        if not isinstance(item, dict) or item.get("jsonrpc") != JSONRPC_VERSION:
            raise ValueError("not a JSON-RPC 2.0 message")
        if "method" in item and "id" not in item:
            method, params = item["method"], item.get("params") or {}
            if not isinstance(method, str) or not isinstance(params, dict):
                raise ValueError("a notification needs a string `method` and object `params`")
            yield Notification(method, params)
            continue
        if "error" in item:
            err = item["error"]
            if not isinstance(err, dict):
                raise ValueError("`error` must be an object")
            raw_data = err.get("data")
            data = dict(raw_data) if isinstance(raw_data, dict) else {}
            code = data.pop("code", None)
            if not isinstance(code, str):
                rpc_code = err.get("code")
                kind = _BY_RPC_CODE.get(rpc_code) if isinstance(rpc_code, int) else None
                code = (kind or ERRORS["internal"]).code
            yield Response(item.get("id"), error=RpcError(code, str(err.get("message", "")), data))
        elif "result" in item:
            yield Response(item.get("id"), result=item["result"])
        else:
            raise ValueError("a response needs `result` or `error`")
