"""``--url-ttl``: how long signed part and content URLs (own and S3-presigned) are valid."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from dataerai_server.app import create_app
from dataerai_server.auth import SCOPE_SETS, issue_token
from dataerai_server.config import Settings, sqlite_url
from dataerai_server.services import open_services
from dataerai_server.storage import S3Location, S3Storage
from server_harness import SERVER, Server, create_upload, data_of, error, ok, sha256

T0 = 1_900_000_000.0


async def test_a_url_minted_with_a_short_ttl_is_refused_once_it_expires(tmp_path: Path) -> None:
    """The real app on a fake clock: valid through its last second, refused after it."""
    now = [T0]
    settings = Settings(data_dir=tmp_path, database_url=sqlite_url(tmp_path), url_ttl_seconds=60)
    services = await open_services(settings, clock=lambda: now[0])
    try:
        token = services.db.write_sync(lambda s: issue_token(s, "ada@example.org", SCOPE_SETS["write"], None))
        transport = httpx.ASGITransport(app=create_app(services))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://repo", headers={"Authorization": f"Bearer {token}"}
        ) as client:
            user_id = (await client.get("/api/v1/me")).json()["user_id"]
            data = data_of(1000, seed=51)
            created = await client.post(
                "/api/v1/uploads",
                json={"owner_type": "user", "owner_id": user_id, "size": len(data), "part_size": 65536,
                      "sha256": sha256(data)},
            )
            upload_id = ok(created, 201)["upload_id"]

            async def part_url() -> str:
                target = await client.post(
                    f"/api/v1/uploads/{upload_id}/parts/1/target", json={"sha256": sha256(data), "size": len(data)}
                )
                url: str = ok(target)["url"]
                assert int(parse_qs(urlsplit(url).query)["expires"][0]) == now[0] + 60
                return url

            url = await part_url()
            now[0] += 61
            refused = await client.put(url, content=data)
            assert error(refused, 403, "permission_denied")["reason"] == "url_expired"
            url = await part_url()
            now[0] += 60  # its last valid second
            ok(await client.put(url, content=data))
            result = ok(await client.post(f"/api/v1/uploads/{upload_id}/complete", json={}))

            link = ok(await client.get(f"/api/v1/assets/{result['asset_id']}/download"))
            assert int(parse_qs(urlsplit(link["url"]).query)["expires"][0]) == now[0] + 60
            now[0] += 60
            assert (await client.get(link["url"])).content == data
            now[0] += 1
            refused = await client.get(link["url"])
            assert error(refused, 403, "permission_denied")["reason"] == "url_expired"
    finally:
        services.close()


def test_s3_presigned_urls_take_the_ttl_given(tmp_path: Path) -> None:
    import boto3
    from botocore.config import Config

    # Presigning is local: this client never connects anywhere.
    client = boto3.client(
        "s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1", aws_access_key_id="k",
        aws_secret_access_key="s", config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    storage = S3Storage(client, S3Location.parse("s3://bucket/prefix"), tmp_path)
    part = storage.part_url("upl_x/UPLOAD", 1, 10, "0" * 64, 90)
    content = storage.content_url("upl_x", 7 * 86_400)
    assert part is not None and content is not None
    assert parse_qs(urlsplit(part.url).query)["X-Amz-Expires"] == ["90"]
    assert parse_qs(urlsplit(content.url).query)["X-Amz-Expires"] == ["604800"]


def test_run_takes_url_ttl_as_a_duration_within_bounds(tmp_path: Path) -> None:
    for bad, why in (("59", "shorter"), ("8d", "longer"), ("soon", "not a duration")):
        done = subprocess.run(
            [SERVER, "run", "--data-dir", str(tmp_path / "never"), "--bind", "127.0.0.1:0", "--url-ttl", bad],
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 2 and "--url-ttl" in done.stderr and why in done.stderr, done.stderr
    server = Server(tmp_path / "data", ["--url-ttl", "2m"])
    token = server.add_user("ada@example.org").strip()
    server.start()
    try:
        with server.client(token) as client:
            user_id = ok(client.get("/api/v1/me"))["user_id"]
            data = data_of(10, seed=52)
            upload_id = create_upload(client, user_id, data, owner_type="user")["upload_id"]
            before = time.time()
            target = ok(
                client.post(f"/api/v1/uploads/{upload_id}/parts/1/target", json={"sha256": sha256(data), "size": 10})
            )
            after = time.time()
        expires = int(parse_qs(urlsplit(target["url"]).query)["expires"][0])
        assert int(before) + 120 <= expires <= after + 120
    finally:
        server.stop()


@pytest.mark.parametrize(("text", "seconds"), [("60", 60), ("15m", 900), ("2h", 7200), ("7d", 604_800)])
def test_url_ttl_values(text: str, seconds: int) -> None:
    from dataerai_server.cli import run

    ttl_param = next(p for p in run.params if p.name == "url_ttl")
    assert ttl_param.type.convert(text, ttl_param, None).total_seconds() == seconds
