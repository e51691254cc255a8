"""``storage/readback.py`` against a store that misbehaves on purpose: a small HTTP/1.1 server on
a real loopback socket answering each range GET as the test says (SeaweedFS answers correctly;
its read-backs are in ``test_storage_s3.py``)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import structlog
import trio
from dataerai_server.storage import S3Location, S3Storage, StorageError
from dataerai_server.storage.readback import ConnectionSettings, ObjectReader, ReadbackError
from dataerai_server.storage.s3 import connection_settings, make_client
from dataerai_server.threads import WorkerThreads
from loopback import LoopbackServer

ETAG = '"0123456789abcdef0123456789abcdef-3"'
DATA = bytes(range(256)) * 20  # 5,120 bytes: five ranges of 1,024 below, two in flight
#: ``answer(start, end)`` -> the raw response to the range GET of bytes start..end (inclusive).
Answer = Callable[[int, int], bytes]


class HangUp(bytes):
    """An answer after which the store closes the connection."""


def ok(start: int, end: int, *, status: str = "206 Partial Content", length: int | None = None,
       content_range: str | None = None, etag: str = ETAG, body: bytes | None = None) -> bytes:
    body = DATA[start : end + 1] if body is None else body
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body) if length is None else length}", f"ETag: {etag}"]
    if status.startswith("206"):
        head.append(f"Content-Range: {content_range or f'bytes {start}-{end}/{len(DATA)}'}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class Store:
    """Answers range GETs with ``answer``; records each request's Range."""

    def __init__(self, answer: Answer, tls: ssl.SSLContext | None = None) -> None:
        self.answer = answer
        self.tls = tls
        self.ranges: list[tuple[int, int]] = []
        self.headers: list[str] = []
        self.answered = threading.Event()
        self._server = LoopbackServer(self._serve, tls=tls)
        self.port = self._server.port

    def _serve(self, conn: socket.socket, number: int) -> None:
        pending = b""
        while True:
            while b"\r\n\r\n" not in pending:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                pending += data
            head, _, pending = pending.partition(b"\r\n\r\n")
            text = head.decode()
            self.headers.append(text)
            found = re.search(r"^Range: bytes=(\d+)-(\d+)$", text, re.M | re.I)
            start, end = (int(found[1]), int(found[2])) if found else (0, len(DATA) - 1)
            self.ranges.append((start, end))
            answer = self.answer(start, end)
            try:
                conn.sendall(answer)
            except OSError:
                return
            self.answered.set()
            if isinstance(answer, HangUp):
                return

    def stop(self) -> None:
        self._server.close()


@pytest.fixture
def store_with() -> Iterator[Callable[..., Store]]:
    stores: list[Store] = []

    def make(answer: Answer, tls: ssl.SSLContext | None = None) -> Store:
        stores.append(Store(answer, tls))
        return stores[-1]

    yield make
    for store in stores:
        store.stop()


async def read_back(store: Store, size: int = len(DATA), *, range_bytes: int = 1024,
                    reader: ObjectReader | None = None) -> str:
    if reader is None:
        reader = ObjectReader(f"http://127.0.0.1:{store.port}", None, connect_timeout=5, read_timeout=30,
                              range_bytes=range_bytes, in_flight=2)
    return await reader.sha256(lambda: f"{reader.scheme}://127.0.0.1:{store.port}/bucket/key?X-Amz-Signature=s",
                               size, ETAG, WorkerThreads(4, "test-readback"))


async def test_ranges_are_asked_for_and_hashed_in_order(store_with: Callable[..., Store]) -> None:
    store = store_with(ok)
    assert await read_back(store) == hashlib.sha256(DATA).hexdigest()
    # Two connections: the store sees each range once, in whichever order they reach it.
    assert sorted(store.ranges) == [(s, min(s + 1023, len(DATA) - 1)) for s in range(0, len(DATA), 1024)]
    assert all(f"If-Match: {ETAG}" in head for head in store.headers)


async def test_an_object_of_one_range_is_one_plain_get(store_with: Callable[..., Store]) -> None:
    store = store_with(lambda start, end: ok(start, end, status="200 OK"))
    assert await read_back(store, range_bytes=len(DATA)) == hashlib.sha256(DATA).hexdigest()
    assert len(store.headers) == 1 and "Range:" not in store.headers[0]


