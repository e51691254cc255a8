"""The one in-memory repository the engines' tests run against: it fulfils
``dataeraid.engine.repository.Repository`` (test_engine_contract.py holds it to that),
keeps what it was sent, and answers as the repository's directory storage does
(prefix digests checked where the parts before are at hand).

Faults are switched on by name (``fail_put_once``, ``wrong_ack_once``,
``forget_before``, ``cut_at``); ``after`` holds an event back until another one
happened (``{"1 acked": "2 put"}``), so that an order the engine must allow is tested
as such, not as a race against the clock. What happened is in ``events``, ``bodies``,
``targets`` and ``ranges``.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from dataeraid.engine.bulk_http import Body, Burst, Charge
from dataeraid.errors import DataeraiError, TransientError


def _etag(data: bytes | bytearray) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


#: Where the fake's own part endpoint lives (``is_own_part_url``).
OWN_PARTS = "http://repo.test/api/v1/uploads/"

#: A cap on a wait for another event (``after``): reached only when the order under test is broken.
SAFETY_NET_SECONDS = 30.0


class _Collected:
    """An outlet that keeps what a part's body hands it."""

    def __init__(self) -> None:
        self.data = bytearray()

    def sendfile(self, fd: int, offset: int, count: int) -> int:
        got = os.pread(fd, count, offset)
        self.data += got
        return len(got)

    def sendall(self, data: bytes | memoryview) -> None:
        self.data += data


