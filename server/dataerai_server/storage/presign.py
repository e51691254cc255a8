"""SigV4 query presigning for a path-style endpoint, without botocore's machinery.

A fleet asks for one part URL per part, and botocore's ``generate_presigned_url`` spent
about 0.22 ms of CPU on the event loop for each (endpoint rule resolution, parameter
validation, serialisation, event hooks) around a few HMACs that take 0.02 ms
(docs/server.md, "Requests per CPU second"). A new upload session's
``CreateMultipartUpload`` through boto3 cost the server about 0.9 ms of CPU, a fifth of the
session's (docs/server.md, "Seventh pass"). This module signs the same requests the same
way (AWS Signature Version 4, query authentication, ``UNSIGNED-PAYLOAD``, the checksum
header S3 is given signed in), for the addressing ``s3.py`` uses whenever an endpoint is
given: ``ENDPOINT/BUCKET/KEY``. A test checks each URL against botocore's for the same
instant, and the S3 tests send parts and create uploads on SeaweedFS through it.
Credentials are read from the client at each call (they may be refreshed).
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timezone
from typing import Any, Final
from urllib.parse import quote, urlsplit

ALGORITHM: Final = "AWS4-HMAC-SHA256"


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


class PathStyleSigner:
    """Presigns S3 requests for one path-style endpoint, signing as ``client`` would."""

    def __init__(self, client: Any) -> None:
        self._client = client
        endpoint = urlsplit(client.meta.endpoint_url)
        self._base = f"{endpoint.scheme}://{endpoint.netloc}{endpoint.path.rstrip('/')}"
        self._path_prefix = endpoint.path.rstrip("/")
        self._host = endpoint.netloc
        self._region = client.meta.region_name
        self._keys: tuple[str, str, bytes] | None = None  # (date, secret, signing key)

    def _signing_key(self, date: str, secret: str) -> bytes:
        if self._keys is None or self._keys[:2] != (date, secret):
            key = _hmac(("AWS4" + secret).encode(), date)
            for part in (self._region, "s3", "aws4_request"):
                key = _hmac(key, part)
            self._keys = (date, secret, key)
        return self._keys[2]

    def upload_part(self, bucket: str, key: str, upload_id: str, number: int, checksum: str, expires: int,
                    now: datetime | None = None) -> str:
        """The presigned URL of ``UploadPart`` (``PUT``) with ``checksum`` (base64 SHA-256) signed in."""
        query = {"partNumber": str(number), "uploadId": upload_id}
        return self.presign("PUT", bucket, key, query, expires, (("x-amz-checksum-sha256", checksum),), now)

    def create_multipart_upload(self, bucket: str, key: str, expires: int, now: datetime | None = None) -> str:
        """The presigned URL of ``CreateMultipartUpload`` (``POST``) of an upload whose parts carry
        SHA-256 checksums: sent with the header ``x-amz-checksum-algorithm: SHA256``."""
        return self.presign("POST", bucket, key, {"uploads": ""}, expires, (("x-amz-checksum-algorithm", "SHA256"),),
                            now)

    def presign(self, method: str, bucket: str, key: str, params: dict[str, str], expires: int,
                headers: tuple[tuple[str, str], ...] = (), now: datetime | None = None) -> str:
        """``method`` on ``bucket``/``key`` with ``params``, the ``host`` and ``headers`` (lower-case
        names, values; sent with the request as they are signed) signed."""
        credentials = self._client._request_signer._credentials.get_frozen_credentials()
        moment = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
        stamp, date = moment.strftime("%Y%m%dT%H%M%SZ"), moment.strftime("%Y%m%d")
        scope = f"{date}/{self._region}/s3/aws4_request"
        signed = sorted((("host", self._host), *headers))
        signed_headers = ";".join(name for name, _ in signed)
        query = {
            "X-Amz-Algorithm": ALGORITHM,
            "X-Amz-Credential": f"{credentials.access_key}/{scope}",
            "X-Amz-Date": stamp,
            "X-Amz-Expires": str(expires),
            "X-Amz-SignedHeaders": signed_headers,
            **params,
        }
        if credentials.token:
            query["X-Amz-Security-Token"] = credentials.token
        canonical_query = "&".join(
            f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items())
        )
        path = f"{self._path_prefix}/{quote(bucket, safe='-_.~')}/{quote(key, safe='-_.~/')}"
        canonical_request = "\n".join((
            method, path, canonical_query,
            "".join(f"{name}:{value}\n" for name, value in signed), signed_headers, "UNSIGNED-PAYLOAD",
        ))
        to_sign = "\n".join((ALGORITHM, stamp, scope, hashlib.sha256(canonical_request.encode()).hexdigest()))
        signature = hmac.new(self._signing_key(date, credentials.secret_key), to_sign.encode(),
                             hashlib.sha256).hexdigest()
        return f"{self._base}{path[len(self._path_prefix):]}?{canonical_query}&X-Amz-Signature={signature}"
