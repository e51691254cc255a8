"""The async twin of the client: ``from dataerai.aio import AsyncDataeraiClient``.

It mirrors ``DataeraiClient`` method for method, takes the same arguments,
returns the same models and raises the same exceptions; it works under asyncio
and under Trio, with the standard library only.

How it does I/O, and why: each call runs the blocking client's method in a
worker thread of the running event loop (``asyncio``'s default executor, or
``trio.to_thread``), detected at call time the way ``sniffio`` does, by hand.
The wire, the models and every argument check are then the blocking client's
own: one implementation, which the tests exercise twice, instead of a second
I/O stack per event loop. A blocked thread costs a few KiB of memory, and the
calls are waits on a local socket, so threads are cheap here. Concurrency comes
out of a small pool of blocking clients (each with its own connection): every
call borrows an idle one, so ``gather``-ing ten ``wait()`` calls waits for ten
jobs at once instead of one after the other.

Cancellation: when the awaiting task is cancelled (a timeout, a nursery that
ends), the borrowed client's socket is shut down, which makes the blocked call
in the thread return at once; that client is thrown away. As with the blocking
client, a job the call had started or was waiting for goes on in the daemon.

``on_progress`` and ``on_state`` callbacks run in the event loop's thread (not
the worker), so they may touch loop state; they must be plain functions, not
coroutines.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

from ._client import (
    AFTER,
    CURSOR,
    DEFAULT_REQUEST_TIMEOUT_S,
    DEFAULT_START_TIMEOUT_S,
    DEFAULT_TRANSFER_TIMEOUT_S,
    ClientState,
    DataeraiClient,
    EventStream,
    ProgressCallback,
    StateCallback,
    asset_query,
    file_of_page,
    files_query,
    watch_files_query,
)
from ._models import (
    AssetMetadata,
    AuthStatus,
    Collection,
    DownloadResult,
    Event,
    FileInfo,
    Job,
    Project,
    Relationship,
    UploadResult,
    Watch,
    WatchFile,
)

T = TypeVar("T")
_A = TypeVar("_A", bound="AsyncDataeraiClient")

__all__ = ["AsyncDataEraiClient", "AsyncDataeraiClient", "AsyncEventStream", "current_async_library"]


def current_async_library() -> str:
    """``"trio"`` or ``"asyncio"``: the event loop the calling task runs in (as ``sniffio`` would say).

    Raises ``RuntimeError`` outside of any. Trio is only looked at when it was
    imported already, so asyncio programs never import it.
    """
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            pass
        else:
            return "trio"
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError("dataerai.aio needs a running asyncio or Trio event loop") from None
    return "asyncio"


class _Loop:
    """The running event loop's two thread facilities: run a function in a worker, and call back into the loop."""

    def __init__(self) -> None:
        self.library = current_async_library()
        if self.library == "trio":
            import trio

            self._trio_token = trio.lowlevel.current_trio_token()
        else:
            import asyncio

            self._asyncio_loop = asyncio.get_running_loop()

    async def run_in_thread(self, fn: Callable[[], T], on_cancel: Callable[[], None]) -> T:
        """``fn()`` in a worker thread; if the awaiting task is cancelled, ``on_cancel()`` and re-raise."""
        if self.library == "trio":
            import trio

            # Abandoning the thread lets the cancellation through at once; on_cancel
            # makes the abandoned call return promptly instead of lingering.
            run_sync: Any = trio.to_thread.run_sync
            params = inspect.signature(run_sync).parameters
            key = "abandon_on_cancel" if "abandon_on_cancel" in params else "cancellable"  # trio < 0.23
            try:
                result: T = await run_sync(fn, **{key: True})
            except trio.Cancelled:
                on_cancel()
                raise
            return result
        import asyncio

        future = self._asyncio_loop.run_in_executor(None, fn)
        try:
            return await future
        except asyncio.CancelledError:
            on_cancel()
            raise

    def callback(self, fn: Callable[[T], object]) -> Callable[[T], None]:
        """``fn`` wrapped to run in the loop's thread when called from a worker thread."""
        if self.library == "trio":
            import trio

            token = self._trio_token

            def in_trio(arg: T) -> None:
                # Blocks the worker until the callback ran: progress gives back-pressure.
                trio.from_thread.run_sync(fn, arg, trio_token=token)

            return in_trio

        loop = self._asyncio_loop

        def in_asyncio(arg: T) -> None:
            loop.call_soon_threadsafe(fn, arg)

        return in_asyncio


