"""S3-compatible object storage behind the storage contract (``base.Storage``).

Configured by ``--storage s3://BUCKET/PREFIX``; the endpoint and keys come from the
standard ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and
``AWS_REGION`` (boto3 reads them; its other sources, such as ``~/.aws``, work too).

Layout under ``PREFIX``::

    contents/<key>            a content object (the completed multipart upload)
    verified/<key>.json       written once its whole SHA-256 was checked: size, sha256,
                              the object's ETag and its parts' digests

An upload is an S3 multipart upload created with ``ChecksumAlgorithm='SHA256'``
under ``contents/<upload_id>``; its handle is ``<upload_id>/<UploadId>``. The server
makes the content key of an upload its upload id, so completion publishes the object
where it was built (another key costs a server-side copy).

Parts take one of two ways (``?parts=`` in the URL):

- ``direct`` (the default): :meth:`S3Storage.part_url` presigns ``UploadPart`` with the
  part's SHA-256 signed in, so the store itself refuses other bytes (``400 BadDigest``)
  and any change to the URL or the checksum header (``403``). The client must send the
  headers returned (``x-amz-checksum-sha256``, ``Content-Length``).
- ``server``: :meth:`S3Storage.part_url` returns None and the server receives the part;
  :meth:`S3Storage.put_part` spools it to a local temp file while hashing it (the body
  is never held in memory), checks size and digest, then sends it with its checksum.

Reads likewise (``?reads=direct``, the default, presigned GETs that honour ``Range``;
``?reads=server``, the server streams :meth:`S3Storage.read_range`).

Completion: S3 checks each part against the digest given with it and returns only a
*composite* checksum (the digest of the part digests), so the whole-file SHA-256 is
computed by reading the completed object back: range GETs on raw HTTP/1.1, several in
flight, hashed strictly in order (``readback.py``, reaching the store as the client does
from the :class:`~.readback.ConnectionSettings` :func:`make_client` resolved; through
boto3, one GET streamed in order, where that module cannot, with a warning). On a
mismatch the object is deleted before ``complete`` returns and no record of it was
written: the server hands out URLs only to contents it recorded, which it does only
after ``complete`` returned, so unverified bytes are never served.
Every boto3 call runs in one of the storage's worker threads (:mod:`..threads`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import itertools
import json
import os
import re
import socket
import tempfile
import time
import urllib.request
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, TypeVar
from urllib.parse import parse_qs, urlsplit

import anyio
import structlog
from anyio.abc import TaskGroup

from ..threads import WorkerThreads
from .base import ChecksumMismatch, PresignedRequest, StorageError, StoredContent, StoredPart, StoreError
from .calls import StoreCalls
from .presign import PathStyleSigner
from .readback import URL_TTL_S, ConnectionSettings, ObjectReader, ReadbackError

T = TypeVar("T")

log = structlog.get_logger(__name__)

#: Blocks read from the store, and batches written to a spool file.
BLOCK_BYTES: Final = 1 << 20
#: Completion attempts when parts were re-sent and S3 lists several of one number.
MAX_COMPLETE_TRIES: Final = 64
#: boto3 calls at once (and HTTP connections in its pool).
DEFAULT_THREADS: Final = 8
#: A store call we presign ourselves (calls.py) is sent at once: its URL need not live longer.
CALL_URL_TTL_S: Final = 300

_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_GONE = ("NoSuchUpload", "NoSuchKey", "404", "NotFound")
#: How long a listing of parts is kept for the completion that follows it, and how many
#: parts may be kept in all (``_KeptListings``).
LISTING_KEPT_S: Final = 10.0
LISTINGS_KEPT_PARTS: Final = 20_000
#: Operations :meth:`S3Storage._call` sends itself where it can (a completion's), with the
#: parameters it knows how to send; a call with any other goes through boto3.
_OWN_CALLS: Final = {
    "list_parts": frozenset({"Key", "UploadId", "PartNumberMarker", "MaxParts"}),
    "complete_multipart_upload": frozenset({"Key", "UploadId", "MultipartUpload"}),
    "head_object": frozenset({"Key"}),
    "put_object": frozenset({"Key", "Body", "ContentType"}),
    "abort_multipart_upload": frozenset({"Key", "UploadId"}),
}
_MODES = ("direct", "server")


def _safe(name: str) -> str:
    if not _SAFE_NAME.fullmatch(name):
        raise StorageError(f"not a valid storage name: {name!r}")
    return name


def b64_digest(sha256_hex: str) -> str:
    """The base64 form S3 uses for a SHA-256 given in hex."""
    try:
        return base64.b64encode(bytes.fromhex(sha256_hex)).decode()
    except ValueError:
        raise StorageError(f"not a SHA-256: {sha256_hex!r}") from None


def hex_digest(sha256_b64: str) -> str:
    """The hex form of a SHA-256 S3 gives in base64."""
    try:
        return base64.b64decode(sha256_b64, validate=True).hex()
    except (binascii.Error, ValueError):
        raise StorageError(f"not a base64 SHA-256: {sha256_b64!r}") from None


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


@dataclass(frozen=True)
class S3Location:
    """A parsed ``s3://BUCKET/PREFIX[?parts=direct|server&reads=direct|server]``."""

    bucket: str
    prefix: str
    direct_parts: bool = True
    direct_reads: bool = True

    @classmethod
    def parse(cls, url: str) -> S3Location:
        split = urlsplit(url)
        if split.scheme != "s3" or not split.netloc:
            raise ValueError(f"not an s3://BUCKET/PREFIX URL: {url!r}")
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        unknown = set(query) - {"parts", "reads"}
        if unknown:
            raise ValueError(f"unknown option(s) in {url!r}: {', '.join(sorted(unknown))}")
        for option in ("parts", "reads"):
            if query.get(option, "direct") not in _MODES:
                raise ValueError(f"`{option}` must be `direct` or `server`, not {query[option]!r}")
        prefix = split.path.strip("/")
        return cls(
            bucket=split.netloc,
            prefix=f"{prefix}/" if prefix else "",
            direct_parts=query.get("parts", "direct") == "direct",
            direct_reads=query.get("reads", "direct") == "direct",
        )


