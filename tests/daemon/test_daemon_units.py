"""Pure pieces of the daemon: hostile names, backoff, bandwidth, RPC parameter checks, schema."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from dataeraid import schema
from dataeraid.config import Settings
from dataeraid.engine.bandwidth import FairBandwidth
from dataeraid.engine.download import safe_file_name
from dataeraid.engine.retry import backoff_delay
from dataeraid.engine.upload import part_count, part_span
from dataeraid.errors import DataeraiError, TransientError
from dataeraid.jobs import STATES, TRANSITIONS
from dataeraid.remote import _json_object, raise_for_status
from dataeraid.rpc import Methods, Param, Registry
from dataeraid.rpc.params import Integer, ListOf, Text
from dataeraid.store import create_queue_engine, migrate


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "/etc/passwd", "a\\b", "a\0b", "x" * 300, None, 5])
def test_hostile_file_names_are_refused(name: Any) -> None:
    with pytest.raises(DataeraiError) as info:
        safe_file_name(name)
    assert info.value.code == "unsafe_path"


@pytest.mark.parametrize("name", ["run42.h5", ".hidden", "a b", "ünïcode.tif", "x" * 200])
def test_plain_names_pass(name: str) -> None:
    assert safe_file_name(name) == name


@given(st.integers(0, 10**13), st.integers(64 * 1024, 5 * 2**30), st.data())
def test_parts_cover_the_file_exactly(size: int, chunk: int, data: st.DataObject) -> None:
    count = part_count(size, chunk)
    assert part_span(1, size, chunk)[0] == 0
    last_offset, last_length = part_span(count, size, chunk)
    assert last_offset + last_length == size and 0 <= last_length <= chunk
    assert count == 1 or last_length > 0
    n = data.draw(st.integers(1, max(1, count - 1)))
    offset, length = part_span(n, size, chunk)
    if n < count:
        assert length == chunk and part_span(n + 1, size, chunk)[0] == offset + length


def test_backoff_grows_is_capped_and_honours_retry_after() -> None:
    settings = Settings(retry_base_s=0.5, retry_cap_s=30.0)
    rng = random.Random(1)
    delays = [backoff_delay(a, settings, None, rng) for a in range(40)]
    assert all(0.25 <= d <= 30.0 for d in delays)
    assert max(delays[:2]) <= 1.0
    assert backoff_delay(0, settings, 120.0, rng) == 120.0


async def test_bandwidth_limit_holds_on_a_fake_clock(autojump_clock: trio.testing.MockClock) -> None:
    limit = FairBandwidth(10 * 1024 * 1024).join("one client")
    start = trio.current_time()
    for _ in range(100):
        await limit.spend(1024 * 1024)
    elapsed = trio.current_time() - start
    assert 9.0 <= elapsed <= 10.5


def test_every_state_has_its_transitions_and_terminal_states_stay_put() -> None:
    assert set(TRANSITIONS) == set(STATES)
    for targets in TRANSITIONS.values():
        assert targets <= set(STATES)
    assert TRANSITIONS["completed"] == frozenset()


def _registry() -> Registry:
    table = Methods("test")

    @table.add("x", "", Param("name", Text(10), required=True), Param("n", Integer(0, 9)),
               Param("tags", ListOf(Text(5), 3)), result="")
    async def handler(call: Any, **kw: Any) -> Any:
        return kw

    return Registry([table])


@given(st.dictionaries(st.sampled_from(["name", "n", "tags", "other"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.text(), st.lists(st.text()),
                                 st.floats(allow_nan=False))))
def test_rpc_params_are_bound_or_refused_with_invalid_argument(params: dict[str, Any]) -> None:
    method = _registry().methods["x"]
    try:
        bound = method.bind(params)
    except DataeraiError as exc:
        assert exc.code == "invalid_argument"
        return
    assert isinstance(bound["name"], str)
    assert bound["n"] is None or (isinstance(bound["n"], int) and not isinstance(bound["n"], bool))
    assert "other" not in params


class _Response:
    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        import httpx

        self._r = httpx.Response(status, json=body, headers=headers)

    def get(self) -> Any:
        return self._r


@pytest.mark.parametrize(("status", "body", "kind", "code"), [
    (401, {"error": {"code": "auth_expired", "message": "m"}}, "AuthProblem", "auth_expired"),
    (401, None, "AuthProblem", "auth_required"),
    (403, {"error": {"code": "permission_denied", "message": "m", "reason": "url_expired"}}, "TargetExpired", None),
    (403, {"error": {"code": "permission_denied", "message": "m"}}, "DataeraiError", "permission_denied"),
    (404, None, "DataeraiError", "not_found"),
    (413, {"error": {"code": "quota_exceeded", "message": "full"}}, "DataeraiError", "quota_exceeded"),
    (422, None, "DataeraiError", "checksum_mismatch"),
    (429, None, "TransientError", None),
    (500, None, "TransientError", None),
    (503, None, "TransientError", None),
])
def test_http_errors_map_to_the_catalogue(status: int, body: Any, kind: str, code: str | None) -> None:
    with pytest.raises(Exception) as info:
        raise_for_status(_Response(status, body).get(), "testing")
    assert type(info.value).__name__ == kind
    if code:
        assert info.value.code == code  # type: ignore[attr-defined]


def test_retry_after_is_read() -> None:
    with pytest.raises(Exception) as info:
        raise_for_status(_Response(429, None, {"Retry-After": "7"}).get(), "testing")
    assert info.value.retry_after == 7.0  # type: ignore[attr-defined]
    assert info.value.code == "rate_limited"  # type: ignore[attr-defined]  # a waiting job says so
    with pytest.raises(Exception) as info:
        raise_for_status(_Response(503, None).get(), "testing")
    assert info.value.code == "unavailable"  # type: ignore[attr-defined]


def test_migrations_build_the_schema_the_code_uses(tmp_path: Path) -> None:
    engine = create_queue_engine(tmp_path / "q.sqlite3")
    migrate(engine)
    migrate(engine)  # a second run is a no-op
    inspector = sa.inspect(engine)
    for table in schema.metadata.sorted_tables:
        columns = {c["name"] for c in inspector.get_columns(table.name)}
        assert columns == set(table.columns.keys()), table.name
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


async def test_first_error_gives_the_coded_failure_of_a_nursery_not_a_group() -> None:
    from dataeraid.errors import first_error

    async def fails() -> None:
        raise DataeraiError("source_changed", "moved")

    with pytest.raises(DataeraiError) as info, first_error():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            nursery.start_soon(fails)
    assert info.value.code == "source_changed"

    async def disk_full() -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError) as os_info, first_error():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            nursery.start_soon(disk_full)
    assert os_info.value.errno == 28


def test_response_bodies_are_read_a_mebibyte_at_a_time() -> None:
    from httpcore._async.http11 import AsyncHTTP11Connection

    from dataeraid.remote import RESPONSE_READ_BYTES, tune_http_reads

    assert tune_http_reads(), "httpcore still has READ_NUM_BYTES"
    assert AsyncHTTP11Connection.READ_NUM_BYTES == RESPONSE_READ_BYTES == 1 << 20


def test_the_daemon_log_rotates_and_keeps_a_few_old_files(tmp_path: Path) -> None:
    from dataeraid.log import RotatingFile

    path = tmp_path / "daemon.log"
    out = RotatingFile(path, max_bytes=100, keep=2)
    for i in range(12):
        out.write(f"line {i:02} " + "x" * 30 + "\n")  # 39 bytes: two lines a file
    out.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["daemon.log", "daemon.log.1", "daemon.log.2"]
    assert all(p.stat().st_size <= 100 for p in tmp_path.iterdir())
    assert path.read_text().splitlines()[-1].startswith("line 11")
    assert (tmp_path / "daemon.log.1").read_text().startswith("line 08")
    assert (tmp_path / "daemon.log.2").read_text().startswith("line 06")


@pytest.mark.parametrize("body", [b"<html>captive portal</html>", b"[1, 2]", b'"text"', b"{\"cut"])
def test_a_2xx_answer_that_is_no_json_object_is_a_transient_failure(body: bytes) -> None:
    with pytest.raises(TransientError, match="not a JSON object"):
        _json_object(httpx.Response(200, content=body), "reading the session")


def test_a_2xx_answer_without_content_is_an_empty_object() -> None:
    assert _json_object(httpx.Response(204), "deleting") == {}
    assert _json_object(httpx.Response(200, content=b'{"a": 1}'), "reading") == {"a": 1}


def test_no_signed_url_or_token_reaches_a_log_line_even_in_a_traceback() -> None:
    import io

    from dataeraid import log

    out = io.StringIO()
    log.configure("info", out)
    logger = log.get("test")
    url = "https://store.example/bucket/key?X-Amz-Signature=abcdef0123456789&X-Amz-Credential=AKIA"
    logger.warning("job failed", error=f"sending part 3: 403 from {url}", token="dtk_secret_value")
    try:
        raise RuntimeError(f"crashed on {url} with Bearer dtk_abcdefghijklmnop")
    except RuntimeError:
        logger.exception("job crashed")
    text = out.getvalue()
    assert "abcdef0123456789" not in text and "AKIA" not in text and "dtk_" not in text, text
    assert "https://store.example/bucket/key?" in text  # where it went stays readable
    log.configure("info")
