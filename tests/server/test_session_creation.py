"""A new upload session: checked in one transaction, its store upload made with no transaction
open, then inserted without checking again (``Uploads.create``). Through the real application
in process, on SQLite and on PostgreSQL, with S3 storage on SeaweedFS."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio
import trio.testing
from dataerai_server.services import Services
from dataerai_server.storage.presign import PathStyleSigner
from dataerai_server.storage.s3 import S3Storage, make_client
from in_process import asgi_client, sent_session
from server_harness import error, ok
from sqlalchemy import text

AT_ONCE = 4


def _new_session(user_id: str, **fields: Any) -> dict[str, Any]:
    return {"owner_type": "user", "owner_id": user_id, "size": 1000, "part_size": 1 << 16, **fields}


async def test_sessions_asked_at_once_under_one_key_are_one_and_the_other_store_uploads_are_aborted(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = services.uploads._storage
    create, abort = storage.create_upload, storage.abort
    made: list[str] = []
    aborted: list[str] = []
    all_checked = trio.Event()

    async def create_when_all_checked(upload_id: str) -> str:
        # Every request has passed its check (none had found a session under the key) before
        # any inserts: all but one insert then meet the key's UNIQUE constraint.
        handle = await create(upload_id)
        made.append(handle)
        if len(made) == AT_ONCE:
            all_checked.set()
        await all_checked.wait()
        return handle

    async def counted_abort(handle: str) -> None:
        aborted.append(handle)
        await abort(handle)

    monkeypatch.setattr(storage, "create_upload", create_when_all_checked)
    monkeypatch.setattr(storage, "abort", counted_abort)
    answers: list[httpx.Response] = []
    async with asgi_client(services, "ada@example.org") as ada:
        user_id = ok(await ada.get("/api/v1/me"))["user_id"]

        async def ask() -> None:
            answers.append(await ada.post("/api/v1/uploads", json=_new_session(user_id, idempotency_key="run-7")))

        async with trio.open_nursery() as nursery:
            for _ in range(AT_ONCE):
                nursery.start_soon(ask)

    assert sorted(answer.status_code for answer in answers) == [200] * (AT_ONCE - 1) + [201]
    assert len({answer.json()["upload_id"] for answer in answers}) == 1
    kept = services.db.read_sync(lambda s: s.execute(
        text("SELECT storage_handle FROM upload_sessions WHERE idempotency_key = 'run-7'")).scalars().all())
    assert len(kept) == 1
    # Each request made its own store upload; the ones whose insert lost were aborted.
    assert len(made) == AT_ONCE and sorted(aborted) == sorted(set(made) - set(kept))


async def test_a_refused_session_makes_no_store_upload(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[str] = []
    create = services.uploads._storage.create_upload

    async def counted(upload_id: str) -> str:
        made.append(upload_id)
        return await create(upload_id)

    monkeypatch.setattr(services.uploads._storage, "create_upload", counted)
    async with asgi_client(services, "bo@example.org") as bo:
        user_id = ok(await bo.get("/api/v1/me"))["user_id"]
        error(await bo.post("/api/v1/uploads", json=_new_session("usr_" + "0" * 24)), 403, "permission_denied")
        error(await bo.post("/api/v1/uploads", json=_new_session(user_id, collection_id="col_" + "0" * 24)),
              400, "invalid_argument")
        assert made == []
        ok(await bo.post("/api/v1/uploads", json=_new_session(user_id)), 201)
    assert len(made) == 1


async def test_sessions_asked_together_are_checked_in_one_transaction_each_on_its_own(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = services.uploads._new_session_checks
    batches: list[int] = []
    check_all = services.uploads._check_new_sessions

    def counted(session: Any, asks: list[Any]) -> list[Any]:
        batches.append(len(asks))
        return check_all(session, asks)

    monkeypatch.setattr(checks, "_run_items", counted)
    async with asgi_client(services, "di@example.org") as di, asgi_client(services, "ed@example.org") as ed:
        di_id, ed_id = ok(await di.get("/api/v1/me"))["user_id"], ok(await ed.get("/api/v1/me"))["user_id"]
        before = ok(await di.post("/api/v1/uploads", json=_new_session(di_id, idempotency_key="k")), 201)
        batches.clear()
        stranger = httpx.AsyncClient(transport=di._transport, base_url="http://repo",
                                     headers={"Authorization": "Bearer dtok_" + "x" * 43})
        asks = [
            (di, _new_session(di_id, idempotency_key="k")),  # made before: the same session again
            (ed, _new_session(ed_id, idempotency_key="k")),  # the same key is another user's own
            (stranger, _new_session(di_id)),  # an unknown token
            (di, _new_session(di_id, size=(1 << 16) * 10_001)),  # too many parts
            (di, _new_session(ed_id)),  # another user's id as owner
            (di, _new_session(di_id, idempotency_key="k2")),
        ]
        answers: list[httpx.Response | None] = [None] * len(asks)

        async def ask(i: int, client: httpx.AsyncClient, body: dict[str, Any]) -> None:
            answers[i] = await client.post("/api/v1/uploads", json=body)

        async with trio.open_nursery() as nursery, checks._batcher._slot:
            for i, (client, body) in enumerate(asks):
                nursery.start_soon(ask, i, client, body)
                await trio.testing.wait_all_tasks_blocked()
        await stranger.aclose()

    assert batches == [len(asks)]
    got = [answer for answer in answers if answer is not None]
    assert ok(got[0], 200)["upload_id"] == before["upload_id"]
    eds = ok(got[1], 201)["upload_id"]
    assert eds != before["upload_id"]
    error(got[2], 401, "auth_required")
    assert error(got[3], 400, "invalid_argument")["field"] == "part_size"
    error(got[4], 403, "permission_denied")
    assert ok(got[5], 201)["upload_id"] not in (before["upload_id"], eds)


async def test_a_store_that_refuses_a_new_upload_is_unavailable_and_nothing_is_recorded(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real store, signed for with a secret it does not know (as after a rotated key).
    storage = services.uploads._storage
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    monkeypatch.setattr(storage, "_signer", PathStyleSigner(make_client()[0]))
    async with asgi_client(services, "jo@example.org") as jo:
        user_id = ok(await jo.get("/api/v1/me"))["user_id"]
        refused = await jo.post("/api/v1/uploads", json=_new_session(user_id, idempotency_key="k"))
    assert error(refused, 503, "unavailable")["message"].count("SignatureDoesNotMatch") == 1
    assert refused.headers["Retry-After"] == "30"
    rows = services.db.read_sync(lambda s: s.execute(text("SELECT count(*) FROM upload_sessions")).scalar())
    assert rows == 0


async def test_a_store_that_refuses_a_completion_is_unavailable_and_the_session_stays_open(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's own refusal at completion (here its first call, listing the parts sent
    straight to it) is a passing condition, as at creation: ``503`` with ``Retry-After``, and
    the session still open: the same completion asked again once the store takes the
    server's key completes it."""
    storage = services.uploads._storage
    assert isinstance(storage, S3Storage)
    async with asgi_client(services, "jo@example.org") as jo:
        upload_id, digest = await sent_session(jo)
        kept = storage._s3, storage._signer
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        wrong = make_client()[0]
        monkeypatch.setattr(storage, "_s3", wrong)
        monkeypatch.setattr(storage, "_signer", PathStyleSigner(wrong))
        refused = await jo.post(f"/api/v1/uploads/{upload_id}/complete", json={"sha256": digest})
        assert error(refused, 503, "unavailable")["message"].count("SignatureDoesNotMatch") == 1
        assert refused.headers["Retry-After"] == "30"
        # Its status asks the store too (which parts it holds), and is refused the same way.
        error(await jo.get(f"/api/v1/uploads/{upload_id}"), 503, "unavailable")
        monkeypatch.setattr(storage, "_s3", kept[0])
        monkeypatch.setattr(storage, "_signer", kept[1])
        assert ok(await jo.get(f"/api/v1/uploads/{upload_id}"))["state"] == "open"
        done = ok(await jo.post(f"/api/v1/uploads/{upload_id}/complete", json={"sha256": digest}))
        assert done["sha256"] == digest