def make_client(threads: int = DEFAULT_THREADS) -> tuple[Any, ConnectionSettings]:
    """A boto3 S3 client configured from the environment (``AWS_ENDPOINT_URL`` etc.), and how
    it reaches the store (:func:`connection_settings`).

    SigV4 always (presigned URLs included). Path-style addressing when an endpoint is
    given (self-hosted stores rarely have a DNS name per bucket). Checksums only where
    an operation requires one: the part digests are given explicitly.
    """
    import boto3
    import botocore.session
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path" if endpoint else "auto"},
        max_pool_connections=threads,
        retries={"mode": "standard", "max_attempts": 4},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        connect_timeout=10,
        read_timeout=120,
    )
    # The botocore session boto3 would make itself, kept to ask it what it resolved.
    session = botocore.session.get_session()
    client = boto3.session.Session(botocore_session=session).client("s3", endpoint_url=endpoint or None,
                                                                    config=config)
    return client, connection_settings(client, session)


def connection_settings(client: Any, session: Any, verify: bool | str | None = None) -> ConnectionSettings:
    """How ``client`` reaches its store, where the botocore ``session`` made it (``verify`` as
    given to ``create_client``, None where it was not) and the environment has not changed
    since; from public configuration only, resolved as botocore resolves it:

    - the endpoint is ``client.meta.endpoint_url``; the addressing style, the timeouts and a
      client certificate are the client's ``Config``;
    - the CA bundle is ``verify``, else the session's ``ca_bundle`` (``AWS_CA_BUNDLE`` or the
      profile's ``ca_bundle``), else ``REQUESTS_CA_BUNDLE``, else botocore's own (certifi's);
    - the proxy is the ``Config``'s ``proxies`` where given, else the environment's
      (``HTTP_PROXY``/``HTTPS_PROXY`` unless ``NO_PROXY`` names the host), for the endpoint's
      scheme.

    ``tests/server/test_storage_readback.py`` checks this against what botocore configured.
    """
    from botocore.httpsession import get_cert_path

    endpoint = str(client.meta.endpoint_url)
    config = client.meta.config
    if verify is None:
        verify = session.get_config_variable("ca_bundle")
    if verify is None:
        verify = os.environ.get("REQUESTS_CA_BUNDLE", True)
    proxies = config.proxies
    if proxies is None:
        proxies = {} if _bypasses_proxies(endpoint) else urllib.request.getproxies()
    return ConnectionSettings(
        endpoint_url=endpoint,
        path_style=(config.s3 or {}).get("addressing_style") == "path",
        verify=verify is not False,
        ca_certs=str(get_cert_path(verify)) if verify is not False else "",
        proxy=proxies.get(urlsplit(endpoint).scheme) or None,
        client_cert=bool(config.client_cert),
        connect_timeout=float(config.connect_timeout),
        read_timeout=float(config.read_timeout),
    )