@pytest.mark.parametrize(("answer", "problem"), [
    (lambda s, e: ok(s, e, content_range=f"bytes {s + 1}-{e + 1}/{len(DATA)}") if s else ok(s, e), "Content-Range"),
    (lambda s, e: ok(s, e, content_range=f"bytes {s}-{e}/{len(DATA) + 1}"), "Content-Range"),
    (lambda s, e: ok(s, e, length=e - s, body=DATA[s:e]), "Content-Length"),
    (lambda s, e: ok(0, len(DATA) - 1, status="200 OK"), "HTTP 200"),
    (lambda s, e: ok(s, e, etag='"another"') if s >= 2048 else ok(s, e), "ETag"),
], ids=["other-bytes", "other-size", "short-range", "whole-object", "other-etag"])
async def test_an_answer_that_is_not_the_range_is_an_error(
    store_with: Callable[..., Store], answer: Answer, problem: str
) -> None:
    with pytest.raises(ReadbackError, match=problem) as caught:
        await read_back(store_with(answer))
    assert isinstance(caught.value, StorageError) and caught.value.code == ""


async def test_a_body_cut_short_is_an_error(store_with: Callable[..., Store]) -> None:
    # The third range's head promises 1,024 bytes; 100 come and the store hangs up.
    store = store_with(lambda s, e: HangUp(ok(s, e)[:-924]) if s == 2048 else ok(s, e))
    with pytest.raises(ReadbackError, match="ended the answer after 100 of 1024 bytes from 2048"):
        await read_back(store)


async def test_a_store_that_hangs_up_is_an_error(store_with: Callable[..., Store]) -> None:
    # The third range goes on a kept-alive connection: asked again once on a new one, then an error.
    store = store_with(lambda s, e: HangUp() if s == 2048 else ok(s, e))
    with pytest.raises(ReadbackError, match="failed"):
        await read_back(store)
    assert store.ranges.count((2048, 3071)) == 2


async def test_an_error_answer_keeps_the_stores_code(store_with: Callable[..., Store]) -> None:
    xml = b"<?xml version='1.0'?><Error><Code>SlowDown</Code><Message>Reduce your rate</Message></Error>"

    def answer(start: int, end: int) -> bytes:
        if start < 1024:
            return ok(start, end)
        return b"HTTP/1.1 503 Slow Down\r\nContent-Length: %d\r\n\r\n%s" % (len(xml), xml)

    with pytest.raises(ReadbackError) as caught:
        await read_back(store_with(answer))
    assert caught.value.code == "SlowDown" and "503" in str(caught.value)


async def test_a_stopped_store_is_an_error(store_with: Callable[..., Store]) -> None:
    store = store_with(ok)
    store.stop()
    with pytest.raises(ReadbackError, match="failed"):
        await read_back(store)


