"""Bytes for the storage tests: reproducible data, digests, bodies in chunks, reads back."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

from server_harness import data_of


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


#: ``sample(size, seed)``: bytes that differ with ``seed`` and are the same on every run.
sample = data_of


async def chunks(body: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    """``body`` as a request body arrives: in pieces of ``size``."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def read_all(storage: Any, key: str, offset: int, length: int, *, max_block: int) -> bytes:
    """A range of content ``key``, checking that no block is larger than ``max_block``."""
    out = bytearray()
    async for block in storage.read_range(key, offset, length):
        assert len(block) <= max_block
        out += block
    return bytes(out)
