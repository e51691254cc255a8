"""A completion told the ETag of every part sent straight to the store (``parts``): the
store is not asked which parts it holds; an ETag that is not the store's costs that
question, not the completion; a part told of but never sent is ``conflict``, as without.
Through the real application in process, on SQLite and on PostgreSQL, S3 storage on SeaweedFS."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from dataerai_server.services import Services
from dataerai_server.storage import S3Storage
from in_process import asgi_client, sent_part
from server_harness import error

RUN = b"beamline 7, run 42\n" * 50


@pytest.fixture
def listings(services: Services, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every ``ListParts`` the storage sends, by upload handle."""
    storage = services.storage
    assert isinstance(storage, S3Storage)
    asked: list[str] = []
    listed = storage._listed

    async def counted(name: str, upload: str) -> Any:
        asked.append(upload)
        return await listed(name, upload)

    monkeypatch.setattr(storage, "_listed", counted)
    return asked


async def _one_part_session(client: Any, data: bytes = RUN) -> str:
    me = (await client.get("/api/v1/me")).json()["user_id"]
    created = await client.post("/api/v1/uploads", json={"owner_type": "user", "owner_id": me, "size": len(data),
                                                          "part_size": 1 << 16})
    assert created.status_code == 201, created.text
    return str(created.json()["upload_id"])


async def test_every_parts_etag_told_spares_the_listing(
    services: Services, listings: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """And the completion asks the store for nothing else it can know: the object's ETag and
    length come with the completion's answer (no ``HeadObject``), and the parts went with it
    (no ``AbortMultipartUpload``). Left: completing, the read-back, the verified record."""
    storage = services.storage
    assert isinstance(storage, S3Storage)
    operations: list[str] = []
    call = storage._call

    async def counted(operation: str, **params: Any) -> Any:
        operations.append(operation)
        return await call(operation, **params)

    async with asgi_client(services, "ha@example.org") as client:
        upload_id = await _one_part_session(client)
        etag = await sent_part(client, upload_id, 1, RUN)
        monkeypatch.setattr(storage, "_call", counted)
        done = await client.post(f"/api/v1/uploads/{upload_id}/complete",
                                 json={"sha256": hashlib.sha256(RUN).hexdigest(),
                                       "parts": [{"number": 1, "etag": etag}]})
        assert done.status_code == 200, done.text
        assert listings == []
        assert operations == ["complete_multipart_upload", "put_object"]
        session = (await client.get(f"/api/v1/uploads/{upload_id}")).json()
        # The told part's bytes count as received, as a listed one's would.
        assert session["state"] == "completed" and session["bytes_received"] == len(RUN)
        read = await client.get(f"/api/v1/assets/{done.json()['asset_id']}/download")
        assert read.status_code == 200, read.text


async def test_an_etag_not_the_stores_costs_a_listing_not_the_completion(
    services: Services, listings: list[str]
) -> None:
    async with asgi_client(services, "ha@example.org") as client:
        upload_id = await _one_part_session(client)
        await sent_part(client, upload_id, 1, RUN)
        done = await client.post(f"/api/v1/uploads/{upload_id}/complete",
                                 json={"sha256": hashlib.sha256(RUN).hexdigest(),
                                       "parts": [{"number": 1, "etag": '"0123456789abcdef0123456789abcdef"'}]})
        assert done.status_code == 200, done.text
        assert len(listings) == 1
        assert (await client.get(f"/api/v1/uploads/{upload_id}")).json()["bytes_received"] == len(RUN)


async def test_a_part_told_of_but_never_sent_is_missing(services: Services, listings: list[str]) -> None:
    async with asgi_client(services, "ha@example.org") as client:
        upload_id = await _one_part_session(client)
        target = await client.post(f"/api/v1/uploads/{upload_id}/parts/1/target",
                                   json={"sha256": hashlib.sha256(RUN).hexdigest(), "size": len(RUN)})
        assert target.status_code == 200, target.text  # a URL minted, and no body sent to it
        told = {"sha256": hashlib.sha256(RUN).hexdigest(),
                "parts": [{"number": 1, "etag": '"0123456789abcdef0123456789abcdef"'}]}
        refused = await client.post(f"/api/v1/uploads/{upload_id}/complete", json=told)
        assert error(refused, 409, "conflict")["missing_parts"] == [1]
        assert listings  # the store was asked, and holds none
        await sent_part(client, upload_id, 1, RUN)
        done = await client.post(f"/api/v1/uploads/{upload_id}/complete", json={"sha256": told["sha256"]})
        assert done.status_code == 200, done.text


@pytest.mark.parametrize(
    "parts",
    [[{"number": 1, "etag": '"a"'}, {"number": 1, "etag": '"b"'}], [{"number": 0, "etag": '"a"'}],
     [{"number": 1, "etag": ""}], [{"number": 1, "etag": "with space"}], [{"number": 1}]],
)
async def test_told_parts_are_checked(services: Services, parts: list[dict[str, Any]]) -> None:
    async with asgi_client(services, "ha@example.org") as client:
        upload_id = await _one_part_session(client)
        refused = await client.post(f"/api/v1/uploads/{upload_id}/complete",
                                    json={"sha256": hashlib.sha256(RUN).hexdigest(), "parts": parts})
        assert error(refused, 400, "invalid_argument")["field"].startswith("parts")
