"""Completions asked at the same moment share the plan's transaction (and the record's), each
answered or refused on its own (``Uploads._completion_plans``). Through the real application
in process, on SQLite and on PostgreSQL, S3 storage on SeaweedFS."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio
import trio.testing
from dataerai_server import uploads
from dataerai_server.services import Services
from in_process import asgi_client, sent_session
from server_harness import error, ok


async def test_completions_asked_together_are_planned_in_one_transaction_each_on_its_own(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    plans: list[int] = []
    records: list[int] = []
    plan_all, record_one = uploads._plan_completions, uploads._record_one

    def counted_record(session: Any, done: Any) -> Any:
        records.append(1)
        return record_one(session, done)

    monkeypatch.setattr(uploads, "_record_one", counted_record)

    def counted_plans(session: Any, asks: list[Any]) -> list[Any]:
        plans.append(len(asks))
        return plan_all(session, asks)

    monkeypatch.setattr(services.uploads._completion_plans, "_run_items", counted_plans)
    async with asgi_client(services, "ha@example.org") as ha, asgi_client(services, "io@example.org") as io:
        mine, my_digest = await sent_session(ha)
        second, _ = await sent_session(ha, b"another run\n" * 100)
        hers, her_digest = await sent_session(io)
        her_other, her_other_digest = await sent_session(io, b"a third run\n" * 70)
        stranger = httpx.AsyncClient(transport=ha._transport, base_url="http://repo",
                                     headers={"Authorization": "Bearer dtk_" + "y" * 43})
        asks = [
            (ha, mine, {"sha256": my_digest}),
            (ha, hers, {"sha256": her_digest}),  # someone else's session
            (stranger, "upl_" + "0" * 20, {"sha256": my_digest}),  # an unknown token
            (ha, second, {"sha256": "0" * 64}),  # a digest other than the session's content
            (io, her_other, {"sha256": her_other_digest, "idempotency_key": "done-1"}),
        ]
        answers: list[httpx.Response | None] = [None] * len(asks)

        async def ask(i: int, client: httpx.AsyncClient, upload_id: str, body: dict[str, Any]) -> None:
            answers[i] = await client.post(f"/api/v1/uploads/{upload_id}/complete", json=body)

        async with trio.open_nursery() as nursery, services.uploads._completion_plans._batcher._slot:
            for i, (client, upload_id, body) in enumerate(asks):
                nursery.start_soon(ask, i, client, upload_id, body)
                await trio.testing.wait_all_tasks_blocked()
        await stranger.aclose()
        got = [answer for answer in answers if answer is not None]
        assert plans[0] == len(asks)  # (then the parts sent straight to the store are listed)
        assert ok(got[0])["size"] == 950
        error(got[1], 404, "not_found")
        error(got[2], 401, "auth_required")
        error(got[3], 422, "checksum_mismatch")
        assert ok(got[4])["asset_id"] != ok(got[0])["asset_id"]
        assert len(records) == 2  # the two completions that made an asset
        # What was recorded holds: each asset reads back as its owner's.
        assert ok(await ha.get(f"/api/v1/assets/{ok(got[0])['asset_id']}"))["asset_id"] == ok(got[0])["asset_id"]
        error(await ha.get(f"/api/v1/assets/{ok(got[4])['asset_id']}"), 404, "not_found")
