"""What only the S3 storage does, on a real SeaweedFS: the store itself checks the presigned
URLs it hands out (signature, signed part digest), ranged presigned reads, the ``s3://`` URL,
and the daemon's view of the store's answers (``dataeraid/remote.py``)."""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from dataerai_server.storage import ChecksumMismatch, S3Location, S3Storage, StorageError, StoredPart, readback
from dataerai_server.storage.base import StoreError
from dataerai_server.storage.readback import ObjectReader
from dataerai_server.storage.s3 import _S3Error, make_client
from storage_data import sample, sha

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
        remote = Remote(auth=None, http=http)  # type: ignore[arg-type]  # signed URLs need no token
        ack = await remote.put_part({"method": target.method, "url": target.url, "headers": dict(target.headers)},
                                    blocks(), "sending part 1")
    # The store's ETag too (MD5 here), told back at completion instead of a listing.
    assert ack == {"sha256": sha(body), "size": len(body), "etag": f'"{hashlib.md5(body).hexdigest()}"'}


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
        assert ack == {"sha256": sha(body), "size": len(body), "etag": f'"{hashlib.md5(body).hexdigest()}"'}
        assert charged == [len(body)]
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


# --- the completion's read-back (storage/readback.py) on the real store ----------------------


async def _stored(s3: S3Storage, name: str, data: bytes, claimed: str | None) -> Any:
    """``data`` sent as parts of at least 5 MiB under upload ``name`` and completed with ``claimed``."""
    handle = await s3.create_upload(name)
    pieces = [data[i : i + MIN_PART] for i in range(0, len(data), MIN_PART)]
    for number, piece in enumerate(pieces, start=1):
        await s3.put_part(handle, number, _one(piece), len(piece), sha(piece))
    parts = [StoredPart(n, len(p), sha(p)) for n, p in enumerate(pieces, start=1)]
    return await s3.complete(handle, parts, name, claimed)


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """The range GETs the read-back sends (start, length) and the connections it opens."""
    seen: dict[str, list[Any]] = {"ranges": [], "connections": []}
    ask, connect = readback._Connection.ask, readback._Connection._connect

    def spy_ask(self: Any, target: str, start: int, length: int, total: int, etag: str) -> None:
        seen["ranges"].append((start, length))
        ask(self, target, start, length, total, etag)

    def spy_connect(self: Any) -> Any:
        seen["connections"].append(self)
        return connect(self)

    monkeypatch.setattr(readback._Connection, "ask", spy_ask)
    monkeypatch.setattr(readback._Connection, "_connect", spy_connect)
    return seen


async def test_readback_of_many_ranges_hashes_them_in_order(s3: S3Storage, asked: dict[str, list[Any]]) -> None:
    assert s3._reader is not None  # the store is plain http on an endpoint: the ranges are ours
    span = s3._reader.range_bytes = MIN_PART  # smaller than in service, for a smaller object
    # More ranges than are in flight (connections are reused), the last one short.
    data = sample(span * (readback.RANGES_IN_FLIGHT + 1) + 12345, 7)
    content = await _stored(s3, "upl_ranges", data, sha(data))
    assert (content.size, content.sha256) == (len(data), sha(data))
    starts = list(range(0, len(data), span))
    assert asked["ranges"] == [(start, min(span, len(data) - start)) for start in starts]
    assert len(asked["connections"]) == readback.RANGES_IN_FLIGHT


async def test_readback_of_an_object_smaller_than_a_range_is_one_get(
    s3: S3Storage, asked: dict[str, list[Any]]
) -> None:
    data = sample(MIN_PART + 4321, 8)
    assert len(data) < readback.RANGE_BYTES
    content = await _stored(s3, "upl_small", data, sha(data))
    assert content.sha256 == sha(data)
    assert asked["ranges"] == [(0, len(data))] and len(asked["connections"]) == 1


async def test_readback_mismatch_deletes_the_object(s3: S3Storage) -> None:
    assert s3._reader is not None
    s3._reader.range_bytes = MIN_PART
    data = sample(MIN_PART * 2 + 777, 9)
    wrong = sha(data[:-1] + b"?")
    with pytest.raises(ChecksumMismatch) as caught:
        await _stored(s3, "upl_wrong", data, wrong)
    assert caught.value.actual_sha256 == sha(data) and caught.value.expected_sha256 == wrong
    with pytest.raises(StorageError) as gone:
        await s3._call("head_object", Key=s3._object("upl_wrong"))
    assert isinstance(gone.value, _S3Error) and gone.value.code in ("404", "NoSuchKey", "NotFound")
    assert await s3._read_record("upl_wrong") is None


