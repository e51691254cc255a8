"""What only the S3 storage does, on a real SeaweedFS: the store itself checks the presigned
URLs it hands out (signature, signed part digest), ranged presigned reads, the ``s3://`` URL,
and the daemon's view of the store's answers (``dataeraid/remote.py``)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest
from dataerai_server.storage import S3Location, S3Storage, StoredPart
from storage_data import sha

from dataeraid.engine.bulk_http import BulkHTTP, Outlet
from dataeraid.errors import DataeraiError, TargetExpired
from dataeraid.remote import Remote, raise_for_status, ssl_context

MIN_PART = 5 << 20


@pytest.fixture
def s3(seaweed: Any, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> S3Storage:
    for name, value in seaweed.env.items():
        monkeypatch.setenv(name, value)
    return S3Storage.open(f"s3://{s3_bucket}/s3-{secrets.token_hex(4)}", tmp_path / "spool")


async def test_the_store_checks_signature_and_signed_digest(s3: S3Storage) -> None:
    handle = await s3.create_upload("upl_signed")
    body = secrets.token_bytes(100_000)
    target = s3.part_url(handle, 1, len(body), sha(body), 60)
    assert target is not None and target.method == "PUT"
    assert set(target.headers) == {"x-amz-checksum-sha256", "Content-Length"}
    headers = dict(target.headers)
    async with httpx.AsyncClient() as http:
        tampered = target.url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
        refused = await http.put(tampered, content=body, headers=headers)
        assert refused.status_code == 403 and b"SignatureDoesNotMatch" in refused.content
        other = secrets.token_bytes(len(body))
        wrong = await http.put(target.url, content=other, headers=headers)
        assert wrong.status_code == 400 and b"BadDigest" in wrong.content
        unsigned = await http.put(target.url, content=body, headers={**headers, "x-amz-meta-x": "1"})
        assert unsigned.status_code == 403
        assert await s3.list_parts(handle) == []  # nothing refused was stored
        good = await http.put(target.url, content=body, headers=headers)
        assert good.status_code == 200
    assert [(p.number, p.size, p.sha256) for p in await s3.list_parts(handle)] == [(1, len(body), None)]
    # The daemon maps the store's answers like the server's own.
    with pytest.raises(DataeraiError) as caught:
        raise_for_status(wrong, "sending part 1")
    assert caught.value.code == "checksum_mismatch"
    content = await s3.complete(handle, [StoredPart(1, len(body), sha(body))], "upl_signed", sha(body))
    assert content.sha256 == sha(body)


async def test_daemon_remote_takes_the_stores_acknowledgement(s3: S3Storage) -> None:
    handle = await s3.create_upload("upl_ack")
    body = secrets.token_bytes(70_000)
    target = s3.part_url(handle, 1, len(body), sha(body), 60)
    assert target is not None

    async def blocks() -> Any:
        yield body[:30_000]
        yield body[30_000:]

    async with httpx.AsyncClient() as http:
        remote = Remote(auth=None, http=http)  # type: ignore[arg-type] - signed URLs need no token
        ack = await remote.put_part({"method": target.method, "url": target.url, "headers": dict(target.headers)},
                                    blocks(), "sending part 1")
    assert ack == {"sha256": sha(body), "size": len(body)}


async def test_daemon_bulk_part_from_a_file_is_acknowledged_or_refused_as_through_httpx(
        s3: S3Storage, tmp_path: Path) -> None:
    """The daemon's part PUT without httpx (``engine/bulk_http.py``, sendfile) on the real store:
    the same acknowledgement, and a file that changed after it was hashed is the store's
    BadDigest, ``checksum_mismatch``, as it is through httpx."""
    handle = await s3.create_upload("upl_bulk")
    body = secrets.token_bytes(70_000)
    path = tmp_path / "part.bin"
    path.write_bytes(body)
    charged: list[int] = []

    def from_file(at: int, length: int, out: Outlet) -> None:
        with open(path, "rb") as f:
            assert out.sendfile(f.fileno(), at, length) == length

    async def charge(n: int) -> None:
        charged.append(n)

    async with httpx.AsyncClient() as http:
        remote = Remote(auth=None, http=http, bulk=BulkHTTP.like(http, ssl_context()))  # type: ignore[arg-type]
        target = s3.part_url(handle, 1, len(body), sha(body), 60)
        assert target is not None
        as_json = {"method": target.method, "url": target.url, "headers": dict(target.headers)}
        ack = await remote.put_part_from(as_json, len(body), from_file, charge, "sending part 1")
        assert ack == {"sha256": sha(body), "size": len(body)} and charged == [len(body)]
        path.write_bytes(secrets.token_bytes(len(body)))  # changed after it was hashed
        with pytest.raises(DataeraiError) as caught:
            await remote.put_part_from(as_json, len(body), from_file, charge, "sending part 1")
    assert caught.value.code == "checksum_mismatch" and "BadDigest" in str(caught.value)
    assert [(p.number, p.size) for p in await s3.list_parts(handle)] == [(1, len(body))]


def test_expired_url_answer_is_target_expired() -> None:
    # The body SeaweedFS (and AWS) answers an expired presigned URL with.
    xml = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
           b"<Message>Request has expired</Message><Resource>/b/k</Resource></Error>")
    response = httpx.Response(403, content=xml, headers={"Content-Type": "application/xml"})
    with pytest.raises(TargetExpired):
        raise_for_status(response, "sending part 1")
    denied = httpx.Response(403, content=xml.replace(b"Request has expired", b"Access Denied"))
    with pytest.raises(DataeraiError) as caught:
        raise_for_status(denied, "sending part 1")
    assert caught.value.code == "permission_denied"


async def test_presigned_reads_honour_range(s3: S3Storage) -> None:
    data = secrets.token_bytes(MIN_PART + 1000)
    pieces = [data[:MIN_PART], data[MIN_PART:]]
    handle = await s3.create_upload("upl_read")
    for number, piece in enumerate(pieces, start=1):
        await s3.put_part(handle, number, _one(piece), len(piece), sha(piece))
    parts = [StoredPart(n, len(p), sha(p)) for n, p in enumerate(pieces, start=1)]
    await s3.complete(handle, parts, "upl_read", sha(data))
    target = s3.content_url("upl_read", 60)
    assert target is not None and target.method == "GET"
    async with httpx.AsyncClient() as http:
        ranged = await http.get(target.url, headers={"Range": f"bytes={MIN_PART - 5}-{MIN_PART + 4}"})
        assert ranged.status_code == 206 and ranged.content == data[MIN_PART - 5 : MIN_PART + 5]
        tampered = await http.get(target.url.replace("X-Amz-Signature=", "X-Amz-Signature=1"))
        assert tampered.status_code == 403


async def _one(data: bytes) -> Any:
    yield data


def test_storage_url_options() -> None:
    assert S3Location.parse("s3://bkt") == S3Location("bkt", "", True, True)
    assert S3Location.parse("s3://bkt/a/b/?parts=server") == S3Location("bkt", "a/b/", False, True)
    assert S3Location.parse("s3://bkt/p?reads=server").direct_reads is False
    for bad in ("http://bkt/p", "s3:///p", "s3://bkt/p?parts=sideways", "s3://bkt/p?colour=red"):
        with pytest.raises(ValueError):
            S3Location.parse(bad)


async def test_server_mode_hands_out_no_urls(seaweed: Any, s3_bucket: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in seaweed.env.items():
        monkeypatch.setenv(name, value)
    s3 = S3Storage.open(f"s3://{s3_bucket}/srv?parts=server&reads=server", tmp_path / "spool")
    handle = await s3.create_upload("upl_srv")
    assert s3.part_url(handle, 1, 10, sha(b"x" * 10), 60) is None
    assert s3.content_url("upl_srv", 60) is None
    await s3.abort(handle)
