"""``upload_many`` and ``download_many``: what the SDK refuses before anything is sent (naming
the item), and the async twin's signature. The round trip is tests/integration/test_start_many.py."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
from dataerai import DaemonError, DataEraiClient, DataeraiClient
from dataerai.aio import AsyncDataeraiClient
from dataerai.contract import MAX_START_MANY_ITEMS

PROJECT = "prj_12345678"


@pytest.fixture
def client(tmp_path: Path) -> DataeraiClient:
    # No daemon listens there and none is started: a call that reached the wire would fail to connect.
    return DataeraiClient(socket_path=tmp_path / "none.sock", auto_start=False)


def _item(path: Path, **more: Any) -> dict[str, Any]:
    return {"local_path": path, "title": "t", "owner_type": "project", "owner_id": PROJECT, **more}


@pytest.mark.parametrize(
    ("spoil", "code"),
    [
        ({"local_path": "/nonexistent/x.bin"}, "not_found"),
        ({"colour": "red"}, "invalid_argument"),
        ({"title": None}, "invalid_argument"),
        ({"chunk_size_mb": 0}, "invalid_argument"),
        ({"tags": "raw"}, "invalid_argument"),
    ],
)
def test_an_item_the_sdk_refuses_names_its_index_and_sends_nothing(
    client: DataeraiClient, tmp_path: Path, spoil: dict[str, Any], code: str
) -> None:
    source = tmp_path / "a.bin"
    source.write_bytes(b"a")
    items = [_item(source), _item(source), {**_item(source), **spoil}]
    with pytest.raises(DaemonError) as raised:
        client.upload_many(items)
    assert raised.value.code == code
    assert raised.value.data["index"] == 2
    assert raised.value.message.startswith("items[2]")


def test_an_item_without_its_required_argument_is_invalid(client: DataeraiClient) -> None:
    with pytest.raises(DaemonError) as raised:
        client.download_many([{"asset_id": "ast_12345678"}])
    assert raised.value.code == "invalid_argument"
    assert raised.value.data["index"] == 0
    with pytest.raises(DaemonError) as raised:
        client.upload_many(["/etc/hostname"])  # type: ignore[list-item]
    assert raised.value.data == {"param": "items", "index": 0}


def test_more_than_the_limit_is_refused_before_sending(client: DataeraiClient, tmp_path: Path) -> None:
    source = tmp_path / "a.bin"
    source.write_bytes(b"a")
    with pytest.raises(DaemonError) as raised:
        client.upload_many([_item(source)] * (MAX_START_MANY_ITEMS + 1))
    assert raised.value.code == "invalid_argument"
    assert raised.value.data == {"param": "items"}
    assert "several calls" in raised.value.message


def test_no_items_queue_nothing_and_send_nothing(client: DataeraiClient) -> None:
    assert client.upload_many([]) == []
    assert client.download_many(iter([])) == []


def test_both_spellings_and_the_async_twin_have_the_methods() -> None:
    for name in ("upload_many", "download_many"):
        assert getattr(DataEraiClient, name) is getattr(DataeraiClient, name)
        blocking = inspect.signature(getattr(DataeraiClient, name))
        twin = getattr(AsyncDataeraiClient, name)
        assert inspect.iscoroutinefunction(twin)
        assert inspect.signature(twin).parameters == blocking.parameters
