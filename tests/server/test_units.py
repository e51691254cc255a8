"""Pure pieces of the server, tested in-process: ranges, signing, errors, schema, settings."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from dataerai.protocol import ERRORS
from dataerai_server import migrate
from dataerai_server.db import Database
from dataerai_server.durations import MAX_SECONDS, UNITS, describe, parse_duration
from dataerai_server.errors import ApiError
from dataerai_server.models import Base
from dataerai_server.serve import base_url, open_listening_socket, parse_bind
from dataerai_server.signing import UrlSigner, load_or_create_secret
from dataerai_server.streaming import ByteRange, Unsatisfiable, parse_range
from dataerai_server.uploads import NewUpload, expected_part_size
from hypothesis import example, given
from hypothesis import strategies as st


@pytest.mark.parametrize(
    ("header", "total", "expected"),
    [
        (None, 10, None),
        ("bytes=0-4", 10, ByteRange(0, 5, 10)),
        ("bytes=5-", 10, ByteRange(5, 5, 10)),
        ("bytes=-3", 10, ByteRange(7, 3, 10)),
        ("bytes=-30", 10, ByteRange(0, 10, 10)),
        ("bytes=8-100", 10, ByteRange(8, 2, 10)),
        ("bytes=5-4", 10, None),  # invalid: ignored
        ("items=0-1", 10, None),
        ("bytes=0-1,3-4", 10, None),
        ("bytes=-", 10, None),
    ],
)
def test_parse_range(header: str | None, total: int, expected: ByteRange | None) -> None:
    assert parse_range(header, total) == expected


@pytest.mark.parametrize(
    ("header", "total"), [("bytes=10-", 10), ("bytes=10-20", 10), ("bytes=-0", 10), ("bytes=0-", 0), ("bytes=-5", 0)]
)
def test_unsatisfiable_ranges(header: str, total: int) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, total)


def test_content_range_header() -> None:
    assert ByteRange(10, 5, 100).content_range == "bytes 10-14/100"


def test_signer_covers_every_signed_field() -> None:
    now = [1_000_000.0]
    signer = UrlSigner(b"k" * 32, clock=lambda: now[0])
    query = signer.sign("PUT", "/p/1", 60, {"sha256": "ab", "size": "3"})
    assert list(query) == ["sha256", "size", "expires", "signature"]
    assert signer.verify("PUT", "/p/1", query, ("sha256", "size")) == 1_000_060
    for changed in ({"sha256": "cd"}, {"size": "4"}, {"expires": "1000061"}, {"signature": "0" * 64}):
        with pytest.raises(ApiError) as caught:
            signer.verify("PUT", "/p/1", {**query, **changed}, ("sha256", "size"))
        assert caught.value.code == "permission_denied" and caught.value.extra["reason"] == "bad_signature"
    for method, path in (("GET", "/p/1"), ("PUT", "/p/2")):
        with pytest.raises(ApiError):
            signer.verify(method, path, query, ("sha256", "size"))
    with pytest.raises(ApiError):
        UrlSigner(b"x" * 32, clock=lambda: now[0]).verify("PUT", "/p/1", query, ("sha256", "size"))
    now[0] += 61
    with pytest.raises(ApiError) as caught:
        signer.verify("PUT", "/p/1", query, ("sha256", "size"))
    assert caught.value.extra["reason"] == "url_expired"


def test_api_errors_take_their_status_from_the_catalogue() -> None:
    for code, kind in ERRORS.items():
        error = ApiError(code, "m", extra_field=1)
        assert error.status == kind.http_status
        assert error.body() == {"error": {"code": code, "message": "m", "extra_field": 1}}
    with pytest.raises(ValueError):
        ApiError("no_such_code", "m")


def test_migrations_match_the_models_and_are_idempotent(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'r.sqlite3'}")
    try:
        migrate.upgrade(db.write_engine)
        migrate.upgrade(db.write_engine)
        with db.engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
            assert connection.exec_driver_sql("pragma journal_mode").scalar() == "wal"
        secret = db.write_sync(load_or_create_secret)
        assert len(secret) == 32 and db.write_sync(load_or_create_secret) == secret
    finally:
        db.dispose()


def test_opening_a_database_another_connection_has_locked_waits_for_it(tmp_path: Path) -> None:
    """SQLite switches to WAL without its busy handler; the server must wait, not fail."""
    import sqlite3
    import threading

    path = tmp_path / "locked.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # a writer's reserved lock, still in rollback mode
    holder.execute("CREATE TABLE t (x)")
    db = Database(f"sqlite:///{path}")
    outcome: list[object] = []

    def open_it() -> None:
        try:
            with db.engine.connect() as connection:
                outcome.append(connection.exec_driver_sql("pragma journal_mode").scalar())
        except Exception as exc:  # collected for the assertions below
            outcome.append(exc)

    opener = threading.Thread(target=open_it)
    opener.start()
    try:
        opener.join(0.5)
        assert outcome == [], "opening gave up while the lock was held"
        holder.execute("COMMIT")
        opener.join(30)
        assert outcome == ["wal"]
    finally:
        holder.close()
        db.dispose()


def test_an_in_memory_database_opens_without_waiting_for_a_wal_it_cannot_have() -> None:
    db = Database("sqlite://")
    try:
        with db.engine.connect() as connection:
            assert connection.exec_driver_sql("pragma journal_mode").scalar() == "memory"
    finally:
        db.dispose()


def test_part_arithmetic() -> None:
    assert NewUpload(None, None, None, 0, 65536, None, None).part_count == 1
    assert NewUpload(None, None, None, 65536, 65536, None, None).part_count == 1
    assert NewUpload(None, None, None, 65537, 65536, None, None).part_count == 2
    assert expected_part_size(65537, 65536, 2, 1) == 65536
    assert expected_part_size(65537, 65536, 2, 2) == 1
    assert expected_part_size(0, 65536, 1, 1) == 0


def test_bind_parsing_and_base_url() -> None:
    assert parse_bind("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_bind("[::1]:8080") == ("::1", 8080)
    for bad in ("8080", "host:", ":80", "h:99999", "h:x"):
        with pytest.raises(ValueError):
            parse_bind(bad)
    sock = open_listening_socket("0.0.0.0", 0)
    try:
        assert base_url(sock) == f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@given(signature=st.text(max_size=300), expires=st.text(max_size=40))
def test_any_signature_or_expiry_text_is_refused_as_a_bad_signature(signature: str, expires: str) -> None:
    signer = UrlSigner(b"k" * 32, clock=lambda: 1_000_000.0)
    query = {**signer.sign("GET", "/p/1", 60), "signature": signature}
    if expires:
        query["expires"] = expires
    with pytest.raises(ApiError) as caught:
        signer.verify("GET", "/p/1", query)
    assert caught.value.code == "permission_denied" and caught.value.extra["reason"] == "bad_signature"


@given(
    number=st.floats(min_value=0, max_value=10_000, allow_nan=False, allow_infinity=False),
    unit=st.sampled_from(sorted(UNITS)),
)
@example(number=0.001953125, unit="m")
def test_durations_with_a_unit(number: float, unit: str) -> None:
    text = f"{number!r}{unit}"
    if "e" in text.lower() or "inf" in text:
        text = f"{number:.6f}{unit}"
    # A timedelta holds whole microseconds: 0.001953125m is 117187.5 us, kept as 117188.
    expected = float(text[:-1]) * UNITS[unit]
    assert parse_duration(text, bare_unit="s").total_seconds() == pytest.approx(expected, rel=1e-6, abs=1e-6)


@given(text=st.text(max_size=20))
def test_any_text_is_a_duration_or_a_value_error(text: str) -> None:
    try:
        value = parse_duration(text, bare_unit="d")
    except ValueError:
        return
    assert 0 <= value.total_seconds() <= MAX_SECONDS


def test_durations_bare_numbers_and_descriptions() -> None:
    assert parse_duration("30", bare_unit="d").days == 30
    assert parse_duration("4.6296296296296294e-05", bare_unit="d").total_seconds() == pytest.approx(4)
    assert parse_duration(" 12H ", bare_unit="s").total_seconds() == 12 * 3600
    for bad in ("", "d", "-1d", "1y", "1 d 2h", "never", "1e400"):
        with pytest.raises(ValueError):
            parse_duration(bad, bare_unit="s")
    assert [describe(timedelta(seconds=s)) for s in (60, 3600, 7 * 86_400, 90 * 86_400, 90)] == [
        "1m", "1h", "1w", "90d", "90s"]