async def test_readback_of_a_replaced_object_fails_with_the_stores_code(s3: S3Storage) -> None:
    data = sample(MIN_PART + 10, 10)
    await _stored(s3, "upl_replaced", data, sha(data))
    key = s3._object("upl_replaced")
    head = await s3._call("head_object", Key=key)
    await s3._call("put_object", Key=key, Body=b"other bytes")
    # The HEAD's ETag no longer names what the key holds: the store refuses, nothing is hashed.
    with pytest.raises(_S3Error) as caught:
        await s3._hash_object(key, int(head["ContentLength"]), head["ETag"])
    assert caught.value.code == "PreconditionFailed"
    with pytest.raises(_S3Error) as missing:
        await s3._hash_object(s3._object("upl_never"), 10, head["ETag"])
    assert missing.value.code == "NoSuchKey"


async def test_a_completion_answered_with_an_etag_the_object_lacks_is_read_back_after_a_head(
    s3: S3Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read-back asks for the ETag ``CompleteMultipartUpload`` answered; a store whose
    answer named another costs a ``HEAD``, not the completion."""
    assert s3._calls is not None
    complete = s3._calls.complete_multipart_upload

    def misnamed(url: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
        complete(url, parts)
        return {"ETag": '"00000000000000000000000000000000-1"'}

    monkeypatch.setattr(s3._calls, "complete_multipart_upload", misnamed)
    data = sample(1000, 11)
    content = await _stored(s3, "upl_misnamed", data, sha(data))
    assert (content.size, content.sha256, content.parts_left) == (len(data), sha(data), False)


async def test_uploads_are_created_on_our_own_connections(
    s3: S3Storage, seaweed: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert s3._calls is not None
    handles = [await s3.create_upload(f"upl_own_{n}") for n in range(3)]
    listed = s3._s3.list_multipart_uploads(Bucket=s3.bucket, Prefix=s3._object("upl_own_"))["Uploads"]
    assert sorted((u["Key"], u["UploadId"]) for u in listed) == sorted(
        (s3._object(h.partition("/")[0]), h.partition("/")[2]) for h in handles)
    # The store's refusal keeps its code, as boto3's did.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    client, connection = make_client()
    refusing = S3Storage(client, s3.location, tmp_path, connection=connection)
    with pytest.raises(StoreError) as refused:
        await refusing.create_upload("upl_refused")
    assert refused.value.code == "SignatureDoesNotMatch"


async def test_readback_through_boto3_where_the_reader_cannot_go(
    seaweed: Any, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in seaweed.env.items():
        monkeypatch.setenv(name, value)
    client, connection = make_client()
    # Settings the reader cannot follow (as with a client certificate); the client itself has none.
    unfollowable = dataclasses.replace(connection, client_cert=True)
    location = S3Location.parse(f"s3://{s3_bucket}/boto3-{secrets.token_hex(4)}")
    (tmp_path / "spool").mkdir()
    with structlog.testing.capture_logs() as logs:
        s3 = S3Storage(client, location, tmp_path / "spool", connection=unfollowable)
        assert s3._reader is None
        data = sample(MIN_PART + 99, 11)
        assert (await _stored(s3, "upl_boto3", data, sha(data))).sha256 == sha(data)
        with pytest.raises(ChecksumMismatch):
            await _stored(s3, "upl_boto3_wrong", data, sha(b"not it"))
    # Said once, when the storage was made; not at each completion.
    assert logs == [{"event": "storage.readback_through_boto3", "log_level": "warning",
                     "reason": "the client presents a certificate of its own"}]


def test_reader_follows_the_clients_tls_and_proxy(seaweed: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in seaweed.env.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    reader = ObjectReader.for_connection(make_client()[1])
    assert reader.scheme == "http" and reader.context is None
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://store.example:9443")
    secure = ObjectReader.for_connection(make_client()[1])
    assert secure.port == 9443 and secure.context is not None
    assert secure.context.verify_mode == ssl.CERT_REQUIRED and secure.context.check_hostname
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    with pytest.raises(ValueError, match="proxy"):  # boto3 goes through the proxy; so must we
        ObjectReader.for_connection(make_client()[1])


def test_a_kept_listing_is_taken_once_while_fresh_and_the_oldest_go_first() -> None:
    from dataerai_server.storage.s3 import _KeptListings

    now = [100.0]
    kept = _KeptListings(seconds=10, most_parts=3, clock=lambda: now[0])
    one = {1: [{"PartNumber": 1, "Size": 5, "ETag": '"a"'}]}
    two = {1: [{"PartNumber": 1, "Size": 5, "ETag": '"b"'}], 2: [{"PartNumber": 2, "Size": 5, "ETag": '"c"'}]}
    kept.keep("u1/x", one)
    assert kept.take("u1/x") == one and kept.take("u1/x") is None  # once
    kept.keep("u1/x", one)
    now[0] += 10.5
    assert kept.take("u1/x") is None  # grown old
    kept.keep("u1/x", one)
    kept.keep("u2/y", two)
    kept.keep("u3/z", one)  # four parts in all: the oldest listing goes
    assert kept.take("u1/x") is None and kept.take("u2/y") == two and kept.take("u3/z") == one
    kept.keep("u4/w", {n: [{"PartNumber": n, "Size": 5, "ETag": '"d"'}] for n in range(1, 5)})
    assert kept.take("u4/w") is None  # larger than all it may keep
