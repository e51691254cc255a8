"""What the engines need of the repository: the contract :class:`dataeraid.remote.Remote`
fulfils over HTTP, and the tests' in-memory repository (``tests/daemon/fake_repository.py``)
fulfils in memory.

Every method raises the daemon's errors, never HTTP's: :class:`~dataeraid.errors.TransientError`
for what a retry may mend (the network, a timeout, 5xx, 429, with ``retry_after``),
:class:`~dataeraid.errors.AuthProblem` for missing or refused credentials,
:class:`~dataeraid.errors.TargetExpired` for a signed URL that expired, and
:class:`~dataeraid.errors.DataeraiError` with its catalogue code for the rest.
Sessions, targets and answers are the JSON objects of docs/http-api.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from dataeraid.engine.bulk_http import Body, Burst, Charge


class Repository(Protocol):
    # --- uploads ----------------------------------------------------------------

    async def create_upload(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """A new upload session for ``body`` (its ``idempotency_key`` hands back the session
        made with the same key)."""
        ...

    async def get_upload(self, upload_id: str) -> dict[str, Any]:
        """The session, with the parts it holds: the truth about parts (``not_found`` once gone)."""
        ...

    async def part_target(self, upload_id: str, number: int, sha256: str, size: int, *,
                          prefix: bool = False) -> dict[str, Any]:
        """Where to send part ``number``, with its digest signed in: its own SHA-256, or with
        ``prefix`` its prefix digest (the content's SHA-256 through the part's end)."""
        ...

    def is_own_part_url(self, url: str) -> bool:
        """Whether ``url`` is the repository's own part endpoint (not an object store's URL)."""
        ...

    async def put_part(self, target: Mapping[str, Any], body: AsyncIterator[bytes], what: str) -> dict[str, Any]:
        """Stream ``body`` to a part target; the acknowledgement (``size``, ``sha256``, and
        ``prefix_sha256`` where the target took a prefix digest)."""
        ...

    async def put_part_from(self, target: Mapping[str, Any], length: int, body: Body, charge: Charge, what: str,
                            sent: Callable[[], None] | None = None, *,
                            burst: Burst | None = None) -> dict[str, Any] | None:
        """As :meth:`put_part`, but the ``length`` bytes come from ``body(offset, length,
        outlet)`` (run in a worker thread, slice after slice, in order; it puts the bytes
        into ``outlet``, :class:`~dataeraid.engine.bulk_http.Outlet`), ``await charge(n)``
        before each slice goes (each as large as ``burst()``, the job's bandwidth limit, lets
        it be: :func:`~dataeraid.engine.bulk_http.send_slice_bytes`), and ``sent()`` once the
        whole body went. Bytes charged
        before an error may not have arrived. None, with nothing sent, where only
        :meth:`put_part` can send to this target (a proxy, an unusual URL)."""
        ...

    async def complete_upload(self, upload_id: str, idempotency_key: str, sha256: str, *,
                              file_sha256: list[str] | None = None,
                              etags: Mapping[int, str] | None = None) -> dict[str, Any]:
        """Commit the parts as the content ``sha256``; the new asset content version.
        ``etags``: every part's ETag, where each went straight to an object store that
        answered one (the repository then need not ask the store which parts it holds)."""
        ...

    async def dedup_challenge(self, upload_id: str, sha256: str) -> dict[str, Any]:
        """A proof-of-possession challenge for completing ``upload_id`` with held content ``sha256``."""
        ...

    async def dedup_prove(self, upload_id: str, challenge_id: str, digests: list[str], idempotency_key: str, *,
                          file_sha256: list[str] | None = None) -> dict[str, Any]:
        """Answer a challenge; the completion's result, or ``conflict`` (``reason: no_match``)."""
        ...

    async def abort_upload(self, upload_id: str) -> None:
        """Drop the session and its parts."""
        ...

    # --- downloads --------------------------------------------------------------

    async def download_target(self, asset_id: str, content_id: str | None) -> dict[str, Any]:
        """Where to read a content version (the latest without ``content_id``): its signed
        URL, ``content_id``, ``size``, ``sha256`` and, for a directory, its ``files``."""
        ...

    def read_range(self, target: Mapping[str, Any], start: int, length: int, what: str) -> AsyncIterator[bytes]:
        """Stream ``length`` bytes from ``start`` of a download target's content."""
        ...

    async def read_range_into(self, target: Mapping[str, Any], start: int, length: int,
                              write: Callable[[int, memoryview], None], landed: Callable[[int], Awaitable[None]],
                              what: str) -> bool:
        """As :meth:`read_range`, but without handing the bytes over: they go to
        ``write(offset, view)`` (``offset`` in the content; run in a worker thread, slice
        after slice, in order; ``view`` is only valid during the call), and
        ``await landed(n)`` follows each slice written. Bytes written before an error
        were reported to ``landed``. False, with nothing read, where only
        :meth:`read_range` can fetch this target (a proxy, an unusual URL)."""
        ...