class AsyncDataeraiClient:
    """The async twin of ``DataeraiClient`` (also spelled ``AsyncDataEraiClient``).

    Same constructor, same methods (``await``-ed), same models and errors; use
    ``async with AsyncDataeraiClient() as client:``. See the module docstring
    for how it runs under asyncio and Trio.
    """

    def __init__(
        self,
        *,
        socket_path: str | os.PathLike[str] | None = None,
        binary_path: str | os.PathLike[str] | None = None,
        auto_start: bool = True,
        start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
        request_timeout_s: float | None = DEFAULT_REQUEST_TIMEOUT_S,
        client_name: str | None = None,
    ) -> None:
        self._options: dict[str, Any] = {
            "socket_path": socket_path,
            "binary_path": binary_path,
            "auto_start": auto_start,
            "start_timeout_s": start_timeout_s,
            "request_timeout_s": request_timeout_s,
            "client_name": client_name,
        }
        # The first blocking client checks the arguments now, as the blocking constructor does.
        first = DataeraiClient(**self._options)
        self._socket_path = first.socket_path
        self._idle: list[DataeraiClient] = [first]
        self._busy: set[DataeraiClient] = set()
        self._pool_lock = threading.Lock()
        self._state = ClientState.UNOPENED

    # --- life -----------------------------------------------------------------

    @property
    def socket_path(self) -> str:
        return self._socket_path

    @property
    def state(self) -> ClientState:
        return self._state

    async def connect(self: _A) -> _A:
        """Connect now (starting the daemon if need be); see ``DataeraiClient.connect``."""
        await self._run(lambda c: c.connect())
        return self

    async def close(self) -> None:
        """Close every connection. Idempotent; jobs already started go on in the daemon."""
        with self._pool_lock:
            self._state = ClientState.CLOSED
            clients, self._idle = self._idle, []
            busy = list(self._busy)
        for client in busy:
            client._abort()
        for client in clients:
            client.close()

    async def __aenter__(self: _A) -> _A:
        return await self.connect()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} socket_path={self._socket_path!r} state={self._state.value}>"

    # --- the bottom: a blocking client's call in a worker thread ---------------

    def _borrow(self) -> DataeraiClient:
        with self._pool_lock:
            if self._state is ClientState.CLOSED:
                raise RuntimeError("this AsyncDataeraiClient is closed; make a new one")
            client = self._idle.pop() if self._idle else DataeraiClient(**self._options)
            self._busy.add(client)
            self._state = ClientState.OPENED
            return client

    def _give_back(self, client: DataeraiClient, usable: bool) -> None:
        """Return a borrowed client to the pool, or drop it.

        A dropped client is never ``close()``-d from here: its worker thread may
        still hold its lock, and the event loop must not block on it. It was
        aborted (its socket shut down), so that thread's call ends by itself.
        """
        with self._pool_lock:
            self._busy.discard(client)
            if usable and self._state is not ClientState.CLOSED:
                self._idle.append(client)
                return
        client._abort()

    async def _run(self, call: Callable[[DataeraiClient], T], loop: _Loop | None = None) -> T:
        loop = loop or _Loop()
        client = self._borrow()
        usable = True

        def cancel() -> None:
            nonlocal usable
            usable = False
            client._abort()

        try:
            return await loop.run_in_thread(functools.partial(call, client), cancel)
        finally:
            self._give_back(client, usable)

    def _progress(self, loop: _Loop, on_progress: ProgressCallback | None) -> ProgressCallback | None:
        return None if on_progress is None else loop.callback(on_progress)

    def _on_state(self, loop: _Loop, on_state: StateCallback | None) -> StateCallback | None:
        return None if on_state is None else loop.callback(on_state)

    # --- requests (mirroring DataeraiClient) ------------------------------------

    async def call(self, method: str, params: Mapping[str, Any] | None = None, *, timeout: float | None = None) -> Any:
        """One raw protocol request; see ``DataeraiClient.call``."""
        return await self._run(lambda c: c.call(method, params, timeout=timeout))

    async def auth_status(self) -> AuthStatus:
        return await self._run(lambda c: c.auth_status())

    async def create_project(self, name: str, *, description: str = "") -> Project:
        return await self._run(lambda c: c.create_project(name, description=description))

    async def get_metadata(self, asset_id: str) -> AssetMetadata:
        return await self._run(lambda c: c.get_metadata(asset_id))

    async def set_metadata(self, asset_id: str, **fields: Any) -> AssetMetadata:
        return await self._run(lambda c: c.set_metadata(asset_id, **fields))

    async def create_relationship(
        self,
        from_asset_id: str,
        to_asset_id: str,
        rel_type: str | None = None,
        *,
        relationship_type: str | None = None,
        analysis_mode: str | None = None,
        qualifier_note: str | None = None,
        qualifier_time: str | None = None,
        qualifiers: Mapping[str, Any] | None = None,
    ) -> Relationship:
        return await self._run(
            lambda c: c.create_relationship(
                from_asset_id,
                to_asset_id,
                rel_type,
                relationship_type=relationship_type,
                analysis_mode=analysis_mode,
                qualifier_note=qualifier_note,
                qualifier_time=qualifier_time,
                qualifiers=qualifiers,
            )
        )

    async def list_relationships(self, asset_id: str) -> list[Relationship]:
        return await self._run(lambda c: c.list_relationships(asset_id))

    async def list_projects(self) -> list[Project]:
        return await self._run(lambda c: c.list_projects())

    async def create_collection(self, project_id: str, name: str, *, parent_id: str | None = None) -> Collection:
        return await self._run(lambda c: c.create_collection(project_id, name, parent_id=parent_id))

    async def list_collections(self, project_id: str) -> list[Collection]:
        return await self._run(lambda c: c.list_collections(project_id))

    async def list_assets(
        self,
        *,
        project_id: str | None = None,
        collection_id: str | None = None,
        path_prefix: str | None = None,
        glob: str | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[AssetMetadata]:
        """``async for asset in await client.list_assets(...)``; see ``DataeraiClient.list_assets``."""
        params = asset_query(project_id, collection_id, path_prefix, glob, page_size)
        return self._pages("asset.list", params, "assets", lambda item, page: AssetMetadata.from_wire(item))

    async def delete_asset(self, asset_id: str) -> None:
        await self._run(lambda c: c.delete_asset(asset_id))

    async def get_file_info(self, asset_id: str, path: str, *, content_id: str | None = None) -> FileInfo:
        return await self._run(lambda c: c.get_file_info(asset_id, path, content_id=content_id))

    async def list_files(
        self, asset_id: str, *, prefix: str | None = None, content_id: str | None = None, page_size: int = 1000
    ) -> AsyncIterator[FileInfo]:
        """``async for f in await client.list_files(...)``; see ``DataeraiClient.list_files``."""
        return self._pages("asset.files", files_query(asset_id, prefix, content_id, page_size), "files", file_of_page)

    async def _pages(
        self,
        method: str,
        params: dict[str, Any],
        key: str,
        make: Callable[[Any, dict[str, Any]], T],
        cursor_keys: tuple[str, str] = CURSOR,
    ) -> AsyncIterator[T]:
        """``make(item, page)`` for the items of every page of ``method``, one request per page."""
        send, read = cursor_keys
        cursor: str | None = None
        while True:
            page = await self.call(method, {**params, **({send: cursor} if cursor else {})})
            for item in page.get(key, []):
                yield make(item, page)
            cursor = page.get(read)
            if not cursor:
                return

    async def get_job(self, job_id: str) -> Job:
        return await self._run(lambda c: c.get_job(job_id))

    async def list_jobs(self, states: Iterable[str] | None = None) -> list[Job]:
        return await self._run(lambda c: c.list_jobs(states))

    async def cancel(self, job_id: str) -> Job:
        return await self._run(lambda c: c.cancel(job_id))

    async def pause(self, job_id: str) -> Job:
        return await self._run(lambda c: c.pause(job_id))

    async def resume(self, job_id: str) -> Job:
        return await self._run(lambda c: c.resume(job_id))

    async def retry(self, job_id: str) -> Job:
        return await self._run(lambda c: c.retry(job_id))

    async def set_priority(self, job_id: str, priority: int) -> Job:
        return await self._run(lambda c: c.set_priority(job_id, priority))

    async def wait(
        self,
        job_id: str,
        *,
        timeout_s: float | None = None,
        on_progress: ProgressCallback | None = None,
        on_state: StateCallback | None = None,
    ) -> Job:
        """Until the job ended; see ``DataeraiClient.wait``. Cancelling the wait leaves the job running."""
        loop = _Loop()
        progress = self._progress(loop, on_progress)
        state = self._on_state(loop, on_state)
        return await self._run(
            lambda c: c.wait(job_id, timeout_s=timeout_s, on_progress=progress, on_state=state), loop
        )

    async def upload_many(self, items: Iterable[Mapping[str, Any]]) -> list[Job]:
        """Queue many uploads in one call; see ``DataeraiClient.upload_many``."""
        listed = [dict(item) if isinstance(item, Mapping) else item for item in items]
        return await self._run(lambda c: c.upload_many(listed))

    async def download_many(self, items: Iterable[Mapping[str, Any]]) -> list[Job]:
        """Queue many downloads in one call; see ``DataeraiClient.download_many``."""
        listed = [dict(item) if isinstance(item, Mapping) else item for item in items]
        return await self._run(lambda c: c.download_many(listed))

    @overload
    async def upload(
        self,
        local_path: str | os.PathLike[str],
        *,
        title: str | None = None,
        owner_type: str | None = None,
        owner_id: str | None = None,
        description: str | None = None,
        alias: str | None = None,
        tags: Iterable[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        collection_id: str | None = None,
        asset_id: str | None = None,
        path: str | None = None,
        chunk_size_mb: int | None = None,
        on_progress: ProgressCallback | None = None,
        on_state: StateCallback | None = None,
        transfer_timeout_s: float | None = DEFAULT_TRANSFER_TIMEOUT_S,
        wait: Literal[True] = True,
        priority: int = 0,
        window: str | None = None,
    ) -> UploadResult: ...

    @overload
    async def upload(
        self,
        local_path: str | os.PathLike[str],
        *,
        title: str | None = None,
        owner_type: str | None = None,
        owner_id: str | None = None,
        description: str | None = None,
        alias: str | None = None,
        tags: Iterable[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        collection_id: str | None = None,
        asset_id: str | None = None,
        path: str | None = None,
        chunk_size_mb: int | None = None,
        on_progress: ProgressCallback | None = None,
        on_state: StateCallback | None = None,
        transfer_timeout_s: float | None = DEFAULT_TRANSFER_TIMEOUT_S,
        wait: Literal[False],
        priority: int = 0,
        window: str | None = None,
    ) -> Job: ...

    async def upload(
        self,
        local_path: str | os.PathLike[str],
        *,
        title: str | None = None,
        owner_type: str | None = None,
        owner_id: str | None = None,
        description: str | None = None,
        alias: str | None = None,
        tags: Iterable[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        collection_id: str | None = None,
        asset_id: str | None = None,
        path: str | None = None,
        chunk_size_mb: int | None = None,
        on_progress: ProgressCallback | None = None,
        on_state: StateCallback | None = None,
        transfer_timeout_s: float | None = DEFAULT_TRANSFER_TIMEOUT_S,
        wait: bool = True,
        priority: int = 0,
        window: str | None = None,
    ) -> UploadResult | Job:
        """Upload a file or directory as a new asset or a new version of one; see ``DataeraiClient.upload``."""
        loop = _Loop()
        progress = self._progress(loop, on_progress)
        return await self._run(
            lambda c: c.upload(
                local_path,
                title=title,
                owner_type=owner_type,
                owner_id=owner_id,
                description=description,
                alias=alias,
                tags=tags,
                metadata=metadata,
                collection_id=collection_id,
                asset_id=asset_id,
                path=path,
                chunk_size_mb=chunk_size_mb,
                on_progress=progress,
                on_state=self._on_state(loop, on_state),
                transfer_timeout_s=transfer_timeout_s,
                wait=wait,
                priority=priority,
                window=window,
            ),
            loop,
        )

    @overload
    async def download(
        self,
        asset_id: str,
        dest_dir: str | os.PathLike[str],
        *,
        content_id: str | None = None,
        overwrite: bool = False,
        on_progress: ProgressCallback | None = None,
        on_state: StateCallback | None = None,
        transfer_timeout_s: float | None = DEFAULT_TRANSFER_TIMEOUT_S,
        wait: Literal[True] = True,
        priority: int = 0,
        window: str | None = None,
    ) -> DownloadResult: ...

    @overload
    async def download(
        self,
        asset_id: str,
        dest_dir: str | os.PathLike[str],
        *,
        content_id: str | None = None,
        overwrite: bool = False,
        on_progress: ProgressCallback | None = None,
        on_state: StateCallback | None = None,
        transfer_timeout_s: float | None = DEFAULT_TRANSFER_TIMEOUT_S,
        wait: Literal[False],
        priority: int = 0,
        window: str | None = None,
    ) -> Job: ...

    async def download(
        self,
        asset_id: str,
        dest_dir: str | os.PathLike[str],
        *,
        content_id: str | None = None,
        overwrite: bool = False,
        on_progress: ProgressCallback | None = None,
        on_state: StateCallback | None = None,
        transfer_timeout_s: float | None = DEFAULT_TRANSFER_TIMEOUT_S,
        wait: bool = True,
        priority: int = 0,
        window: str | None = None,
    ) -> DownloadResult | Job:
        """Download an asset's content; see ``DataeraiClient.download``."""
        loop = _Loop()
        progress = self._progress(loop, on_progress)
        return await self._run(
            lambda c: c.download(
                asset_id,
                dest_dir,
                content_id=content_id,
                overwrite=overwrite,
                on_progress=progress,
                on_state=self._on_state(loop, on_state),
                transfer_timeout_s=transfer_timeout_s,
                wait=wait,
                priority=priority,
                window=window,
            ),
            loop,
        )

    async def list_events(
        self,
        since: int = 0,
        jobs: Iterable[str] | None = None,
        types: Iterable[str] | None = None,
        *,
        limit: int = 1000,
    ) -> list[Event]:
        return await self._run(lambda c: c.list_events(since, jobs, types, limit=limit))

    async def add_watch(
        self,
        root: str | os.PathLike[str],
        *,
        project_id: str,
        collection_id: str | None = None,
        prefix: str | None = None,
        complete_when: str | None = None,
        after_upload: str = "keep",
        excludes: Iterable[str] | None = None,
        default_excludes: bool = True,
        tags: Iterable[str] | None = None,
        metadata_template: Mapping[str, Any] | str | os.PathLike[str] | None = None,
        priority: int = 0,
        rescan_interval_s: float | None = None,
        force_polling: bool = False,
        free_space_below: str | None = None,
        window: str | None = None,
        watch_id: str | None = None,
    ) -> Watch:
        """Watch a directory; see ``DataeraiClient.add_watch``."""
        return await self._run(
            lambda c: c.add_watch(
                root,
                project_id=project_id,
                collection_id=collection_id,
                prefix=prefix,
                complete_when=complete_when,
                after_upload=after_upload,
                excludes=excludes,
                default_excludes=default_excludes,
                tags=tags,
                metadata_template=metadata_template,
                priority=priority,
                window=window,
                rescan_interval_s=rescan_interval_s,
                force_polling=force_polling,
                free_space_below=free_space_below,
                watch_id=watch_id,
            )
        )

    async def list_watches(self) -> list[Watch]:
        return await self._run(lambda c: c.list_watches())

    async def get_watch(self, watch_id: str) -> Watch:
        return await self._run(lambda c: c.get_watch(watch_id))

    async def watch_files(
        self, watch_id: str, *, states: Iterable[str] | None = None, page_size: int = 1000
    ) -> AsyncIterator[WatchFile]:
        """``async for f in await client.watch_files(...)``; see ``DataeraiClient.watch_files``."""
        params = watch_files_query(watch_id, states, page_size)
        return self._pages("watch.files", params, "files", lambda item, page: WatchFile.from_wire(item), AFTER)

    async def pause_watch(self, watch_id: str) -> Watch:
        return await self._run(lambda c: c.pause_watch(watch_id))

    async def resume_watch(self, watch_id: str) -> Watch:
        return await self._run(lambda c: c.resume_watch(watch_id))

    async def rescan_watch(self, watch_id: str) -> Watch:
        return await self._run(lambda c: c.rescan_watch(watch_id))

    async def remove_watch(self, watch_id: str) -> None:
        await self._run(lambda c: c.remove_watch(watch_id))

    async def events(
        self, since: int | None = None, jobs: Iterable[str] | None = None, types: Iterable[str] | None = None
    ) -> AsyncEventStream:
        """Subscribe and return an async iterator of events; see ``DataeraiClient.events``.

        ``async with await client.events(...) as stream: async for event in stream: ...``.
        The stream has a connection of its own, so other calls go on meanwhile.
        """
        client = self._borrow()
        loop = _Loop()
        try:
            stream = await loop.run_in_thread(lambda: client.events(since, jobs, types), client._abort)
        except BaseException:
            self._give_back(client, False)
            raise
        return AsyncEventStream(self, client, stream, loop)


class AsyncEventStream:
    """``AsyncDataeraiClient.events()``: the daemon's events, one ``await`` at a time.

    Cancelling an ``__anext__`` ends the stream (its connection is shut down).
    ``aclose()`` unsubscribes; the end of an ``async with`` block calls it.
    """

    def __init__(self, owner: AsyncDataeraiClient, client: DataeraiClient, stream: EventStream, loop: _Loop) -> None:
        self._owner = owner
        self._client = client
        self._stream = stream
        self._loop = loop
        self._usable = True
        self.last_event_id = stream.last_event_id
        self.closed = False

    def __aiter__(self) -> AsyncEventStream:
        return self

    async def __anext__(self) -> Event:
        if self.closed:
            raise StopAsyncIteration

        def abort() -> None:
            self._usable = False
            self._client._abort()

        iterator: Iterator[Event] = self._stream
        try:
            return await self._loop.run_in_thread(lambda: next(iterator), abort)
        except StopIteration:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        """Unsubscribe and give the connection back. Idempotent."""
        if self.closed:
            return
        self.closed = True
        stream, client = self._stream, self._client
        if self._usable:

            def close() -> None:
                stream.close()
                client.close()

            with contextlib.suppress(Exception):
                await self._loop.run_in_thread(close, client._abort)
        self._owner._give_back(client, False)

    async def __aenter__(self) -> AsyncEventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


#: The other spelling of the class name; the very same class.
AsyncDataEraiClient = AsyncDataeraiClient
