"""The repository's HTTP API (docs/http-api.md) as the daemon's engines see it.

HTTP and transport errors become the catalogue's errors here and nowhere else:

- connection errors, timeouts, 408, 429 and 5xx → ``TransientError`` (retry; 429 and
  503 carry ``Retry-After``)
- 401 → ``AuthProblem`` (``auth_required`` / ``auth_expired``: the job waits for a login)
- 403 on a signed URL that expired → ``TargetExpired`` (ask for a new URL); an S3
  store's XML ``AccessDenied`` "Request has expired" too
- an S3 store's XML ``BadDigest`` (400) → ``checksum_mismatch``, as the server's own 422
- any other 4xx → ``DataeraiError`` with the server's code (fail at once)

Signed URLs (part targets, content reads) are sent without the bearer token:
the token only ever goes to the API base URL it was issued for.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import ssl
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
from dataerai import contract
from dataerai.protocol import ERRORS

from dataeraid.auth import Auth
from dataeraid.errors import AuthProblem, DataeraiError, TargetExpired, TransientError

if TYPE_CHECKING:
    from dataeraid.engine.bulk_http import Body, BulkHTTP, Burst, Charge

USER_AGENT = "dataeraid/0.1.0"

_STATUS_CODES = {400: "invalid_argument", 403: "permission_denied", 404: "not_found", 409: "conflict",
                 413: "quota_exceeded", 416: "invalid_argument", 422: "checksum_mismatch"}


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else None


def _error_body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _s3_error(response: httpx.Response) -> tuple[str, str] | None:
    """``(Code, Message)`` of an S3 store's XML error body (a presigned URL's answer), else None."""
    if not response.content.lstrip().startswith(b"<"):
        return None
    try:
        root = ElementTree.fromstring(response.content)
    except ElementTree.ParseError:
        return None
    if root.tag != "Error":
        return None
    return root.findtext("Code") or "", root.findtext("Message") or ""


def _json_object(response: httpx.Response, what: str) -> dict[str, Any]:
    """A 2xx answer's JSON object, empty for no content. One that is not a JSON object (a
    proxy's page, a broken server) is a transient failure, as a 5xx is."""
    if response.status_code == 204 or not response.content:
        return {}
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise TransientError(f"{what}: HTTP {response.status_code} with a body that is not a JSON object")
    return body


def _part_answer(response: httpx.Response, headers: Mapping[str, str], what: str) -> dict[str, Any]:
    """A part target's 2xx answer as the acknowledgement (``size``, ``sha256``, ...)."""
    if not response.content and "x-amz-checksum-sha256" in response.headers:
        # An S3 store's answer: no body; the digest it checked the part against, in base64.
        try:
            digest = base64.b64decode(response.headers["x-amz-checksum-sha256"], validate=True).hex()
        except (binascii.Error, ValueError):
            raise DataeraiError("internal", f"{what}: the store answered with a malformed checksum") from None
        ack: dict[str, Any] = {"sha256": digest, "size": int(headers.get("Content-Length", -1))}
        if response.headers.get("etag"):
            # Told back at completion, so that the repository need not ask the store for it.
            ack["etag"] = response.headers["etag"]
        return ack
    return _json_object(response, what)


def raise_for_status(response: httpx.Response, what: str) -> None:
    """Map a non-2xx answer to the catalogue (the one boundary for HTTP errors)."""
    status = response.status_code
    if status < 300:
        return
    if status in (408, 429) or status >= 500:
        raise TransientError(f"{what}: HTTP {status}", retry_after=_retry_after(response),
                             code="rate_limited" if status == 429 else "unavailable")
    s3 = _s3_error(response)
    if s3 is not None:
        if status == 403 and s3[0] == "AccessDenied" and "expired" in s3[1].lower():
            raise TargetExpired(f"{what}: {s3[1]}")
        if s3[0] in ("BadDigest", "XAmzContentChecksumMismatch", "InvalidDigest"):
            raise DataeraiError("checksum_mismatch", f"{what}: the store refused the bytes ({s3[0]}: {s3[1]})")
    error = _error_body(response)
    code = error.get("code") if error.get("code") in ERRORS else _STATUS_CODES.get(status, "invalid_argument")
    message = str(error.get("message") or f"HTTP {status}")
    if status == 401:
        raise AuthProblem(code if code in ("auth_required", "auth_expired") else "auth_required", message)
    if status == 403 and error.get("reason") in ("url_expired", "bad_signature"):
        raise TargetExpired(f"{what}: {message}")
    extra = {k: v for k, v in error.items() if k not in ("code", "message")}
    raise DataeraiError(str(code), f"{what}: {message}", **extra)