def _bypasses_proxies(url: str) -> bool:
    """Whether the environment's ``NO_PROXY`` names the host of ``url`` (as botocore asks)."""
    try:
        return bool(urllib.request.proxy_bypass(urlsplit(url).netloc))
    except (TypeError, socket.gaierror):
        return False


class S3Storage:
    """:class:`~dataerai_server.storage.base.Storage` on an S3 bucket. Create with :meth:`open`."""

    #: S3 refuses to complete a multipart upload whose parts (all but the last) are smaller.
    min_part_size = 5 * 1024 * 1024
    #: The store checks each part against its own digest, signed into its URL.
    prefix_digests = False
    #: Whatever the mode: a session opened with direct parts may be completed after a
    #: restart with ``?parts=server``.
    direct_parts = True

    def __init__(
        self,
        client: Any,
        location: S3Location,
        spool_dir: Path,
        *,
        threads: int = DEFAULT_THREADS,
        connection: ConnectionSettings | None = None,
    ) -> None:
        """``connection``: how ``client`` reaches the store (:func:`make_client` gives both);
        without it the completion's read-back goes through boto3."""
        self._s3 = client
        self.location = location
        self.bucket = location.bucket
        self.prefix = location.prefix
        self._spool_dir = spool_dir
        self._threads = WorkerThreads(threads, "dataerai-store")
        # Part URLs are signed here rather than by botocore where the addressing is path-style
        # (every store given by an endpoint): a twelfth of the CPU (presign.py).
        s3_config = getattr(client.meta.config, "s3", None) or {}
        path_style = s3_config.get("addressing_style") == "path" and client.meta.endpoint_url
        self._signer = PathStyleSigner(client) if path_style else None
        self._reader: ObjectReader | None = None
        try:
            if connection is None:
                raise ValueError("the client was given without its connection settings")
            self._reader = ObjectReader.for_connection(connection)
        except ValueError as exc:
            # Once per storage: every completion then reads through boto3 (slower, docs/server.md).
            log.warning("storage.readback_through_boto3", reason=str(exc))
        # A new session's CreateMultipartUpload is presigned and sent on our own connections
        # where both of the above could be made: a fifth of a session's CPU through boto3 (calls.py).
        self._calls = StoreCalls(self._reader) if self._reader is not None and self._signer is not None else None
        self._listings = _KeptListings()

    @classmethod
    def open(cls, url: str, spool_dir: Path) -> S3Storage:
        """Parse ``url``, make the client and check the bucket answers. Blocking."""
        location = S3Location.parse(url)
        client, connection = make_client()
        storage = cls(client, location, spool_dir, connection=connection)
        spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # spooled parts are private
        try:
            storage._s3.list_objects_v2(Bucket=location.bucket, Prefix=location.prefix, MaxKeys=1)
        except Exception as exc:
            raise StorageError(f"cannot reach bucket {location.bucket!r}: {exc}") from exc
        return storage

    def start_background(self, tasks: TaskGroup) -> None:
        """Nothing runs in the background."""

    # --- names and plumbing -------------------------------------------------------------

    def _object(self, key: str) -> str:
        return f"{self.prefix}contents/{_safe(key)}"

    def _record(self, key: str) -> str:
        return f"{self.prefix}verified/{_safe(key)}.json"

    def _split(self, handle: str) -> tuple[str, str]:
        name, sep, upload = handle.partition("/")
        if not sep or not upload:
            raise StorageError(f"not an S3 upload handle: {handle!r}")
        return _safe(name), upload

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a worker thread; store failures become :class:`StorageError`
        (except the ones callers look at: those keep their ``response``)."""
        return await self._threads.run(functools.partial(fn, *args, **kwargs))

    async def _call(self, operation: str, **params: Any) -> Any:
        """One S3 operation; any failure is a :class:`StorageError` carrying the S3 code.

        A completion's operations are presigned and sent on our own connections where
        they can be (:class:`~.calls.StoreCalls`), else through boto3; the answer has
        boto3's shape either way (the fields the callers read).
        """
        calls, signer = self._calls, self._signer
        if calls is not None and signer is not None and params.keys() <= _OWN_CALLS.get(operation, frozenset()):
            send = self._own_call(calls, signer, operation, params)
            try:
                return await self._run(send)
            except StoreError as exc:
                raise _S3Error(operation, exc, exc.code) from exc
        try:
            return await self._run(getattr(self._s3, operation), Bucket=self.bucket, **params)
        except Exception as exc:
            raise _S3Error(operation, exc) from exc

    def _own_call(self, calls: StoreCalls, signer: PathStyleSigner, operation: str,
                  params: dict[str, Any]) -> Callable[[], Any]:
        """``operation`` with boto3's ``params``, presigned now, to be sent by ``calls``."""
        key = params["Key"]

        def url(method: str, query: dict[str, str]) -> str:
            return signer.presign(method, self.bucket, key, query, CALL_URL_TTL_S)

        if operation == "list_parts":
            query = {"uploadId": params["UploadId"], "max-parts": str(params["MaxParts"]),
                     "part-number-marker": str(params["PartNumberMarker"])}
            return functools.partial(calls.list_parts, url("GET", query))
        if operation == "complete_multipart_upload":
            return functools.partial(calls.complete_multipart_upload, url("POST", {"uploadId": params["UploadId"]}),
                                     params["MultipartUpload"]["Parts"])
        if operation == "head_object":
            return functools.partial(calls.head_object, url("HEAD", {}))
        if operation == "abort_multipart_upload":
            return functools.partial(calls.abort_multipart_upload, url("DELETE", {"uploadId": params["UploadId"]}))
        assert operation == "put_object"
        return functools.partial(calls.put_object, url("PUT", {}), params["Body"],
                                 params.get("ContentType", "binary/octet-stream"))

    # --- uploads ---------------------------------------------------------------------

    async def create_upload(self, upload_id: str) -> str:
        key = self._object(upload_id)
        if self._calls is not None and self._signer is not None:
            url = self._signer.create_multipart_upload(self.bucket, key, CALL_URL_TTL_S)
            upload = await self._run(self._calls.create_multipart_upload, url)
        else:
            upload = (await self._call("create_multipart_upload", Key=key, ChecksumAlgorithm="SHA256"))["UploadId"]
        return f"{upload_id}/{upload}"

    def part_url(self, handle: str, number: int, size: int, sha256: str, ttl_seconds: int) -> PresignedRequest | None:
        """A presigned ``UploadPart`` with the part's digest signed in (no I/O: signing is local)."""
        if not self.location.direct_parts:
            return None
        name, upload = self._split(handle)
        checksum = b64_digest(sha256)
        if self._signer is not None:
            url = self._signer.upload_part(self.bucket, self._object(name), upload, number, checksum, ttl_seconds)
            return PresignedRequest("PUT", url, {"x-amz-checksum-sha256": checksum, "Content-Length": str(size)})
        url = self._s3.generate_presigned_url(
            "upload_part",
            Params={
                "Bucket": self.bucket,
                "Key": self._object(name),
                "UploadId": upload,
                "PartNumber": number,
                "ChecksumSHA256": checksum,
            },
            ExpiresIn=ttl_seconds,
        )
        return PresignedRequest("PUT", url, {"x-amz-checksum-sha256": checksum, "Content-Length": str(size)})

    async def put_part(
        self, handle: str, number: int, body: AsyncIterable[bytes], size: int, sha256: str, *, prefix: bool = False
    ) -> StoredPart:
        """Spool the body to a temp file while hashing it, check it, then send it with its digest."""
        if prefix:
            raise StorageError("S3 storage checks parts against their own digest, not a prefix digest")
        name, upload = self._split(handle)
        spool = await self._run(self._new_spool)
        try:
            hasher = hashlib.sha256()
            received = 0
            batch: list[bytes] = []
            batched = 0

            def flush(chunks: list[bytes]) -> None:
                data = b"".join(chunks)
                hasher.update(data)
                spool.write(data)

            async for chunk in body:
                received += len(chunk)
                if received > size:
                    raise ChecksumMismatch(
                        f"part {number} is longer than {size} bytes",
                        expected_size=size, actual_size=received, expected_sha256=sha256, actual_sha256=None,
                    )
                batch.append(chunk)
                batched += len(chunk)
                if batched >= BLOCK_BYTES:
                    await self._run(flush, batch)
                    batch, batched = [], 0
            await self._run(flush, batch)
            actual = hasher.hexdigest()
            if received != size or actual != sha256:
                raise ChecksumMismatch(
                    f"part {number} is {received} bytes with SHA-256 {actual}, not {size} bytes with {sha256}",
                    expected_size=size, actual_size=received, expected_sha256=sha256, actual_sha256=actual,
                )
            await self._run(spool.seek, 0)
            await self._call(
                "upload_part", Key=self._object(name), UploadId=upload, PartNumber=number,
                Body=spool, ContentLength=size, ChecksumSHA256=b64_digest(sha256),
            )
        finally:
            with anyio.CancelScope(shield=True):
                await self._run(spool.close)
        return StoredPart(number, size, sha256)

    def _new_spool(self) -> IO[bytes]:
        return tempfile.TemporaryFile("w+b", dir=self._spool_dir)

    async def _listed(self, name: str, upload: str) -> dict[int, list[dict[str, Any]]] | None:
        """The parts S3 holds, by number; a number re-sent may be listed more than once (newest
        first where S3's times tell). None if the multipart upload is gone (completed or aborted)."""
        parts: dict[int, list[dict[str, Any]]] = {}
        marker = 0
        while True:
            try:
                page = await self._call(
                    "list_parts", Key=self._object(name), UploadId=upload, PartNumberMarker=marker, MaxParts=1000
                )
            except _S3Error as exc:
                if exc.code in _GONE:
                    return None
                raise
            for part in page.get("Parts", []):
                parts.setdefault(int(part["PartNumber"]), []).insert(0, part)
            if not page.get("IsTruncated"):
                break
            marker = int(page["NextPartNumberMarker"])
        for versions in parts.values():
            versions.sort(key=lambda p: p.get("LastModified") or 0, reverse=True)
        return parts

    async def list_parts(self, handle: str) -> list[StoredPart]:
        """Numbers and sizes; ``sha256`` is None (S3 lists MD5 ETags, not the checksums).

        The listing is kept a moment for the completion that usually follows it
        (:meth:`complete`), which would otherwise ask the store for it again.
        """
        listed = await self._listed(*self._split(handle))
        if listed is not None:
            self._listings.keep(handle, listed)
        return [StoredPart(n, int(p[0]["Size"]), None) for n, p in sorted((listed or {}).items())]

    async def complete(self, handle: str, parts: Sequence[StoredPart], key: str, sha256: str | None) -> StoredContent:
        name, upload = self._split(handle)
        if [p.number for p in parts] != list(range(1, len(parts) + 1)):
            raise StorageError("parts must be numbered 1..N in order")
        size = sum(p.size for p in parts)
        kept = self._listings.take(handle)
        if kept is None and parts and all(p.etag is not None for p in parts):
            # The ETags the client says the store answered: taken as a listing would be.
            kept = {p.number: [{"ETag": p.etag, "Size": p.size}] for p in parts}
        if kept is not None:
            try:
                etag = await self._complete_upload(name, upload, parts, kept)
            except (StorageError, _S3Error) as exc:
                # A part re-sent (or the upload completed) since the listing: ask the store anew.
                log.info("storage.listing_outdated", handle=handle, error=str(exc))
            else:
                return await self._verify_and_publish(name, parts, key, sha256, size, etag)
        listed = await self._listed(name, upload)
        if listed is None:
            # Completed before (a retry after a crash), or aborted.
            return await self._completed_before(name, parts, key, sha256, size)
        etag = await self._complete_upload(name, upload, parts, listed)
        return await self._verify_and_publish(name, parts, key, sha256, size, etag)

    async def _complete_upload(self, name: str, upload: str, parts: Sequence[StoredPart],
                               listed: dict[int, list[dict[str, Any]]]) -> str | None:
        """``CompleteMultipartUpload`` of ``parts``, each taken from the versions ``listed``;
        the new object's ETag, where the store's answer gives it."""
        candidates: list[list[dict[str, Any]]] = []
        for part in parts:
            held = [p for p in listed.get(part.number, []) if int(p["Size"]) == part.size]
            if not held:
                raise StorageError(f"part {part.number} of {part.size} bytes is not stored")
            candidates.append(held)
        # A part re-sent may be listed once per send, told apart by ETag (MD5) only; S3
        # takes the one whose SHA-256 is the one given and refuses the others (BadDigest).
        choices = itertools.islice(itertools.product(*candidates), MAX_COMPLETE_TRIES)
        for choice in choices:
            entries = []
            for part, held_part in zip(parts, choice, strict=True):
                entry = {"PartNumber": part.number, "ETag": held_part["ETag"]}
                if part.sha256 is not None:
                    entry["ChecksumSHA256"] = b64_digest(part.sha256)
                entries.append(entry)
            try:
                done = await self._call(
                    "complete_multipart_upload", Key=self._object(name), UploadId=upload,
                    MultipartUpload={"Parts": entries},
                )
                return str(done["ETag"]) if done.get("ETag") else None
            except _S3Error as exc:
                if exc.code == "BadDigest":
                    continue
                if exc.code in ("InvalidPart", "InvalidPartOrder", "EntityTooSmall"):
                    raise StorageError(f"S3 refused the parts: {exc}") from exc
                raise
        raise StorageError("S3 holds no parts with the digests recorded for this upload")

    async def _verify_and_publish(
        self, name: str, parts: Sequence[StoredPart], key: str, sha256: str | None, size: int,
        completed_etag: str | None = None,
    ) -> StoredContent:
        """Hash the object completed under ``name``; delete it on a mismatch; else record it
        (and move it to ``key`` if that is another name).

        ``completed_etag``: the ETag the store answered the completion with. The read-back
        then asks for the parts' ``size`` bytes while the object has that ETag, and the store
        refuses a read of any other object or length (``If-Match``, each range's total),
        which saves asking for both first (a ``HEAD``).
        """
        built = self._object(name)
        head: dict[str, Any] = (
            {"ContentLength": size, "ETag": completed_etag} if completed_etag is not None
            else await self._call("head_object", Key=built)
        )
        try:
            actual_size, actual = await self._hash_object(built, int(head["ContentLength"]), head["ETag"])
        except _S3Error as exc:
            if completed_etag is None or exc.code != "PreconditionFailed":
                raise
            # The completion's answer named an ETag the object does not have: ask the object.
            log.warning("storage.completed_etag_differs", key=built, etag=completed_etag)
            head = await self._call("head_object", Key=built)
            actual_size, actual = await self._hash_object(built, int(head["ContentLength"]), head["ETag"])
        if actual_size != size or (sha256 is not None and actual != sha256):
            await self._call("delete_object", Key=built)
            raise ChecksumMismatch(
                f"the content is {actual_size} bytes with SHA-256 {actual}, not {size} bytes with {sha256}",
                expected_size=size, actual_size=actual_size, expected_sha256=sha256, actual_sha256=actual,
            )
        etag = head["ETag"]
        if key != name:
            await self._run(self._s3.copy, {"Bucket": self.bucket, "Key": built}, self.bucket, self._object(key))
            etag = (await self._call("head_object", Key=self._object(key)))["ETag"]
            await self._call("delete_object", Key=built)
        record = {"size": size, "sha256": actual, "etag": etag, "parts": [p.sha256 for p in parts]}
        await self._call(
            "put_object", Key=self._record(key), Body=json.dumps(record).encode(), ContentType="application/json"
        )
        # The store consumed the parts in making the object: nothing is left to release.
        return StoredContent(size=size, sha256=actual, parts_left=False)

    async def _completed_before(
        self, name: str, parts: Sequence[StoredPart], key: str, sha256: str | None, size: int
    ) -> StoredContent:
        """The multipart upload is gone: the same parts may be in ``key`` already."""
        try:
            head = await self._call("head_object", Key=self._object(key))
        except _S3Error as exc:
            if exc.code in _GONE:
                if key != name:
                    with contextlib.suppress(_S3Error):
                        await self._call("head_object", Key=self._object(name))
                        # Completed under its own name but never moved or recorded.
                        return await self._verify_and_publish(name, parts, key, sha256, size)
                raise StorageError(f"upload {name!r} has no parts left and {key!r} does not exist") from exc
            raise
        record = await self._read_record(key)
        given = [p.sha256 for p in parts]
        if record is not None and record.get("etag") == head["ETag"]:
            recorded = record["parts"]
            same = (
                int(record["size"]) == size
                and len(recorded) == len(given)
                and all(g is None or g == r for g, r in zip(given, recorded, strict=True))
            )
            if not same:
                raise StorageError(f"{key!r} holds other parts, and this upload's parts are gone")
            if sha256 is not None and record["sha256"] != sha256:
                raise ChecksumMismatch(
                    f"the content has SHA-256 {record['sha256']}, not {sha256}",
                    expected_size=size, actual_size=size, expected_sha256=sha256, actual_sha256=record["sha256"],
                )
            return StoredContent(size=size, sha256=str(record["sha256"]), parts_left=False)
        if int(head["ContentLength"]) != size or not self._composite_matches(head, parts):
            raise StorageError(f"{key!r} is not made of this upload's parts, and they are gone")
        # Completed, but the check of its digest never finished: check it now.
        return await self._verify_and_publish(key, parts, key, sha256, size)

    def _composite_matches(self, head: dict[str, Any], parts: Sequence[StoredPart]) -> bool:
        """Whether the object's composite checksum is the one ``parts`` make (True where unknown)."""
        composite = head.get("ChecksumSHA256")
        if not composite or any(p.sha256 is None for p in parts):
            return True
        joined = b"".join(bytes.fromhex(p.sha256) for p in parts if p.sha256 is not None)
        return bool(composite == f"{base64.b64encode(hashlib.sha256(joined).digest()).decode()}-{len(parts)}")

    async def _read_record(self, key: str) -> dict[str, Any] | None:
        try:
            answer = await self._call("get_object", Key=self._record(key))
        except _S3Error as exc:
            if exc.code in _GONE:
                return None
            raise
        data = await self._run(answer["Body"].read)
        try:
            record: dict[str, Any] = json.loads(data)
        except ValueError:
            return None
        return record

    async def _hash_object(self, name: str, size: int, etag: str) -> tuple[int, str]:
        """Read ``name`` (``size`` bytes while its ETag is ``etag``) whole and hash it in order:
        (size, sha256)."""
        if self._reader is not None:

            signer = self._signer

            def presign() -> str:
                if signer is not None:
                    return signer.presign("GET", self.bucket, name, {}, URL_TTL_S)
                return str(self._s3.generate_presigned_url(
                    "get_object", Params={"Bucket": self.bucket, "Key": name}, ExpiresIn=URL_TTL_S))

            try:
                return size, await self._reader.sha256(presign, size, etag, self._threads)
            except ReadbackError as exc:
                raise _S3Error("get_object", exc, exc.code) from exc

        def read_and_hash() -> tuple[int, str]:
            body = self._s3.get_object(Bucket=self.bucket, Key=name, IfMatch=etag)["Body"]
            hasher = hashlib.sha256()
            got = 0
            try:
                for block in body.iter_chunks(BLOCK_BYTES):
                    hasher.update(block)
                    got += len(block)
            finally:
                body.close()
            return got, hasher.hexdigest()

        try:
            return await self._run(read_and_hash)
        except Exception as exc:
            raise _S3Error("get_object", exc) from exc

    async def release_parts(self, handle: str) -> None:
        """S3 consumed the parts on completion; abort whatever upload is left (idempotent)."""
        await self.abort(handle)

    async def abort(self, handle: str) -> None:
        name, upload = self._split(handle)
        try:
            await self._call("abort_multipart_upload", Key=self._object(name), UploadId=upload)
        except _S3Error as exc:
            if exc.code not in _GONE:
                raise

    # --- contents ----------------------------------------------------------------------

    def content_url(self, key: str, ttl_seconds: int) -> PresignedRequest | None:
        """A presigned GET (a ``Range`` header is honoured, unsigned)."""
        if not self.location.direct_reads:
            return None
        url = self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._object(key)}, ExpiresIn=ttl_seconds
        )
        return PresignedRequest("GET", url, {})

    async def read_range(self, key: str, offset: int, length: int) -> AsyncGenerator[bytes, None]:
        name = self._object(key)
        if length == 0:
            head = await self._call("head_object", Key=name)
            if int(head["ContentLength"]) < offset:
                raise StorageError(f"content {key!r} is shorter than {offset} bytes")
            return
        answer = await self._call("get_object", Key=name, Range=f"bytes={offset}-{offset + length - 1}")
        body = answer["Body"]
        got = 0
        try:
            while got < length:
                try:
                    block = await self._run(body.read, min(BLOCK_BYTES, length - got))
                except Exception as exc:
                    raise StorageError(f"reading {key!r}: {exc}") from exc
                if not block:
                    raise StorageError(f"content {key!r} ended after {offset + got} bytes")
                got += len(block)
                yield block
        finally:
            with anyio.CancelScope(shield=True):
                await self._run(body.close)

    async def delete_content(self, key: str) -> None:
        await self._call("delete_object", Key=self._object(key))
        await self._call("delete_object", Key=self._record(key))


