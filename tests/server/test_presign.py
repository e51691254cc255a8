"""The part URL signer (``storage/presign.py``) signs exactly as botocore does."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from botocore.config import Config
from dataerai_server.storage.presign import PathStyleSigner

NOW = datetime(2026, 12, 4, 5, 6, 7, tzinfo=timezone.utc)


def _client(endpoint: str, token: str | None) -> Any:
    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="se/cret+key",
        aws_session_token=token, region_name="eu-west-3",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:8333", "https://s3.example.org:9000/base/"])
@pytest.mark.parametrize("token", [None, "session/token+="])
def test_a_part_url_is_the_one_botocore_presigns(endpoint: str, token: str | None) -> None:
    client = _client(endpoint, token)
    params = {"Bucket": "a-bucket", "Key": "pre fix/contents/upl_1~a+b", "UploadId": "8d37b14f_96/99+=",
              "PartNumber": 7, "ChecksumSHA256": "q83vEjRWeJA="}
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        theirs = urlsplit(client.generate_presigned_url("upload_part", Params=params, ExpiresIn=3600))
    mine = urlsplit(PathStyleSigner(client).upload_part(
        "a-bucket", "pre fix/contents/upl_1~a+b", "8d37b14f_96/99+=", 7, "q83vEjRWeJA=", 3600, now=NOW))
    assert (mine.scheme, mine.netloc, mine.path) == (theirs.scheme, theirs.netloc, theirs.path)
    assert parse_qs(mine.query) == parse_qs(theirs.query)
    assert "X-Amz-Signature" in parse_qs(mine.query)


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:8333", "https://s3.example.org:9000/base/"])
@pytest.mark.parametrize("token", [None, "session/token+="])
def test_a_create_multipart_upload_url_is_the_one_botocore_presigns(endpoint: str, token: str | None) -> None:
    client = _client(endpoint, token)
    params = {"Bucket": "a-bucket", "Key": "pre fix/contents/upl_1~a+b", "ChecksumAlgorithm": "SHA256"}
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        theirs = urlsplit(client.generate_presigned_url("create_multipart_upload", Params=params, ExpiresIn=300))
    mine = urlsplit(PathStyleSigner(client).create_multipart_upload("a-bucket", "pre fix/contents/upl_1~a+b", 300,
                                                                    now=NOW))
    assert (mine.scheme, mine.netloc, mine.path) == (theirs.scheme, theirs.netloc, theirs.path)
    assert parse_qs(mine.query, keep_blank_values=True) == parse_qs(theirs.query, keep_blank_values=True)
    assert parse_qs(mine.query, keep_blank_values=True)["uploads"] == [""]


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:8333", "https://s3.example.org:9000/base/"])
@pytest.mark.parametrize(("operation", "params", "method", "query"), [
    ("list_parts", {"UploadId": "8d37b14f_96/99+=", "MaxParts": 1000, "PartNumberMarker": 3}, "GET",
     {"uploadId": "8d37b14f_96/99+=", "max-parts": "1000", "part-number-marker": "3"}),
    ("complete_multipart_upload", {"UploadId": "8d37b14f_96/99+="}, "POST", {"uploadId": "8d37b14f_96/99+="}),
    ("head_object", {}, "HEAD", {}),
    ("abort_multipart_upload", {"UploadId": "8d37b14f_96/99+="}, "DELETE", {"uploadId": "8d37b14f_96/99+="}),
    ("get_object", {}, "GET", {}),
    ("put_object", {}, "PUT", {}),
])
def test_a_completions_urls_are_the_ones_botocore_presigns(
    endpoint: str, operation: str, params: dict[str, Any], method: str, query: dict[str, str]
) -> None:
    """The calls a completion makes on our own connections (``S3Storage._own_call``)."""
    client = _client(endpoint, "session/token+=")
    key = "pre fix/contents/upl_1~a+b"
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        theirs = urlsplit(client.generate_presigned_url(
            operation, Params={"Bucket": "a-bucket", "Key": key, **params}, ExpiresIn=300, HttpMethod=method))
    mine = urlsplit(PathStyleSigner(client).presign(method, "a-bucket", key, query, 300, now=NOW))
    assert (mine.scheme, mine.netloc, mine.path) == (theirs.scheme, theirs.netloc, theirs.path)
    assert parse_qs(mine.query, keep_blank_values=True) == parse_qs(theirs.query, keep_blank_values=True)