@dataclass
class _Session:
    upload_id: str
    body: dict[str, Any]
    part_size: int
    size: int
    state: str = "open"
    parts: dict[int, bytes] = field(default_factory=dict)
    result: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        parts = [{"number": n, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                 for n, data in sorted(self.parts.items())]
        count = max(1, -(-self.size // self.part_size))
        return {"upload_id": self.upload_id, "state": self.state, "part_count": count, "parts": parts,
                "part_digests": ["sha256", "prefix_sha256"], "result": self.result}


@dataclass
class _Content:
    asset_id: str
    content_id: str
    data: bytes
    file_name: str
    files: list[dict[str, Any]] | None

    def target(self) -> dict[str, Any]:
        target: dict[str, Any] = {"url": f"http://repo.test/content/{self.content_id}", "asset_id": self.asset_id,
                                  "content_id": self.content_id, "size": len(self.data),
                                  "sha256": hashlib.sha256(self.data).hexdigest(), "file_name": self.file_name}
        if self.files is not None:
            target["files"] = self.files
        return target


class FakeRepository:
    def __init__(self, *, own_part_urls: bool = True, fail_put_once: set[int] | None = None,
                 wrong_ack_once: set[int] | None = None, forget_before: set[int] | None = None,
                 cut_at: set[int] | None = None, after: dict[str, str] | None = None,
                 read_block: int = 8 * 1024, bulk_reads: bool = False, bulk_puts: bool = False) -> None:
        self.own_part_urls = own_part_urls
        #: Part bodies come from the engine's files (``put_part_from``), as the daemon's raw
        #: HTTP path sends them; else only through ``put_part``, as behind a proxy.
        self.bulk_puts = bulk_puts
        #: What the engine gave ``put_part_from`` last to size its slices by (the job's limit).
        self.burst: Burst | None = None
        #: Ranges go straight into the engine's files (``read_range_into``), as the daemon's
        #: raw HTTP path does; else only through ``read_range``, as behind a proxy.
        self.bulk_reads = bulk_reads
        #: Parts whose first body fails half-way (a reset connection).
        self.fail_put_once = set(fail_put_once or ())
        #: Parts whose first acknowledgement names another digest (damaged bytes).
        self.wrong_ack_once = set(wrong_ack_once or ())
        #: Parts acknowledged as if the parts before were not at hand (after a restart): no prefix digest.
        self.forget_before = set(forget_before or ())
        #: Stream offsets where a range read is cut off, once each.
        self.cut_at = set(cut_at or ())
        self.after = dict(after or {})
        self.read_block = read_block
        self.events: list[str] = []
        #: The ETags each completion was told (None where it was told none).
        self.told_etags: list[dict[int, str] | None] = []
        #: A completion takes ``parts`` (else it refuses them, as a repository from before them).
        self.takes_told_parts = True
        self.bodies: list[dict[str, Any]] = []
        self.targets: list[tuple[int, bool]] = []
        self.ranges: list[tuple[int, int]] = []
        self.cuts: list[int] = []
        self.sessions: dict[str, _Session] = {}
        self.contents: dict[str, _Content] = {}
        self._ids = itertools.count(1)
        self._challenges: dict[str, tuple[str, str, list[dict[str, int]]]] = {}
        self._recorded = trio.Event()

    # --- setting up -----------------------------------------------------------------

    def add_content(self, data: bytes, *, asset_id: str = "ast_1", file_name: str = "f.bin",
                    files: dict[str, bytes] | None = None) -> dict[str, Any]:
        """A content ``asset_id`` holds from now on (its latest); its download target.
        ``files``: a directory's files in stream order, whose bytes ``data`` is."""
        listed = None
        if files is not None:
            listed, offset = [], 0
            for path, body in files.items():
                listed.append({"path": path, "offset": offset, "size": len(body),
                               "sha256": hashlib.sha256(body).hexdigest()})
                offset += len(body)
        content = _Content(asset_id, f"cnt_{next(self._ids):08d}", data, file_name, listed)
        self.contents[asset_id] = content
        return content.target()

    async def _record(self, event: str) -> None:
        awaited = self.after.get(event)
        if awaited is not None:
            with trio.move_on_after(SAFETY_NET_SECONDS):
                while awaited not in self.events:
                    await self._recorded.wait()
        self.events.append(event)
        self._recorded.set()
        self._recorded = trio.Event()

    def _session(self, upload_id: str) -> _Session:
        session = self.sessions.get(upload_id)
        if session is None:
            raise DataeraiError("not_found", f"no upload session {upload_id}")
        return session

    # --- uploads --------------------------------------------------------------------

    async def create_upload(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self.bodies.append(dict(body))
        for session in self.sessions.values():
            if session.body.get("idempotency_key") == body.get("idempotency_key"):
                return session.to_json()
        upload_id = f"upl_{next(self._ids):08d}"
        session = _Session(upload_id, dict(body), int(body["part_size"]), int(body["size"]))
        self.sessions[upload_id] = session
        return session.to_json()

    async def get_upload(self, upload_id: str) -> dict[str, Any]:
        return self._session(upload_id).to_json()

    async def part_target(self, upload_id: str, number: int, sha256: str, size: int, *,
                          prefix: bool = False) -> dict[str, Any]:
        self._session(upload_id)
        self.targets.append((number, prefix))
        return {"url": f"{OWN_PARTS}{upload_id}/parts/{number}", "method": "PUT", "upload_id": upload_id,
                "number": number, "sha256": sha256, "prefix": prefix, "size": size}

    def is_own_part_url(self, url: str) -> bool:
        return self.own_part_urls and url.startswith(OWN_PARTS)

    async def put_part(self, target: Mapping[str, Any], body: AsyncIterator[bytes], what: str) -> dict[str, Any]:
        session, number = self._session(target["upload_id"]), int(target["number"])
        await self._record(f"{number} put")
        received = bytearray()
        async for block in body:
            if number in self.fail_put_once:
                self.fail_put_once.discard(number)
                await self._record(f"{number} failed")
                raise TransientError(f"{what}: connection reset")
            received += block
            await trio.lowlevel.checkpoint()
        if session.state != "open":
            raise DataeraiError("conflict", f"{what}: the session is {session.state}")
        session.parts[number] = bytes(received)
        await self._record(f"{number} sent")
        own = hashlib.sha256(received).hexdigest()
        ack: dict[str, Any] = {"size": len(received), "sha256": own}
        if not self.own_part_urls:  # a store's answer: the part's ETag
            ack["etag"] = _etag(received)
        if target["prefix"]:
            before = [session.parts.get(n) for n in range(1, number)]
            ack["prefix_sha256"] = None
            if number not in self.forget_before and all(p is not None for p in before):
                ack["prefix_sha256"] = hashlib.sha256(b"".join([*before, received])).hexdigest()  # type: ignore[list-item]
        if number in self.wrong_ack_once:
            self.wrong_ack_once.discard(number)
            ack = {"size": len(received), "sha256": "0" * 64, "prefix_sha256": "0" * 64 if target["prefix"] else None}
        await self._record(f"{number} acked")  # after the server's fsync and publication
        return ack

    async def put_part_from(self, target: Mapping[str, Any], length: int, body: Body, charge: Charge, what: str,
                            sent: Callable[[], None] | None = None, *,
                            burst: Burst | None = None) -> dict[str, Any] | None:
        if not self.bulk_puts:
            return None
        self.burst = burst

        async def blocks() -> AsyncIterator[bytes]:
            done = 0
            while done < length:
                n = min(self.read_block, length - done)
                await charge(n)
                out = _Collected()
                await trio.to_thread.run_sync(body, done, n, out)
                assert len(out.data) == n, "the body handed over other than the bytes asked for"
                done += n
                yield bytes(out.data)
            if sent is not None:
                sent()

        return await self.put_part(target, blocks(), what)

    async def complete_upload(self, upload_id: str, idempotency_key: str, sha256: str, *,
                              file_sha256: list[str] | None = None,
                              etags: Mapping[int, str] | None = None) -> dict[str, Any]:
        session = self._session(upload_id)
        self.told_etags.append(None if etags is None else dict(etags))
        if etags is not None and not self.takes_told_parts:  # as a repository from before told parts
            raise DataeraiError("invalid_argument", "completing the upload: unknown field(s): parts", field="parts",
                                unknown_fields=["parts"])
        if etags is not None:  # as the store checks them
            assert etags == {n: _etag(data) for n, data in session.parts.items()}, "ETags other than the store's"
        if session.result is not None:
            return session.result
        data = b"".join(data for _, data in sorted(session.parts.items()))
        if hashlib.sha256(data).hexdigest() != sha256:
            raise DataeraiError("checksum_mismatch", "completing the upload: the parts hash to another digest")
        return self._commit(session, data)

    def _commit(self, session: _Session, data: bytes) -> dict[str, Any]:
        asset_id = session.body.get("asset_id") or f"ast_{next(self._ids):08d}"
        target = self.add_content(data, asset_id=asset_id, file_name=str(session.body.get("file_name")))
        session.state = "completed"
        session.result = {"asset_id": asset_id, "content_id": target["content_id"], "sha256": target["sha256"]}
        return session.result

    async def dedup_challenge(self, upload_id: str, sha256: str) -> dict[str, Any]:
        # Made whether or not such a content is held, as the repository does: the answer tells nothing.
        size = self._session(upload_id).size
        ranges = [{"offset": at, "length": min(size - at, 4096)} for at in (0, size // 2)]
        challenge_id = f"chl_{next(self._ids):08d}"
        self._challenges[challenge_id] = (upload_id, sha256, ranges)
        return {"challenge_id": challenge_id, "ranges": ranges}

    async def dedup_prove(self, upload_id: str, challenge_id: str, digests: list[str], idempotency_key: str, *,
                          file_sha256: list[str] | None = None) -> dict[str, Any]:
        session = self._session(upload_id)
        if session.result is not None:
            return session.result
        _, sha256, ranges = self._challenges.pop(challenge_id)
        held = next((c.data for c in self.contents.values()
                     if hashlib.sha256(c.data).hexdigest() == sha256 and len(c.data) == session.size), None)
        if held is None or digests != [hashlib.sha256(held[r["offset"]:r["offset"] + r["length"]]).hexdigest()
                                       for r in ranges]:
            raise DataeraiError("conflict", "proving possession: no match", reason="no_match")
        return self._commit(session, held)

    async def abort_upload(self, upload_id: str) -> None:
        session = self._session(upload_id)
        session.state = "aborted"
        session.parts.clear()

    # --- downloads ------------------------------------------------------------------

    async def download_target(self, asset_id: str, content_id: str | None) -> dict[str, Any]:
        content = self.contents.get(asset_id)
        if content is None or content_id not in (None, content.content_id):
            raise DataeraiError("not_found", f"asking where to read asset {asset_id}: no such content")
        return content.target()

    async def read_range(self, target: Mapping[str, Any], start: int, length: int,
                         what: str) -> AsyncIterator[bytes]:
        content = next(c for c in self.contents.values() if c.content_id == target["content_id"])
        self.ranges.append((start, length))
        at, end = start, start + length
        while at < end:
            await trio.lowlevel.checkpoint()  # another range's turn: ranges interleave
            stop = min(at + self.read_block, end)
            cut = next((c for c in sorted(self.cut_at) if at <= c < stop), None)
            if cut is not None:
                if cut > at:
                    yield content.data[at:cut]
                self.cut_at.discard(cut)
                self.cuts.append(cut)
                raise TransientError(f"{what}: connection reset")
            yield content.data[at:stop]
            at = stop

    async def read_range_into(self, target: Mapping[str, Any], start: int, length: int,
                              write: Callable[[int, memoryview], None], landed: Callable[[int], Awaitable[None]],
                              what: str) -> bool:
        if not self.bulk_reads:
            return False
        at = start
        await landed(0)  # the answer's head, as the raw HTTP path reports it before the first slice
        async for block in self.read_range(target, start, length, what):
            await trio.to_thread.run_sync(write, at, memoryview(block))
            at += len(block)
            await landed(len(block))
        return True