async def test_cancelling_ends_a_blocked_read_at_once(store_with: Callable[..., Store]) -> None:
    # The head of the first range and half its body, then nothing (the read timeout is 30 s).
    store = store_with(lambda s, e: ok(s, e)[:-512])
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_back, store)
            await trio.to_thread.run_sync(store.answered.wait)
            scope.cancel()
    assert scope.cancelled_caught


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No proxy, CA bundle or profile from the machine's environment; returns the AWS config file
    (absent until a test writes it)."""
    for name in ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "AWS_PROFILE", "AWS_ENDPOINT_URL_S3", *PROXY_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    config_file = tmp_path / "aws-config"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config_file))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    for name, value in {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    return config_file


PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "no_proxy",
                   "all_proxy")


@pytest.mark.parametrize("way", ["AWS_CA_BUNDLE", "profile", "REQUESTS_CA_BUNDLE"])
async def test_tls_is_verified_as_the_boto3_client_verifies(
    store_with: Callable[..., Store], certificate: tuple[Path, Path], clean_env: Path, monkeypatch: pytest.MonkeyPatch,
    way: str,
) -> None:
    cert, key = certificate
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    store = store_with(ok, server_side)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"https://127.0.0.1:{store.port}")
    # The client trusts certifi's authorities only, so this reader does too: refused.
    untrusting = ObjectReader.for_connection(make_client()[1])
    with pytest.raises(ReadbackError, match="certificate not trusted"):
        await read_back(store, reader=untrusting)
    # The store's own CA given to boto3 is what the reader trusts too.
    if way == "profile":
        await trio.Path(clean_env).write_text(f"[default]\nca_bundle = {cert}\n")
    else:
        monkeypatch.setenv(way, str(cert))
    _, connection = make_client()
    assert connection.ca_certs == str(cert)
    trusting = ObjectReader.for_connection(connection)
    trusting.range_bytes, trusting.in_flight = 1024, 2
    assert await read_back(store, reader=trusting) == hashlib.sha256(DATA).hexdigest()


# --- what the reader follows of the client: connection_settings, and what the reader decides ----

ENDPOINT = "https://store.example:9443"
PROXY = "http://proxy.example:3128"


def made(config: dict[str, Any] | None = None, verify: bool | str | None = None,
         endpoint: str = ENDPOINT) -> tuple[Any, ConnectionSettings]:
    """A client made by boto3 (path-style, with ``Config(**config)`` and ``verify`` as given), and
    its settings."""
    import boto3
    import botocore.session
    from botocore.config import Config

    session = botocore.session.get_session()
    client = boto3.session.Session(botocore_session=session).client(
        "s3", endpoint_url=endpoint, config=Config(**{"s3": {"addressing_style": "path"}, **(config or {})}),
        verify=verify)
    return client, connection_settings(client, session, verify)


#: (environment, Config, verify, endpoint) -> the CA bundle (None: botocore's), the proxy, whether the
#: reader is made or what it says instead.
CASES: dict[str, tuple[dict[str, str], dict[str, Any], bool | str | None, str, str | None, str | None, str]] = {
    "default": ({}, {}, None, ENDPOINT, None, None, "reader"),
    "plain-http": ({}, {}, None, "http://store.example:8333", None, None, "reader"),
    "AWS_CA_BUNDLE": ({"AWS_CA_BUNDLE": "/etc/aws-ca.pem"}, {}, None, ENDPOINT, "/etc/aws-ca.pem", None,
                      "does not load"),
    "REQUESTS_CA_BUNDLE": ({"REQUESTS_CA_BUNDLE": "/etc/req-ca.pem"}, {}, None, ENDPOINT, "/etc/req-ca.pem", None,
                           "does not load"),
    "AWS_CA_BUNDLE-first": ({"AWS_CA_BUNDLE": "/etc/aws-ca.pem", "REQUESTS_CA_BUNDLE": "/etc/req-ca.pem"}, {}, None,
                            ENDPOINT, "/etc/aws-ca.pem", None, "does not load"),
    "profile-ca_bundle": ({}, {}, None, ENDPOINT, "/etc/profile-ca.pem", None, "does not load"),
    "verify-given": ({"AWS_CA_BUNDLE": "/etc/aws-ca.pem"}, {}, "/etc/given-ca.pem", ENDPOINT, "/etc/given-ca.pem",
                     None, "does not load"),
    "verify-off": ({}, {}, False, ENDPOINT, "", None, "does not verify"),
    "verify-off-plain-http": ({}, {}, False, "http://store.example:8333", "", None, "reader"),
    "HTTPS_PROXY": ({"HTTPS_PROXY": PROXY}, {}, None, ENDPOINT, None, PROXY, "proxy http://proxy.example:3128"),
    "https_proxy": ({"https_proxy": PROXY}, {}, None, ENDPOINT, None, PROXY, "proxy"),
    "HTTPS_PROXY-credentials": ({"HTTPS_PROXY": "http://ada:hunter2@proxy.example:3128"}, {}, None, ENDPOINT, None,
                                "http://ada:hunter2@proxy.example:3128", "proxy http://proxy.example:3128"),
    "HTTP_PROXY-https": ({"HTTP_PROXY": PROXY}, {}, None, ENDPOINT, None, None, "reader"),
    "HTTP_PROXY-http": ({"HTTP_PROXY": PROXY}, {}, None, "http://store.example:8333", None, PROXY, "proxy"),
    "NO_PROXY": ({"HTTPS_PROXY": PROXY, "NO_PROXY": "store.example"}, {}, None, ENDPOINT, None, None, "reader"),
    "NO_PROXY-other": ({"HTTPS_PROXY": PROXY, "NO_PROXY": "other.example"}, {}, None, ENDPOINT, None, PROXY, "proxy"),
    "config-proxies": ({}, {"proxies": {"https": PROXY}}, None, ENDPOINT, None, PROXY, "proxy"),
    "config-proxies-first": ({"HTTPS_PROXY": PROXY}, {"proxies": {}}, None, ENDPOINT, None, None, "reader"),
    "client-cert": ({}, {"client_cert": "/etc/client.pem"}, None, ENDPOINT, None, None, "certificate of its own"),
    "not-http": ({}, {}, None, "ftp://store.example", None, None, "not an http(s) endpoint"),
    "virtual-hosted": ({}, {"s3": {"addressing_style": "virtual"}}, None, ENDPOINT, None, None, "host name"),
    "auto-addressing": ({}, {"s3": {"addressing_style": "auto"}}, None, ENDPOINT, None, None, "host name"),
}


def given(case: str, config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment (and AWS config file) of ``case``."""
    for name, value in CASES[case][0].items():
        monkeypatch.setenv(name, value)
    if case.startswith("profile"):
        config_file.write_text("[default]\nca_bundle = /etc/profile-ca.pem\n")