#: Bytes asked of the socket per read of a response body. httpcore reads 64 KiB at a
#: time, so a range of 64 MiB costs a thousand trips through h11 and the event loop;
#: 1 MiB reads cut the daemon's CPU per downloaded GiB (docs/benchmarks.md). The same
#: reasoning as the server's MAX_RECV (docs/server.md). It is httpcore's class
#: attribute, so this is guarded: without it, bodies are read in httpcore's own size.
RESPONSE_READ_BYTES = 1 << 20


def tune_http_reads() -> bool:
    """Make httpcore read response bodies ``RESPONSE_READ_BYTES`` at a time; False if it cannot."""
    try:
        from httpcore._async.http11 import AsyncHTTP11Connection
    except ImportError:
        return False
    if not isinstance(getattr(AsyncHTTP11Connection, "READ_NUM_BYTES", None), int):
        return False
    AsyncHTTP11Connection.READ_NUM_BYTES = RESPONSE_READ_BYTES
    return True


def ssl_context() -> ssl.SSLContext:
    """The one TLS context of the daemon's requests, httpx's and the bulk range GETs'
    (:mod:`dataeraid.engine.bulk_http`): httpx's own default, always verifying
    (``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` if set, else certifi's roots)."""
    return httpx.create_ssl_context()


def api_path(template: str, *values: tuple[str, str] | int) -> str:
    """An API path: ``template``'s ``{}`` filled with ids, each checked against its kind's
    pattern (``contract.ID_PATTERNS``) and percent-encoded, or with part numbers.

    The one way an id reaches a URL, so that no id, whether a caller's or a server's,
    can carry a path (``../me``) into a request.
    """
    filled: list[str] = []
    for value in values:
        if isinstance(value, int):
            if isinstance(value, bool) or value < 0:
                raise DataeraiError("invalid_argument", f"{value!r} is not a part number")
            filled.append(str(value))
            continue
        kind, text = value
        problem = contract.id_problem(kind, text)
        if problem is not None:
            raise DataeraiError("invalid_argument", f"{str(text)[:80]!r} {problem}")
        filled.append(quote(text, safe=""))
    return template.format(*filled)