class _KeptListings:
    """Listings of multipart uploads, kept a moment by handle (:meth:`S3Storage.list_parts`).

    A completion whose parts went straight to the store lists them first (to learn
    which it holds), then completes; taking the listing kept saves asking the store
    again. A listing is taken once, and only while fresh; one grown old meanwhile (a part
    re-sent) makes the completion fail, and it then lists anew. At most ``most_parts``
    parts are kept in all (the oldest listings go first): a page of parts costs memory.
    Used from the event loop only.
    """

    def __init__(self, *, seconds: float = LISTING_KEPT_S, most_parts: int = LISTINGS_KEPT_PARTS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._seconds, self._most_parts, self._clock = seconds, most_parts, clock
        self._kept: OrderedDict[str, tuple[float, dict[int, list[dict[str, Any]]], int]] = OrderedDict()
        self._parts = 0

    def keep(self, handle: str, listed: dict[int, list[dict[str, Any]]]) -> None:
        self.take(handle)
        count = sum(len(versions) for versions in listed.values())
        if count > self._most_parts:
            return
        self._kept[handle] = (self._clock(), listed, count)
        self._parts += count
        while self._parts > self._most_parts:
            _, (_, _, dropped) = self._kept.popitem(last=False)
            self._parts -= dropped

    def take(self, handle: str) -> dict[int, list[dict[str, Any]]] | None:
        found = self._kept.pop(handle, None)
        if found is None:
            return None
        self._parts -= found[2]
        return found[1] if self._clock() - found[0] <= self._seconds else None


class _S3Error(StoreError):
    """A failed S3 operation through boto3, with S3's error code (``NoSuchUpload``, ``BadDigest``…)."""

    def __init__(self, operation: str, exc: BaseException, code: str | None = None) -> None:
        super().__init__(f"S3 {operation} failed: {exc}", _code(exc) if code is None else code)
