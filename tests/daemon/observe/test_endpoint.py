"""The metrics endpoint in process (its answers to what is not a scrape, its move to another port),
the loopback rule as a property, and the catalogue against docs/operations.md."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from dataeraid.config import Settings
from dataeraid.observe import catalogue
from dataeraid.observe.health import Health, Reason
from dataeraid.observe.http import MetricsPort, open_metrics_listeners
from dataeraid.observe.settings import OBSERVE_BOUNDS, parse_listen

DOCS = Path(__file__).resolve().parents[3] / "docs"


async def test_endpoint_answers() -> None:
    async def exposition() -> str:
        return "# HELP x y\n"

    async def checkup() -> Health:
        return Health("failing", (Reason("failing", "auth_required", "not logged in"),))

    async with trio.open_nursery() as nursery:
        listeners = await open_metrics_listeners("127.0.0.1", 0)
        endpoint = MetricsPort(exposition, checkup)
        await nursery.start(endpoint.serve)
        endpoint.swap(listeners)
        port = listeners[0].socket.getsockname()[1]

        def ask() -> list[tuple[int, str]]:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                return [(r.status_code, r.text) for r in (
                    client.get("/metrics"), client.get("/health"), client.post("/metrics"), client.get("/nope"),
                    client.head("/metrics"))]

        answers = await trio.to_thread.run_sync(ask)
        nursery.cancel_scope.cancel()
    assert answers[0] == (200, "# HELP x y\n")
    assert answers[1][0] == 503 and '"summary": "failing: not logged in"' in answers[1][1]
    assert [a[0] for a in answers[2:]] == [405, 404, 200]
    assert answers[4][1] == ""


@given(st.ip_addresses())
def test_only_loopback_addresses_are_taken(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    text = f"[{address}]:9464" if address.version == 6 else f"{address}:9464"
    if address.is_loopback:
        assert parse_listen(text) == (str(address), 9464)
    else:
        with pytest.raises(ValueError, match="loopback"):
            parse_listen(text)


@pytest.mark.parametrize("text", ["", "9464", "localhost", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:70000",
                                  "example.org:9464", "0.0.0.0:9464"])
def test_listen_refusals(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(text)
    assert parse_listen("localhost:9464") == ("127.0.0.1", 9464)


def test_operations_guide_lists_every_metric_as_the_catalogue_says() -> None:
    text = (DOCS / "operations.md").read_text()
    assert catalogue.markdown_table() in text, "regenerate: python -c 'from dataeraid.observe import " \
                                               "catalogue; print(catalogue.markdown_table())'"


def test_every_observing_key_is_documented() -> None:
    configuration = (DOCS / "configuration.md").read_text()
    operations = (DOCS / "operations.md").read_text()
    for key in [*OBSERVE_BOUNDS, "desktop_notifications"]:
        assert f"\n{key} = " in configuration and f"`{key}`" in operations, key
        assert key in set(Settings.keys())


async def test_the_endpoint_moves_and_a_scrape_being_answered_gets_its_answer() -> None:
    asked = trio.Event()
    answer = trio.Event()

    async def exposition() -> str:
        asked.set()
        await answer.wait()
        return "# HELP x y\n"

    async def checkup() -> Health:
        return Health("ok")

    def get(port: int) -> tuple[int, str]:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            response = client.get("/metrics")
            return response.status_code, response.text

    def refused(port: int) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) != 0

    port = MetricsPort(exposition, checkup)
    async with trio.open_nursery() as nursery:
        await nursery.start(port.serve)
        first = await open_metrics_listeners("127.0.0.1", 0)
        port.swap(first)
        old = first[0].socket.getsockname()[1]
        results: list[tuple[int, str]] = []

        async def scrape_old() -> None:
            results.append(await trio.to_thread.run_sync(get, old))

        nursery.start_soon(scrape_old)
        await asked.wait()
        second = await open_metrics_listeners("127.0.0.1", 0)
        port.swap(second)  # while the scrape of the old port is being answered
        new = second[0].socket.getsockname()[1]
        assert port.listeners == second
        assert await trio.to_thread.run_sync(refused, old)
        answer.set()
        assert await trio.to_thread.run_sync(get, new) == (200, "# HELP x y\n")
        port.swap([])
        assert await trio.to_thread.run_sync(refused, new)
        nursery.cancel_scope.cancel()
    assert results == [(200, "# HELP x y\n")]