class Remote:
    """One repository, reached with the current credentials."""

    def __init__(self, auth: Auth, http: httpx.AsyncClient, bulk: BulkHTTP | None = None) -> None:
        self._auth = auth
        self._http = http
        #: Range GETs without httpx, where it can do them (None: every range through httpx).
        self._bulk = bulk

    async def _api(self, method: str, path: str, what: str, *, json: Any = None,
                   params: Mapping[str, str] | None = None, timeout: float | None = None) -> dict[str, Any]:
        """One API call: its answer's JSON object (:func:`_json_object`)."""
        creds = self._auth.require()
        try:
            response = await self._http.request(
                method,
                creds.api_base + path,
                json=json,
                params=params,
                headers={"Authorization": f"Bearer {creds.token}"},
                timeout=httpx.Timeout(timeout, connect=10.0) if timeout else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.TransportError as exc:
            raise TransientError(f"{what}: {type(exc).__name__}: {exc}") from exc
        raise_for_status(response, what)
        return _json_object(response, what)

    # --- identity, projects, assets -----------------------------------------------

    async def me(self) -> dict[str, Any]:
        return await self._api("GET", "/me", "reading the token's user")

    async def create_project(self, name: str, description: str) -> dict[str, Any]:
        body = {"name": name, "description": description}
        return await self._api("POST", "/projects", "creating the project", json=body)

    async def get_asset(self, asset_id: str) -> dict[str, Any]:
        return await self._api("GET", api_path("/assets/{}", ("asset", asset_id)), f"reading asset {asset_id}")

    async def update_asset(self, asset_id: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        return await self._api(
            "PATCH", api_path("/assets/{}", ("asset", asset_id)), f"updating asset {asset_id}", json=dict(fields)
        )

    async def list_projects(self) -> dict[str, Any]:
        return await self._api("GET", "/projects", "listing projects")

    async def create_collection(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._api("POST", "/collections", "creating the collection", json=dict(body))

    async def list_collections(self, project_id: str) -> dict[str, Any]:
        return await self._api(
            "GET", api_path("/projects/{}/collections", ("project", project_id)),
            f"listing the collections of {project_id}"
        )

    async def list_assets(self, query: Mapping[str, str]) -> dict[str, Any]:
        return await self._api("GET", "/assets", "listing assets", params=query)

    async def delete_asset(self, asset_id: str) -> None:
        await self._api("DELETE", api_path("/assets/{}", ("asset", asset_id)), f"deleting asset {asset_id}")

    async def asset_files(self, asset_id: str, query: Mapping[str, str]) -> dict[str, Any]:
        return await self._api(
            "GET", api_path("/assets/{}/files", ("asset", asset_id)),
            f"reading the files of asset {asset_id}", params=query
        )

    async def create_relationship(self, from_asset_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._api(
            "POST", api_path("/assets/{}/relationships", ("asset", from_asset_id)),
            "creating the relationship", json=dict(body)
        )

    async def list_relationships(self, asset_id: str) -> dict[str, Any]:
        return await self._api(
            "GET", api_path("/assets/{}/relationships", ("asset", asset_id)), f"listing the relationships of {asset_id}"
        )

    # --- uploads ------------------------------------------------------------

    async def create_upload(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._api("POST", "/uploads", "creating the upload session", json=dict(body))

    async def get_upload(self, upload_id: str) -> dict[str, Any]:
        return await self._api("GET", api_path("/uploads/{}", ("upload", upload_id)), "reading the upload session")

    async def part_target(self, upload_id: str, number: int, sha256: str, size: int, *,
                          prefix: bool = False) -> dict[str, Any]:
        """Where to send part ``number``, with its digest signed in: its own SHA-256, or with
        ``prefix`` its prefix digest (the content's SHA-256 through the part's end)."""
        return await self._api(
            "POST", api_path("/uploads/{}/parts/{}/target", ("upload", upload_id), number),
            f"asking where to send part {number}",
            json={"prefix_sha256" if prefix else "sha256": sha256, "size": size},
        )

    def is_own_part_url(self, url: str) -> bool:
        """Whether ``url`` is the repository's own part endpoint (not an object store's URL)."""
        creds = self._auth.current
        if creds is None:
            return False
        base = creds.api_base.rstrip("/") + "/uploads/"
        return url.startswith(base) and "/parts/" in url[len(base):]

    async def put_part(self, target: Mapping[str, Any], body: AsyncIterator[bytes], what: str) -> dict[str, Any]:
        """Send one part to its signed target, streaming ``body``."""
        headers = dict(target.get("headers") or {})
        try:
            response = await self._http.request(str(target.get("method", "PUT")), target["url"],
                                                content=body, headers=headers)
        except httpx.TransportError as exc:
            raise TransientError(f"{what}: {type(exc).__name__}: {exc}") from exc
        raise_for_status(response, what)
        return _part_answer(response, headers, what)

    async def put_part_from(self, target: Mapping[str, Any], length: int, body: Body, charge: Charge, what: str,
                            sent: Callable[[], None] | None = None, *,
                            burst: Burst | None = None) -> dict[str, Any] | None:
        """Send one ``length``-byte part to its signed target without httpx, from ``body``
        (:meth:`~dataeraid.engine.bulk_http.BulkHTTP.send_from`); None, with nothing sent,
        where only :meth:`put_part` can."""
        url = str(target["url"])
        if self._bulk is None or not self._bulk.usable(url):
            return None
        headers = dict(target.get("headers") or {})
        response = await self._bulk.send_from(str(target.get("method", "PUT")), url, headers, length, body,
                                              charge, what, sent, burst=burst)
        return _part_answer(response, headers, what)

    async def complete_upload(self, upload_id: str, idempotency_key: str, sha256: str, *,
                              file_sha256: list[str] | None = None,
                              etags: Mapping[int, str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"idempotency_key": idempotency_key, "sha256": sha256}
        if file_sha256 is not None:
            body["file_sha256"] = file_sha256
        if etags is not None:
            body["parts"] = [{"number": number, "etag": etag} for number, etag in sorted(etags.items())]
        return await self._api(
            "POST", api_path("/uploads/{}/complete", ("upload", upload_id)),
            "completing the upload", json=body, timeout=3600.0,
        )

    async def dedup_challenge(self, upload_id: str, sha256: str) -> dict[str, Any]:
        """A proof-of-possession challenge for completing ``upload_id`` with held content ``sha256``."""
        return await self._api(
            "POST", api_path("/uploads/{}/dedup", ("upload", upload_id)),
            "asking to deduplicate the upload", json={"sha256": sha256},
        )

    async def dedup_prove(self, upload_id: str, challenge_id: str, digests: list[str], idempotency_key: str, *,
                          file_sha256: list[str] | None = None) -> dict[str, Any]:
        """Answer a challenge; the completion's result, or ``conflict`` (``reason: no_match``)."""
        body: dict[str, Any] = {"digests": digests, "idempotency_key": idempotency_key}
        if file_sha256 is not None:
            body["file_sha256"] = file_sha256
        return await self._api(
            "POST", api_path("/uploads/{}/dedup/{}", ("upload", upload_id), ("challenge", challenge_id)),
            "proving possession of the content", json=body,
        )

    async def abort_upload(self, upload_id: str) -> None:
        await self._api("DELETE", api_path("/uploads/{}", ("upload", upload_id)), "aborting the upload session")

    # --- downloads ----------------------------------------------------------

    async def download_target(self, asset_id: str, content_id: str | None) -> dict[str, Any]:
        params = {"content_id": content_id} if content_id else None
        return await self._api(
            "GET", api_path("/assets/{}/download", ("asset", asset_id)),
            f"asking where to read asset {asset_id}", params=params
        )

    async def read_range(self, target: Mapping[str, Any], start: int, length: int, what: str) -> AsyncIterator[bytes]:
        """Stream ``length`` bytes from ``start`` of a signed content URL."""
        headers = dict(target.get("headers") or {})
        if length > 0:
            headers["Range"] = f"bytes={start}-{start + length - 1}"
        try:
            async with self._http.stream("GET", target["url"], headers=headers) as response:
                if response.status_code == 200 and length > 0 and start > 0:
                    raise DataeraiError("internal", f"{what}: the server ignored the byte range")
                if response.status_code >= 300:
                    await response.aread()
                raise_for_status(response, what)
                async for block in response.aiter_raw():
                    yield block
        except httpx.TransportError as exc:
            raise TransientError(f"{what}: {type(exc).__name__}: {exc}") from exc

    async def read_range_into(self, target: Mapping[str, Any], start: int, length: int,
                              write: Callable[[int, memoryview], None], landed: Callable[[int], Awaitable[None]],
                              what: str) -> bool:
        """``length`` bytes from ``start`` of a signed content URL, straight into ``write``
        (:class:`~dataeraid.engine.bulk_http.BulkHTTP`); False where httpx must read them."""
        if self._bulk is None or length <= 0 or not self._bulk.usable(str(target["url"])):
            return False
        await self._bulk.read_into(str(target["url"]), dict(target.get("headers") or {}), start, length, write,
                                   landed, what)
        return True
