"""The server's application in this process (on Trio, through ``httpx.ASGITransport``), on
SQLite or on PostgreSQL, with S3 storage on the test session's SeaweedFS: for tests that
need to hold or count what happens inside a request. The fixtures are made available by
``conftest.py``."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from backends import POSTGRES_ENV, new_postgres_database
from dataerai_server.app import create_app
from dataerai_server.auth import SCOPE_SETS, issue_token
from dataerai_server.config import Settings, sqlite_url
from dataerai_server.services import Services, open_services


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database: SQLite, then PostgreSQL (skipped where it is not configured)."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
        return
    if not os.environ.get(POSTGRES_ENV):
        pytest.skip(f"{POSTGRES_ENV} is not set")
    with new_postgres_database("dataerai_in_process") as url:
        yield url


@pytest.fixture
async def services(
    database_url: str, seaweed: Any, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Services]:
    """The server's services on ``database_url`` and a fresh prefix of the S3 bucket."""
    for name, value in seaweed.env.items():
        monkeypatch.setenv(name, value)
    settings = Settings(
        data_dir=tmp_path / "data", database_url=database_url,
        storage_url=f"s3://{s3_bucket}/in-process-{secrets.token_hex(4)}",
    )
    opened = await open_services(settings)
    try:
        yield opened
    finally:
        opened.close()


def asgi_client(services: Services, email: str) -> httpx.AsyncClient:
    """A client of the application on ``services``, with a new write token of ``email``'s."""
    token = services.db.write_sync(lambda s: issue_token(s, email, SCOPE_SETS["write"], None))
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(services)), base_url="http://repo",
        headers={"Authorization": f"Bearer {token}"},
    )


async def sent_session(client: httpx.AsyncClient, data: bytes = b"beamline 7, run 42\n" * 50,
                       place: dict[str, str] | None = None) -> tuple[str, str]:
    """A one-part session whose part was sent straight to the store, not completed yet: its id
    and the part's (the whole file's) SHA-256. The client's own, or where ``place`` puts it
    (``owner_type`` and ``owner_id``, or ``asset_id``)."""
    if place is None:
        place = {"owner_type": "user", "owner_id": (await client.get("/api/v1/me")).json()["user_id"]}
    created = await client.post("/api/v1/uploads", json={**place, "size": len(data), "part_size": 1 << 16})
    assert created.status_code == 201, created.text
    upload_id = created.json()["upload_id"]
    digest = hashlib.sha256(data).hexdigest()
    target = await client.post(f"/api/v1/uploads/{upload_id}/parts/1/target",
                               json={"sha256": digest, "size": len(data)})
    assert target.status_code == 200, target.text
    await _put(target.json(), data)
    return upload_id, digest


async def sent_part(client: httpx.AsyncClient, upload_id: str, number: int, data: bytes) -> str:
    """Send part ``number`` of ``upload_id`` straight to the store; the ETag it answered."""
    target = await client.post(f"/api/v1/uploads/{upload_id}/parts/{number}/target",
                               json={"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})
    assert target.status_code == 200, target.text
    return await _put(target.json(), data)


async def _put(target: dict[str, Any], data: bytes) -> str:
    async with httpx.AsyncClient() as store:
        sent = await store.request("PUT", target["url"], headers=target["headers"], content=data)
        sent.raise_for_status()
    return sent.headers["etag"]