@pytest.mark.parametrize("case", list(CASES))
def test_the_reader_follows_the_clients_connection(clean_env: Path, monkeypatch: pytest.MonkeyPatch,
                                                   case: str) -> None:
    from botocore.httpsession import get_cert_path

    _, config, verify, endpoint, ca_certs, proxy, decision = CASES[case]
    given(case, clean_env, monkeypatch)
    if endpoint.startswith("ftp:"):  # botocore refuses such a client: the settings alone
        connection = ConnectionSettings(endpoint, True, True, str(get_cert_path(True)), None, False, 60, 60)
    else:
        client, connection = made(config, verify, endpoint)
        assert connection.endpoint_url == client.meta.endpoint_url == endpoint
    assert connection.ca_certs == (str(get_cert_path(True)) if ca_certs is None else ca_certs)
    assert connection.verify is (verify is not False)
    assert connection.proxy == proxy
    assert connection.client_cert is ("client_cert" in config)
    assert connection.path_style is ("s3" not in config)
    if decision == "reader":
        reader = ObjectReader.for_connection(connection)
        assert (reader.host, reader.port) == (urlsplit(endpoint).hostname, urlsplit(endpoint).port)
        assert (reader.context is not None) is endpoint.startswith("https:")
        if reader.context is not None:
            assert reader.context.verify_mode == ssl.CERT_REQUIRED and reader.context.check_hostname
    else:
        with pytest.raises(ValueError, match=re.escape(decision)) as caught:
            ObjectReader.for_connection(connection)
        assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("case", [case for case in CASES if not CASES[case][3].startswith("ftp:")])
def test_connection_settings_are_what_botocore_configured(clean_env: Path, monkeypatch: pytest.MonkeyPatch,
                                                          case: str) -> None:
    """``connection_settings`` resolves the trust and the proxy again, from public configuration,
    as botocore does: here checked against what botocore actually gave the client's HTTP session.

    The one place private botocore attributes are read, on purpose: when a botocore release
    changes how it resolves them (or renames them), this test fails, rather than the server
    reaching the store otherwise than its client does."""
    from botocore.httpsession import get_cert_path

    _, config, verify, *_ = CASES[case]
    given(case, clean_env, monkeypatch)
    client, connection = made(config, verify, CASES[case][3])
    http_session = client._endpoint.http_session
    assert connection.verify is bool(http_session._verify)
    if connection.verify:
        assert connection.ca_certs == get_cert_path(http_session._verify)
    assert bool(connection.proxy) is bool(http_session._proxy_config.proxy_url_for(connection.endpoint_url))
    assert connection.client_cert is (http_session._cert_file is not None)
    timeout = http_session._timeout
    assert (connection.connect_timeout, connection.read_timeout) == (timeout.connect_timeout, timeout.read_timeout)
    # What the reader relies on: path-style URLs are signed for the endpoint's host, virtual-hosted
    # ones not ("auto" is taken as not path-style, though botocore signs a custom endpoint's by path).
    signed = client.generate_presigned_url("get_object", Params={"Bucket": "bucket", "Key": "k"}, ExpiresIn=60)
    if connection.path_style or case == "virtual-hosted":
        assert (urlsplit(signed).netloc == urlsplit(connection.endpoint_url).netloc) is connection.path_style


def test_make_client_says_how_its_client_reaches_the_store(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:8333")
    from botocore.httpsession import get_cert_path

    client, connection = make_client()
    assert connection == ConnectionSettings("http://127.0.0.1:8333", True, True, get_cert_path(True), None, False,
                                            10, 120)
    assert connection.endpoint_url == client.meta.endpoint_url
    monkeypatch.setenv("HTTP_PROXY", PROXY)
    assert make_client()[1].proxy == PROXY  # boto3 goes through the proxy, so the reader cannot follow
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert make_client()[1].proxy is None
    # No endpoint (AWS itself): buckets by host name, which the reader does not follow.
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    aws = make_client()[1]
    assert aws.endpoint_url.startswith("https://") and aws.path_style is False


def test_a_storage_whose_reader_cannot_follow_the_client_says_why(clean_env: Path, tmp_path: Path) -> None:
    client, connection = made()
    location = S3Location.parse("s3://bucket/prefix")
    with structlog.testing.capture_logs() as logs:
        assert S3Storage(client, location, tmp_path, connection=connection)._reader is not None
    assert logs == []
    proxied = dataclasses.replace(connection, proxy="http://ada:hunter2@proxy.example:3128")
    for settings, reason in ((proxied, "the client's requests go through the proxy http://proxy.example:3128"),
                             (None, "the client was given without its connection settings")):
        with structlog.testing.capture_logs() as logs:
            assert S3Storage(client, location, tmp_path, connection=settings)._reader is None
        assert logs == [{"event": "storage.readback_through_boto3", "log_level": "warning", "reason": reason}]
