"""Reads that arrive at the same moment share a transaction (``Api._reads``): every token in
one statement, then each read as its own caller, each answered or refused on its own.
Through the real application in process, on SQLite and on PostgreSQL, S3 storage on SeaweedFS."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio
import trio.testing
from dataerai_server import app as app_module
from dataerai_server.app import Api, RequestLog
from dataerai_server.auth import SCOPE_SETS, issue_token
from dataerai_server.services import Services
from in_process import sent_session
from server_harness import error, ok


def _client(api: Api, services: Services, email: str | None) -> httpx.AsyncClient:
    token = "dtk_" + "x" * 43
    if email is not None:
        token = services.db.write_sync(lambda s: issue_token(s, email, SCOPE_SETS["write"], None))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=RequestLog(api.routes())), base_url="http://repo",
                             headers={"Authorization": f"Bearer {token}"})


async def _asset(client: httpx.AsyncClient) -> str:
    upload_id, digest = await sent_session(client)
    return str(ok(await client.post(f"/api/v1/uploads/{upload_id}/complete", json={"sha256": digest}))["asset_id"])


async def test_reads_asked_together_take_one_transaction_and_each_is_its_callers(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[int] = []
    read_all = app_module._read_as_callers

    def counted(session: Any, asks: list[Any]) -> list[Any]:
        batches.append(len(asks))
        return read_all(session, asks)

    monkeypatch.setattr(app_module, "_read_as_callers", counted)
    api = Api(services)
    async with (_client(api, services, "fa@example.org") as fa, _client(api, services, "gu@example.org") as gu,
                _client(api, services, None) as stranger):
        asset_id = await _asset(fa)
        batches.clear()
        asks = [
            (fa, f"/api/v1/assets/{asset_id}"),  # her own asset
            (gu, f"/api/v1/assets/{asset_id}"),  # someone else's: not visible
            (stranger, f"/api/v1/assets/{asset_id}"),  # an unknown token
            (gu, "/api/v1/me"),  # a token looked up for a handler that reads on its own
            (fa, "/api/v1/assets/ast_" + "0" * 24),  # no such asset
        ]
        answers: list[httpx.Response | None] = [None] * len(asks)

        async def ask(i: int, client: httpx.AsyncClient, path: str) -> None:
            answers[i] = await client.get(path)

        async with trio.open_nursery() as nursery, api._reads._batcher._slot:
            for i, (client, path) in enumerate(asks):
                nursery.start_soon(ask, i, client, path)
                await trio.testing.wait_all_tasks_blocked()

    assert batches == [len(asks)]
    got = [answer for answer in answers if answer is not None]
    assert ok(got[0])["asset_id"] == asset_id
    error(got[1], 404, "not_found")
    error(got[2], 401, "auth_required")
    assert ok(got[3])["email"] == "gu@example.org"
    error(got[4], 404, "not_found")
