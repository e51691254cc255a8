"""Completions asked at the same moment share the plan's transaction (and the record's), each
answered or refused on its own (``Uploads._completion_plans``). Through the real application
in process, on SQLite and on PostgreSQL, S3 storage on SeaweedFS."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio
import trio.testing
from dataerai_server import projects, uploads
from dataerai_server.services import Services
from in_process import asgi_client, sent_session
from server_harness import error, ok


async def test_completions_asked_together_are_planned_in_one_transaction_each_on_its_own(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    plans: list[int] = []
    records: list[int] = []
    plan_all, record_one = uploads._plan_completions, uploads._record_one

    def counted_record(session: Any, done: Any, usage: Any) -> Any:
        records.append(1)
        return record_one(session, done, usage)

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


async def test_completions_recorded_together_count_their_bytes_in_their_projects(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Completions in two projects and of the caller's own, recorded in one transaction: each
    project's ``used_bytes`` (kept on its row) grows by its contents' sizes, and is what its
    contents sum to, also after an asset's deletion and a new version."""
    async with asgi_client(services, "ha@example.org") as ha:
        first = ok(await ha.post("/api/v1/projects", json={"name": "first"}), 201)["project_id"]
        second = ok(await ha.post("/api/v1/projects", json={"name": "second"}), 201)["project_id"]
        runs = [
            (first, b"run 1\n" * 100), (second, b"run 2\n" * 300), (first, b"run 3\n" * 50),
            (None, b"run 4\n" * 70), (second, b"run 5\n" * 10),
        ]
        places = [None if project is None else {"owner_type": "project", "owner_id": project} for project, _ in runs]
        sent = [await sent_session(ha, data, place) for (_, data), place in zip(runs, places, strict=True)]
        assets: list[str] = []

        async def complete(upload_id: str, digest: str) -> None:
            done = await ha.post(f"/api/v1/uploads/{upload_id}/complete", json={"sha256": digest})
            assets.append(ok(done)["asset_id"])

        batches: list[int] = []
        record_all = uploads._record_completions

        def counted_records(session: Any, asks: list[Any]) -> list[Any]:
            batches.append(len(asks))
            return record_all(session, asks)

        monkeypatch.setattr(services.uploads._completion_records, "_run_items", counted_records)
        record, queued = services.uploads._completion_records, trio.Event()

        async def counted_record(done: Any) -> Any:
            asked.append(done)
            if len(asked) == len(sent):
                queued.set()  # the last one queues its record before this task next yields
            return await record(done)

        asked: list[Any] = []
        monkeypatch.setattr(services.uploads, "_completion_records", counted_record)
        async with trio.open_nursery() as nursery, record._batcher._slot:
            for upload_id, digest in sent:
                nursery.start_soon(complete, upload_id, digest)
            # Each waits for the store's answer in a thread first, then queues its record.
            with trio.fail_after(30):
                await queued.wait()

        def used() -> dict[str, tuple[int, int]]:
            return services.db.read_sync(lambda s: {
                p: (projects.used_bytes(s, p), projects.counted_bytes(s, p)) for p in (first, second)})

        assert batches == [len(runs)] and len(assets) == len(runs)
        assert used() == {first: (600 + 300, 600 + 300), second: (1800 + 60, 1800 + 60)}
        by_size = {ok(await ha.get(f"/api/v1/assets/{a}"))["latest_content"]["size"]: a for a in assets}
        ok(await ha.delete(f"/api/v1/assets/{by_size[1800]}"), 204)
        assert used()[second] == (60, 60)
        upload_id, digest = await sent_session(ha, b"run 1, again\n" * 40, {"asset_id": by_size[600]})
        await complete(upload_id, digest)
        assert used()[first] == (900 + 520, 900 + 520)
