"""The blocking client.

Every public method turns its arguments into the parameters of one protocol
method (``docs/protocol.md``), sends it over one ``Connection`` and turns the
result into a model. Waiting for a transfer needs no thread: the client
subscribes to the job's events on its own connection and reads them until the
job is final.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Final, Literal, TypeVar, overload

from ._connection import Connection, Expired, open_connection
from ._errors import DaemonConnectionError, DaemonError, DaemonTimeoutError
from ._models import (
    TERMINAL_JOB_STATES,
    AssetMetadata,
    AuthStatus,
    Collection,
    DownloadResult,
    Event,
    FileInfo,
    Job,
    JobWaiting,
    ProgressEvent,
    Project,
    Relationship,
    UploadResult,
    Watch,
    WatchFile,
)
from ._paths import default_socket_path
from .contract import (
    AFTER_UPLOAD_ACTIONS,
    ANALYSIS_MODES,
    COMPLETION_RULES,
    MAX_EXCLUDES,
    MAX_RESCAN_INTERVAL_S,
    MAX_START_MANY_ITEMS,
    MIN_RESCAN_INTERVAL_S,
    OWNER_TYPES,
    WATCH_FILE_STATES,
    MiB,
    id_problem,
    local_path_problem,
    new_id,
    new_job_id,
    path_problem,
)

DEFAULT_START_TIMEOUT_S: Final = 10.0
DEFAULT_REQUEST_TIMEOUT_S: Final = 30.0
DEFAULT_TRANSFER_TIMEOUT_S: Final = 3600.0
#: The most files one ``watch.files`` page may hold (the daemon's bound on its ``limit``).
_MAX_WATCH_FILES_PAGE: Final = 10_000
#: How a listing sends and receives its cursor: ``cursor``/``next_cursor``, or ``after``/``next_after``
#: for listings ordered by a key the caller can name (``watch.files``, by path).
CURSOR: Final = ("cursor", "next_cursor")
AFTER: Final = ("after", "next_after")


ProgressCallback = Callable[[ProgressEvent], object]
#: ``on_state``: called with the ``Job`` as a wait finds it and each time its state changes
#: (and, while it waits, each time its ``waiting`` reason or next retry changes).
StateCallback = Callable[[Job], object]
_C = TypeVar("_C", bound="DataeraiClient")
_T = TypeVar("_T")


class ClientState(enum.Enum):
    """Where a client is in its life: ``UNOPENED`` → ``OPENED`` → ``CLOSED``.

    A closed client stays closed: any call on it raises ``RuntimeError``.
    """

    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


def _invalid(message: str) -> DaemonError:
    return DaemonError("invalid_argument", message)


class DataeraiClient:
    """A blocking client for the Dataerai transfer daemon. Also spelled ``DataEraiClient``.

    ``socket_path`` defaults to ``default_socket_path()`` (``$DATAERAI_SOCKET``,
    else ``$XDG_RUNTIME_DIR/dataerai-transfer.sock``, else
    ``/run/user/<uid>/dataerai-transfer.sock``), read when the client is made.

    Connecting: ``with DataeraiClient() as client:`` or ``connect()``/``close()``.
    A client that was never opened connects on its first call. If the daemon is
    not running and ``auto_start`` is set, the client starts
    ``[binary_path or $(which dataerai), "daemon", "run"]`` detached and waits
    up to ``start_timeout_s`` for it to listen; a daemon that refuses to start
    (a bad ``config.toml``, a broken or taken queue) raises ``DaemonError`` with
    its code and reason. If the connection breaks, the
    call in flight raises ``ConnectionError`` and the next call connects again.

    Timeouts: each request waits ``request_timeout_s`` for its answer (``None``:
    forever) and raises ``DaemonTimeoutError`` with ``transfer_id=None``. A
    transfer waits ``transfer_timeout_s``; its ``DaemonTimeoutError`` carries
    the job id as ``transfer_id`` and the job goes on in the daemon.

    Errors: ``DaemonError`` (a coded error: ``.code``, ``.message``, ``.data``),
    ``DaemonTimeoutError``, ``ConnectionError`` (``DaemonConnectionError``).
    Arguments the SDK can tell are wrong raise ``DaemonError("invalid_argument")``
    before anything is sent.

    Fairness: the daemon shares its running slots and bandwidth round-robin
    between clients. Jobs this client starts are tagged with this process's pid,
    or with ``client_name`` when given (processes that pass the same name count
    as one client).

    One client may be shared between threads; its calls then run one at a time.
    The token never passes through the SDK.
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
        if client_name is not None and (not isinstance(client_name, str) or not 0 < len(client_name) <= 100):
            raise _invalid("client_name must be a string of 1 to 100 characters")
        self._client_name = client_name
        self._socket_path = os.fspath(socket_path) if socket_path is not None else default_socket_path()
        self._binary_path = os.fspath(binary_path) if binary_path is not None else None
        self._auto_start = auto_start
        self._start_timeout_s = float(start_timeout_s)
        self._request_timeout_s = None if request_timeout_s is None else float(request_timeout_s)
        self._state = ClientState.UNOPENED
        self._connection: Connection | None = None
        self._stream: EventStream | None = None
        self._lock = threading.RLock()

    # --- life -----------------------------------------------------------------

    @property
    def socket_path(self) -> str:
        """The daemon's socket this client talks to."""
        return self._socket_path

    @property
    def state(self) -> ClientState:
        return self._state

    def connect(self: _C) -> _C:
        """Connect now (starting the daemon if need be) and return the client.

        Connecting an open client does nothing. Raises ``RuntimeError`` on a
        closed client, ``ConnectionError`` or ``DaemonTimeoutError`` when the
        daemon cannot be reached or started, ``DaemonError`` (the daemon's code
        and reason) when the daemon it started refused to start.
        """
        with self._lock:
            self._open()
        return self

    def close(self) -> None:
        """Close the connection. Idempotent; the client cannot be used afterwards.

        Jobs already started go on in the daemon.
        """
        with self._lock:
            self._state = ClientState.CLOSED
            if self._stream is not None:
                self._stream.closed = True
                self._stream = None
            self._drop_connection()

    def __enter__(self: _C) -> _C:
        return self.connect()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} socket_path={self._socket_path!r} state={self._state.value}>"

    def _open(self) -> Connection:
        if self._state is ClientState.CLOSED:
            raise RuntimeError("this DataeraiClient is closed; make a new one")
        if self._connection is None or self._connection.closed:
            self._connection = open_connection(
                self._socket_path,
                binary_path=self._binary_path,
                auto_start=self._auto_start,
                start_timeout_s=self._start_timeout_s,
            )
            self._state = ClientState.OPENED
        return self._connection

    def _start(self, method: str, params: dict[str, Any]) -> Job:
        """Queue a job under an id chosen here, so that even a start that timed out names its job.

        The daemon takes a ``job_id`` it has seen before as the same request
        (it answers with that job), so the id is safe to wait for, cancel or
        start again after a ``DaemonTimeoutError``.
        """
        job_id = new_job_id()
        try:
            return Job.from_wire(self.call(method, {**params, "job_id": job_id}))
        except DaemonTimeoutError as exc:
            if exc.transfer_id is None:
                exc.transfer_id = job_id
                exc.data.setdefault("job_id", job_id)
                exc.message += f"; the job may have been queued as {job_id}: client.wait({job_id!r}) or cancel it"
            raise

    def _client_tag(self) -> dict[str, Any]:
        tag: dict[str, Any] = {"pid": os.getpid()}
        if self._client_name is not None:
            tag["name"] = self._client_name
        return tag

    def _abort(self) -> None:
        """Break the connection from another thread, so a call blocked on it returns (``ConnectionError``).

        For the async twin: the one thing that may be done to a client without its
        lock. The client is closed for good: a call that had not connected yet
        fails instead of connecting.
        """
        self._state = ClientState.CLOSED
        connection = self._connection
        if connection is not None:
            connection.abort()

    def _drop_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    # --- requests -------------------------------------------------------------

    def call(self, method: str, params: Mapping[str, Any] | None = None, *, timeout: float | None = None) -> Any:
        """Send one request of the protocol and return its raw JSON result.

        ``timeout`` (seconds) overrides ``request_timeout_s`` for this call.
        Raises ``DaemonError`` for an error answer (``DaemonTimeoutError`` for
        ``timeout``, with ``transfer_id`` from ``data.job_id``),
        ``DaemonTimeoutError`` (``transfer_id=None``) when no answer came in
        time, ``ConnectionError`` when the connection broke.
        """
        limit = self._request_timeout_s if timeout is None else float(timeout)
        with self._lock:
            connection = self._open()
            try:
                return connection.request(method, dict(params or {}), _deadline(limit))
            except Expired:
                raise DaemonTimeoutError(f"the daemon did not answer {method} within {limit} s") from None

    def auth_status(self) -> AuthStatus:
        """Who the daemon is signed in as, and when the token expires.

        Raises ``DaemonError("auth_required")`` when nobody is signed in
        (``dataerai auth login``).
        """
        return AuthStatus.from_wire(self.call("auth.status"))

    def create_project(self, name: str, *, description: str = "") -> Project:
        """Create a project (with its root collection, the caller as owner and a default allocation).

        Needs a token with the ``write`` scope.
        """
        return Project.from_wire(self.call("project.create", {"name": name, "description": description}))

    def get_metadata(self, asset_id: str) -> AssetMetadata:
        """An asset's metadata. ``DaemonError("not_found")`` if it does not exist or is not visible."""
        return AssetMetadata.from_wire(self.call("asset.get", {"asset_id": asset_id}))

    def set_metadata(self, asset_id: str, **fields: Any) -> AssetMetadata:
        """Update any of ``title``, ``description``, ``alias``, ``tags``, ``metadata``, ``path``; returns the asset.

        ``metadata`` replaces the old mapping. Fields are passed on as given;
        the daemon refuses unknown ones with ``invalid_argument``.
        """
        if "asset_id" in fields:
            raise _invalid("asset_id is the first argument, not a field to set")
        if isinstance(fields.get("tags"), str):
            raise _invalid("tags must be a list of strings, not one string")
        return AssetMetadata.from_wire(self.call("asset.update", {"asset_id": asset_id, **fields}))

    def create_relationship(
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
        """Link ``from_asset_id`` (the dependent asset) to ``to_asset_id`` (its origin).

        ``rel_type`` (or its keyword alias ``relationship_type``) is a free-form
        verb up to 255 characters, such as ``"derived_from"``. Needs write
        access to the source and read access to the target. Sent as the
        ``relationship.create`` method.
        """
        if rel_type is not None and relationship_type is not None and rel_type != relationship_type:
            raise _invalid("rel_type and relationship_type differ; pass one of them")
        kind = rel_type if rel_type is not None else relationship_type
        if not isinstance(kind, str) or not kind.strip():
            raise _invalid("a relationship type is required: pass rel_type (or relationship_type=...)")
        if len(kind) > 255:
            raise _invalid("the relationship type is longer than 255 characters")
        if analysis_mode is not None and analysis_mode not in ANALYSIS_MODES:
            raise _invalid(f"analysis_mode must be one of {', '.join(sorted(ANALYSIS_MODES))}")
        params: dict[str, Any] = {"from_asset_id": from_asset_id, "to_asset_id": to_asset_id, "type": kind}
        if analysis_mode is not None:
            params["analysis_mode"] = analysis_mode
        if qualifier_note is not None:
            params["qualifier_note"] = qualifier_note
        if qualifier_time is not None:
            params["qualifier_time"] = qualifier_time
        if qualifiers is not None:
            params["qualifiers"] = dict(qualifiers)
        return Relationship.from_wire(self.call("relationship.create", params))

    def list_relationships(self, asset_id: str) -> list[Relationship]:
        """The asset's relationships, outgoing and incoming (``raw["direction"]`` says which)."""
        found = self.call("relationship.list", {"asset_id": asset_id})
        return [Relationship.from_wire(r) for r in found.get("relationships", [])]

    # --- projects, collections, assets ----------------------------------------

    def list_projects(self) -> list[Project]:
        """The projects the signed-in user is a member of, each with the user's ``role``."""
        return [Project.from_wire(p) for p in self.call("project.list").get("projects", [])]

    def create_collection(self, project_id: str, name: str, *, parent_id: str | None = None) -> Collection:
        """A new collection in ``project_id``, below ``parent_id`` (default: the root collection)."""
        params: dict[str, Any] = {"project_id": project_id, "name": name}
        if parent_id is not None:
            params["parent_id"] = parent_id
        return Collection.from_wire(self.call("collection.create", params))

    def list_collections(self, project_id: str) -> list[Collection]:
        """The project's collections, its root collection first."""
        found = self.call("collection.list", {"project_id": project_id})
        return [Collection.from_wire(c) for c in found.get("collections", [])]

    def list_assets(
        self,
        *,
        project_id: str | None = None,
        collection_id: str | None = None,
        path_prefix: str | None = None,
        glob: str | None = None,
        page_size: int = 100,
    ) -> Iterator[AssetMetadata]:
        """The assets of a project or a collection (give exactly one), ordered by path.

        ``path_prefix`` keeps those whose path starts with it; ``glob`` those whose
        path matches (``*`` within a path segment, ``**`` across them). Pages of
        ``page_size`` are fetched as the iterator is consumed.
        """
        params = asset_query(project_id, collection_id, path_prefix, glob, page_size)
        return self._pages("asset.list", params, "assets", lambda item, page: AssetMetadata.from_wire(item))

    def delete_asset(self, asset_id: str) -> None:
        """Delete an asset with every content version and its relationships."""
        self.call("asset.delete", {"asset_id": asset_id})

    def get_file_info(self, asset_id: str, path: str, *, content_id: str | None = None) -> FileInfo:
        """One file of the asset's latest content (or ``content_id``), by its exact path."""
        params: dict[str, Any] = {"asset_id": asset_id, "path": path}
        if content_id is not None:
            params["content_id"] = content_id
        return FileInfo.from_wire(self.call("asset.files", params))

    def list_files(
        self, asset_id: str, *, prefix: str | None = None, content_id: str | None = None, page_size: int = 1000
    ) -> Iterator[FileInfo]:
        """The files of the asset's latest content (or ``content_id``), in stream order."""
        params = files_query(asset_id, prefix, content_id, page_size)
        return self._pages("asset.files", params, "files", file_of_page)

    def _pages(
        self,
        method: str,
        params: dict[str, Any],
        key: str,
        make: Callable[[Any, dict[str, Any]], _T],
        cursor_keys: tuple[str, str] = CURSOR,
    ) -> Iterator[_T]:
        """``make(item, page)`` for the items under ``key`` of every page of ``method``, following
        the page's cursor (``cursor_keys``: the parameter that sends it, the result key that
        brings it); a page is asked for only when the one before has been consumed."""
        send, read = cursor_keys
        cursor: str | None = None
        while True:
            page = self.call(method, {**params, **({send: cursor} if cursor else {})})
            for item in page.get(key, []):
                yield make(item, page)
            cursor = page.get(read)
            if not cursor:
                return

    # --- jobs -----------------------------------------------------------------

    def get_job(self, job_id: str) -> Job:
        """The job as the daemon has it now. ``DaemonError("not_found")`` for an unknown id."""
        return Job.from_wire(self.call("job.get", {"job_id": job_id}))

    def list_jobs(self, states: Iterable[str] | None = None) -> list[Job]:
        """The daemon's jobs, only those in ``states`` if given."""
        params: dict[str, Any] = {}
        if states is not None:
            if isinstance(states, str):
                states = [states]
            params["states"] = list(states)
        result = self.call("job.list", params)
        jobs = result.get("jobs") if isinstance(result, dict) else None
        return [Job.from_wire(job) for job in jobs if isinstance(job, dict)] if isinstance(jobs, list) else []

    def cancel(self, job_id: str) -> Job:
        """Cancel a job; returns it (``cancelled``). Cancelling a finished job is the daemon's call (``conflict``)."""
        return Job.from_wire(self.call("job.cancel", {"job_id": job_id}))

    def pause(self, job_id: str) -> Job:
        """Hold a queued or running job (``paused``); it keeps its checkpoints. ``conflict`` if it ended."""
        return Job.from_wire(self.call("job.pause", {"job_id": job_id}))

    def resume(self, job_id: str) -> Job:
        """Queue a paused job again (``queued``). ``conflict`` if it is not paused."""
        return Job.from_wire(self.call("job.resume", {"job_id": job_id}))

    def retry(self, job_id: str) -> Job:
        """Queue a failed or cancelled job again, from its checkpoints. ``conflict`` for any other state."""
        return Job.from_wire(self.call("job.retry", {"job_id": job_id}))

    def set_priority(self, job_id: str, priority: int) -> Job:
        """Change a job's priority (higher starts first; a running job is not stopped). ``conflict`` if it ended."""
        return Job.from_wire(self.call("job.set_priority", {"job_id": job_id, "priority": _priority(priority)}))

    def wait(
        self,
        job_id: str,
        *,
        timeout_s: float | None = None,
        on_progress: ProgressCallback | None = None,
        on_state: StateCallback | None = None,
    ) -> Job:
        """Block until the job is ``completed``, ``failed`` or ``cancelled`` and return it as it ended.

        Does not raise for a failed or cancelled job: look at ``job.state`` and
        ``job.error``. ``on_progress`` is called with each ``ProgressEvent``;
        ``on_state`` with the ``Job`` as the wait finds it, then each time its
        state changes, the last time with the job as it ended; while the job
        waits (``waiting_for_network``, ``waiting_for_auth``) ``job.waiting``
        says why and when it tries again, and ``on_state`` is called again
        whenever that changes. An exception a callback raises propagates (the
        job goes on in the daemon). ``timeout_s=None`` waits as long as it
        takes; when it runs out, ``DaemonTimeoutError`` with
        ``transfer_id=job_id`` (the job goes on), whose message names the
        job's state and why it waits or its last error (also in ``data``:
        ``state``, ``waiting``, ``error``).
        """
        return self._wait_job(self.get_job(job_id), timeout_s, on_progress, on_state)

    def _upload_params(
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
        priority: int = 0,
        window: str | None = None,
    ) -> dict[str, Any]:
        """The ``upload.start`` parameters of one upload, checked as far as the SDK can."""
        source = os.path.abspath(os.path.expanduser(os.fspath(local_path)))
        if not os.path.exists(source):
            raise DaemonError("not_found", f"no such file: {source}", {"local_path": source})
        params: dict[str, Any] = {"local_path": source, **_upload_target(title, owner_type, owner_id, asset_id)}
        params["priority"] = _priority(priority)
        params["client"] = self._client_tag()
        if window is not None:
            params["window"] = _window(window)
        if description is not None:
            params["description"] = description
        if alias is not None:
            params["alias"] = alias
        if tags is not None:
            params["tags"] = _tags(tags)
        if metadata is not None:
            params["metadata"] = dict(metadata)
        if collection_id is not None:
            params["collection_id"] = collection_id
        if path is not None:
            params["path"] = path
        if chunk_size_mb is not None:
            if isinstance(chunk_size_mb, bool) or not isinstance(chunk_size_mb, int) or chunk_size_mb <= 0:
                raise _invalid(f"chunk_size_mb must be a positive int (MiB), not {chunk_size_mb!r}")
            params["chunk_size"] = chunk_size_mb * MiB
        return params

    def _start_many(self, method: str, items: list[dict[str, Any]]) -> list[Job]:
        """Queue ``items`` in one call, each under an id chosen here (see ``_start``)."""
        if not items:
            return []
        if len(items) > MAX_START_MANY_ITEMS:
            raise _invalid_param("items", f"at most {MAX_START_MANY_ITEMS} transfers go in one call, not "
                                          f"{len(items)}: send them in several calls")
        job_ids = [new_job_id() for _ in items]
        items = [{**item, "job_id": job_id} for item, job_id in zip(items, job_ids, strict=True)]
        try:
            answer = self.call(method, {"items": items})
        except DaemonTimeoutError as exc:
            if exc.transfer_id is None:
                exc.data.setdefault("job_ids", job_ids)
                exc.message += ("; the jobs may have been queued (all or none of them): the same call again "
                                "answers with them, as ids are in data['job_ids']")
            raise
        return [Job.from_wire(job) for job in answer]

    def upload_many(self, items: Iterable[Mapping[str, Any]]) -> list[Job]:
        """Queue many uploads in one call (``upload.start_many``) and return their jobs (``Job``), in order.

        Each item is a mapping of ``upload``'s arguments: ``local_path`` (required),
        ``title``, ``owner_type``, ``owner_id``, ``description``, ``alias``, ``tags``,
        ``metadata``, ``collection_id``, ``asset_id``, ``path``, ``chunk_size_mb``,
        ``priority``, ``window``. It does not wait: follow the jobs with ``wait``.

        All or nothing: an item the SDK or the daemon refuses raises ``DaemonError``
        with ``data["index"]`` naming it (from 0), and none is queued. At most
        ``MAX_START_MANY_ITEMS`` (1000) items, and the request must fit one line of the
        wire (1 MiB; else ``DaemonError("frame_too_large")``): send more as several
        calls, each all or nothing by itself. No items: ``[]``, and nothing is sent.
        A ``DaemonTimeoutError`` carries the jobs' ids in ``data["job_ids"]``.
        """
        params = []
        for index, item in enumerate(items):
            params.append(self._many_item(index, item, _UPLOAD_ITEM_KEYS, lambda kw: self._upload_params(**kw)))
        with self._lock:
            return self._start_many("upload.start_many", params)

    def download_many(self, items: Iterable[Mapping[str, Any]]) -> list[Job]:
        """Queue many downloads in one call (``download.start_many``) and return their jobs (``Job``), in order.

        Each item is a mapping of ``download``'s arguments: ``asset_id`` and
        ``dest_dir`` (required), ``content_id``, ``overwrite``, ``priority``,
        ``window``. Limits, all or nothing and errors as for ``upload_many``.
        """
        params = []
        for index, item in enumerate(items):
            params.append(self._many_item(index, item, _DOWNLOAD_ITEM_KEYS, lambda kw: self._download_params(**kw)))
        with self._lock:
            return self._start_many("download.start_many", params)

    @staticmethod
    def _many_item(index: int, item: Mapping[str, Any], keys: frozenset[str],
                   build: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        if not isinstance(item, Mapping):
            raise DaemonError("invalid_argument", f"items[{index}] must be a mapping of arguments, not "
                                                  f"{type(item).__name__}", {"param": "items", "index": index})
        unknown = sorted(str(key) for key in item if key not in keys)
        if unknown:
            raise DaemonError("invalid_argument", f"items[{index}] has no argument {unknown[0]!r}; it takes "
                                                  f"{', '.join(sorted(keys))}", {"param": "items", "index": index})
        try:
            return build(dict(item))
        except DaemonError as exc:
            raise DaemonError(exc.code, f"items[{index}]: {exc.message}", {**exc.data, "index": index}) from None
        except TypeError as exc:  # a required argument missing
            raise DaemonError("invalid_argument", f"items[{index}]: {exc}",
                              {"param": "items", "index": index}) from None

    @overload
    def upload(
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
    def upload(
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

    @overload
    def upload(
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
    ) -> UploadResult | Job: ...

    def upload(
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
        """Upload a file or directory as a new asset (or version); blocks until stored, returns an ``UploadResult``.

        ``local_path`` is made absolute here (``~`` expanded); a missing file is
        ``DaemonError("not_found")`` before anything is sent. A new asset needs
        ``title``, ``owner_type`` (``project``, ``user`` or ``collection``) and
        ``owner_id``; without them, ``DaemonError("invalid_argument")``.
        ``chunk_size_mb`` (a positive int, MiB) overrides the daemon's 64 MiB parts.

        ``asset_id`` makes the upload a new version (content) of that asset
        instead: the result has the same ``asset_id`` and a new ``content_id``.
        ``title``, ``owner_type`` and ``owner_id`` may then be left out; an
        owner given must be the asset's. The asset keeps its title,
        description, alias, tags, metadata and collection (``set_metadata``
        changes them). An asset that does not exist or is not visible fails
        the job with ``DaemonError("not_found")``.

        ``path`` is the asset's repository path (relative, ``/``-separated, no
        ``..``; ``list_assets`` filters on it): a new asset's (default: the
        file or directory name), or where a new version moves the asset
        (default: it stays where it is).

        The daemon queues the job durably and does the transfer; this call
        follows its events, calling ``on_progress(ProgressEvent)`` along the way
        and ``on_state(Job)`` when the job's state changes, as ``wait`` does:
        a job that cannot reach the repository or has no valid login waits
        (``waiting_for_network``, ``waiting_for_auth``), a job outside its
        ``window`` (a transfer window such as ``"Mon-Fri 20:00-06:00"``, local
        time on the daemon's machine) waits ``scheduled``, and ``job.waiting``
        says why and when it tries again (an exception from a callback
        propagates, and the job goes on). With ``wait=False`` it returns the
        queued ``Job`` at once.

        Raises ``DaemonError`` with the job's error code if it failed,
        ``DaemonError("cancelled")`` if it was cancelled, and
        ``DaemonTimeoutError`` (``transfer_id`` = the job id) if it did not end
        within ``transfer_timeout_s`` (``None``: no limit), naming the job's
        state and why it waits; the job goes on in the daemon and
        ``wait(transfer_id)`` picks it up again.
        """
        params = self._upload_params(
            local_path, title=title, owner_type=owner_type, owner_id=owner_id, description=description,
            alias=alias, tags=tags, metadata=metadata, collection_id=collection_id, asset_id=asset_id, path=path,
            chunk_size_mb=chunk_size_mb, priority=priority, window=window,
        )
        job = self._start("upload.start", params)
        if not wait:
            return job
        job = self._finished(self._wait_job(job, transfer_timeout_s, on_progress, on_state))
        size, sha256 = job.bytes_total, job.sha256
        if sha256 is None and job.asset_id:
            size, sha256 = self._content_digest(job, size)
        return UploadResult(
            asset_id=job.asset_id or "",
            content_id=job.content_id or "",
            transfer_id=job.job_id,
            size=size,
            sha256=sha256,
            deduplicated=job.deduplicated,
        )

    def _download_params(
        self,
        asset_id: str,
        dest_dir: str | os.PathLike[str],
        *,
        content_id: str | None = None,
        overwrite: bool = False,
        priority: int = 0,
        window: str | None = None,
    ) -> dict[str, Any]:
        """The ``download.start`` parameters of one download."""
        params: dict[str, Any] = {
            "asset_id": asset_id,
            "dest_dir": os.path.abspath(os.path.expanduser(os.fspath(dest_dir))),
            "overwrite": bool(overwrite),
            "priority": _priority(priority),
            "client": self._client_tag(),
        }
        if content_id is not None:
            params["content_id"] = content_id
        if window is not None:
            params["window"] = _window(window)
        return params

    @overload
    def download(
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
    def download(
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

    @overload
    def download(
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
    ) -> DownloadResult | Job: ...

    def download(
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
        """Download an asset's latest content (or ``content_id``) into ``dest_dir``; returns a ``DownloadResult``.

        ``dest_dir`` is made absolute here. The daemon resumes an interrupted
        download and refuses to replace a different file unless ``overwrite``
        (``destination_exists``). Progress, ``on_state``, ``wait=False``, errors
        and timeouts work as for ``upload``.
        """
        params = self._download_params(asset_id, dest_dir, content_id=content_id, overwrite=overwrite,
                                       priority=priority, window=window)
        job = self._start("download.start", params)
        if not wait:
            return job
        job = self._finished(self._wait_job(job, transfer_timeout_s, on_progress, on_state))
        return DownloadResult(
            files=list(job.files),
            asset_id=job.asset_id or asset_id,
            content_id=job.content_id,
            transfer_id=job.job_id,
        )

    def events(
        self, since: int | None = None, jobs: Iterable[str] | None = None, types: Iterable[str] | None = None
    ) -> EventStream:
        """Subscribe to the daemon's events on this connection and return them as an iterator.

        Subscribes before returning, so nothing is missed between the call and
        the first ``next()``. ``since`` replays the stored events after that id
        (``0``: all); ``jobs`` limits the stream to those job ids, ``types`` to
        those event types (``job.state``, ``job.progress``, ``job.priority``,
        ``auth.reloaded``, ``watch.state``, ``watch.file``; ``gap`` markers
        always come). Iteration
        blocks until the next event and goes on until ``close()`` (or the end of
        a ``with`` block). Other calls may be made on the client meanwhile
        (events that arrive are kept), but not ``upload``/``download``/``wait``,
        which need the subscription themselves: use a second client for those.
        """
        params: dict[str, Any] = {}
        if since is not None:
            params["since"] = since
        if jobs is not None:
            params["jobs"] = [jobs] if isinstance(jobs, str) else list(jobs)
        if types is not None:
            params["types"] = [types] if isinstance(types, str) else list(types)
        with self._lock:
            if self._stream is not None:
                raise RuntimeError("an events() stream is already open on this client; close it first")
            result = self.call("events.subscribe", params)
            last = result.get("last_event_id") if isinstance(result, dict) else None
            stream = EventStream(self, self._open(), last if isinstance(last, int) else None)
            self._stream = stream
            return stream

    def list_events(
        self,
        since: int = 0,
        jobs: Iterable[str] | None = None,
        types: Iterable[str] | None = None,
        *,
        limit: int = 1000,
    ) -> list[Event]:
        """The stored (durable) events after ``since``, oldest first, at most ``limit`` (1 to 10000).

        Progress events are not stored. Page on with ``since=events[-1].id``.
        """
        params: dict[str, Any] = {"since": since, "limit": limit}
        if jobs is not None:
            params["jobs"] = [jobs] if isinstance(jobs, str) else list(jobs)
        if types is not None:
            params["types"] = [types] if isinstance(types, str) else list(types)
        result = self.call("events.list", params)
        events = result.get("events") if isinstance(result, dict) else None
        return [Event.from_wire(e) for e in events if isinstance(e, dict)] if isinstance(events, list) else []

    # --- watch folders --------------------------------------------------------

    def add_watch(
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
        """Watch the directory ``root``: the daemon uploads each of its files, once complete, exactly once.

        Each complete file becomes an asset of ``project_id`` (in
        ``collection_id`` if given) at its path under ``root``, below ``prefix``
        in the repository, with ``tags`` and the metadata of
        ``metadata_template`` (a mapping, or the path of a TOML file, read here:
        that needs Python 3.11's ``tomllib``; on 3.10 pass a dict).
        ``root`` is made absolute here (``~`` expanded); a missing one is
        ``DaemonError("not_found")`` before anything is sent.

        ``complete_when``: ``"close"`` (its last writer closed it),
        ``"stable:30s"`` (unchanged that long; ``5m``, ``1h30m``, ...) or
        ``"sentinel:NAME"`` (each directory is one dataset, complete once NAME
        appears in it); ``None`` lets the daemon choose. ``after_upload``, once
        the repository verified a file: ``"keep"``, ``"move:DIR"`` (``DIR`` made
        absolute here) or ``"delete"``. ``excludes`` are patterns added to the
        daemon's default excludes, or used alone with ``default_excludes=False``. ``rescan_interval_s``: how often
        the whole tree is scanned again (the daemon's default if ``None``);
        ``force_polling`` scans instead of using file events (for network file
        systems). ``free_space_below`` is the watched disk's free-space
        threshold, a size (``"20G"``) or a share (``"15%"``); what the daemon
        does below it is in ``docs/watch.md``. ``priority`` is the priority
        of its upload jobs, ``window`` their transfer window (``"20:00-06:00"``).

        ``watch_id`` (``wat_…``) names the watch; adding the same id again is
        the same request and answers with that watch. Without one the SDK
        chooses it and sends it, so an add that timed out can be repeated as
        the same request: its ``DaemonTimeoutError`` names the id
        (``.data["watch_id"]``). Returns the new ``Watch``.
        Errors: ``not_found`` (no such directory), ``conflict`` (``root`` is
        inside, or contains, another watch's root), ``invalid_argument``.
        """
        path = _local_dir(root, "root")
        if not os.path.exists(path):
            raise DaemonError("not_found", f"no such directory: {path}", {"param": "root", "root": path})
        if not os.path.isdir(path):
            raise _invalid_param("root", f"root must be a directory, and {path} is not one")
        if watch_id is None:
            watch_id = new_id("watch")
        params: dict[str, Any] = {
            "root": path,
            "project_id": _checked_id("project", "project_id", project_id),
            "after_upload": _after_upload(after_upload),
            "default_excludes": _flag("default_excludes", default_excludes),
            "priority": _priority(priority),
            "force_polling": _flag("force_polling", force_polling),
            "watch_id": _checked_id("watch", "watch_id", watch_id),
        }
        if window is not None:
            params["window"] = _window(window)
        if collection_id is not None:
            params["collection_id"] = _checked_id("collection", "collection_id", collection_id)
        if prefix is not None:
            problem = path_problem(prefix) if isinstance(prefix, str) else "must be a string"
            if problem is not None:
                raise _invalid_param("prefix", f"prefix {problem}")
            params["prefix"] = prefix
        if complete_when is not None:
            params["complete_when"] = _complete_when(complete_when)
        if excludes is not None:
            params["excludes"] = _excludes(excludes)
        if tags is not None:
            params["tags"] = _tags(tags)
        if metadata_template is not None:
            params["metadata_template"] = _metadata_template(metadata_template)
        if rescan_interval_s is not None:
            params["rescan_interval_s"] = _rescan_interval(rescan_interval_s)
        if free_space_below is not None:
            if not isinstance(free_space_below, str) or not free_space_below.strip():
                raise _invalid_param("free_space_below", "free_space_below must be a size such as '20G' or '15%'")
            params["free_space_below"] = free_space_below
        try:
            return Watch.from_wire(self.call("watch.add", params))
        except DaemonTimeoutError as exc:
            exc.data.setdefault("watch_id", watch_id)
            exc.message += f"; the watch may have been added as {watch_id}: client.get_watch({watch_id!r})"
            raise

    def list_watches(self) -> list[Watch]:
        """Every watch folder of the daemon."""
        result = self.call("watch.list")
        watches = result.get("watches") if isinstance(result, dict) else None
        return [Watch.from_wire(w) for w in watches if isinstance(w, dict)] if isinstance(watches, list) else []

    def get_watch(self, watch_id: str) -> Watch:
        """The watch as the daemon has it now: its state, file counts and lag. ``not_found`` for an unknown id."""
        return self._watch_call("watch.get", watch_id)

    def watch_files(
        self, watch_id: str, *, states: Iterable[str] | None = None, page_size: int = 1000
    ) -> Iterator[WatchFile]:
        """The files the watch knows, ordered by path; only those in ``states`` if given.

        ``states`` are watched-file states (``seen``, ``complete``, ``queued``,
        ``uploaded``, ``verified``, ``cleaned``, ``quarantined``, ``ignored``).
        Pages of ``page_size`` (1 to 10000) are fetched as the iterator is consumed.
        """
        params = watch_files_query(watch_id, states, page_size)
        return self._pages("watch.files", params, "files", lambda item, page: WatchFile.from_wire(item), AFTER)

    def pause_watch(self, watch_id: str) -> Watch:
        """Pause the watch (``paused``): its files wait until ``resume_watch``. Returns the watch."""
        return self._watch_call("watch.pause", watch_id)

    def resume_watch(self, watch_id: str) -> Watch:
        """Go on with a paused watch (``active``). Returns the watch."""
        return self._watch_call("watch.resume", watch_id)

    def rescan_watch(self, watch_id: str) -> Watch:
        """Scan the watch's whole tree now; quarantined files are tried again. Returns the watch."""
        return self._watch_call("watch.rescan", watch_id)

    def remove_watch(self, watch_id: str) -> None:
        """Stop watching and forget the watch. Its local files and the assets it made stay."""
        self.call("watch.remove", {"watch_id": _checked_id("watch", "watch_id", watch_id)})

    def _watch_call(self, method: str, watch_id: str) -> Watch:
        return Watch.from_wire(self.call(method, {"watch_id": _checked_id("watch", "watch_id", watch_id)}))

    # --- waiting --------------------------------------------------------------

    def _wait_job(
        self,
        job: Job,
        timeout_s: float | None,
        on_progress: ProgressCallback | None,
        on_state: StateCallback | None = None,
    ) -> Job:
        """Follow ``job``'s events until it is final; see ``wait``."""
        job_id = job.job_id
        deadline = _deadline(timeout_s)
        watch = _Watch(job, on_progress, on_state)
        with self._lock:
            if self._stream is not None:
                raise RuntimeError(
                    "an events() stream is open on this client; close it, or wait for jobs with a second client"
                )
            if not job.is_terminal:
                connection = self._open()
                try:
                    job = self._follow(connection, job_id, deadline, watch)
                except Expired:
                    self._drop_connection()
                    if deadline is not None and time.monotonic() >= deadline:
                        what = f"job {job_id} did not finish within {timeout_s} s"
                    else:
                        what = (
                            f"the daemon did not answer within {self._request_timeout_s} s while following job {job_id}"
                        )
                    raise DaemonTimeoutError(
                        f"{what}; {describe_state(watch.job)}; it goes on in the daemon"
                        f" (wait for it again with client.wait({job_id!r}))",
                        transfer_id=job_id,
                        data={"job_id": job_id, **state_data(watch.job)},
                    ) from None
                except DaemonTimeoutError as exc:  # a daemon-side timeout while following
                    self._drop_connection()
                    exc.transfer_id = exc.transfer_id or job_id
                    raise
                except BaseException as exc:
                    # The subscription may still be live: a fresh connection is the clean slate.
                    self._drop_connection()
                    if not isinstance(exc, (DaemonError, DaemonConnectionError)) and hasattr(exc, "add_note"):
                        exc.add_note(
                            f"dataerai: job {job_id} goes on in the daemon; client.cancel({job_id!r}) stops it"
                        )
                    raise
        watch.saw(job)
        if on_progress is not None and job.state == "completed":
            on_progress(
                ProgressEvent(
                    transfer_id=job_id,
                    bytes_done=job.bytes_total,
                    bytes_total=job.bytes_total,
                    chunk_index=job.chunk_count,
                    chunk_count=job.chunk_count,
                    rate_bps=average_rate(job, watch.last_progress),
                    file_index=max(0, len(job.files) - 1),
                    file_name=job.file_name or "",
                    completed=True,
                    state=job.state,
                )
            )
        return job

    def _follow(self, connection: Connection, job_id: str, deadline: float | None, watch: _Watch) -> Job:
        def request(method: str, params: dict[str, Any]) -> Any:
            return connection.request(method, params, _earlier(deadline, _deadline(self._request_timeout_s)))

        # Subscribe first, then read the job: an end after the subscription comes as
        # an event, an end before it shows in the job. (Replaying with since=0 would
        # also replay the ends of earlier runs of a job that was retried since.)
        request("events.subscribe", {"jobs": [job_id]})
        current = Job.from_wire(request("job.get", {"job_id": job_id}))
        if current.is_terminal:
            # It ended before the answer: the progress that came first is still owed to the caller.
            for note in connection.buffered_notifications():
                event = Event.from_wire(note.params) if note.method == "event" else None
                if event is not None and event.job_id == job_id and event.progress is not None:
                    watch.saw_progress(event.progress)
            request("events.unsubscribe", {})
            connection.clear_notifications()
            return current
        watch.saw(current)
        while True:
            note = connection.next_notification(deadline)
            if note.method != "event":
                continue
            event = Event.from_wire(note.params)
            final: Job | None = None
            if event.type == "gap":
                # Events were dropped, maybe our final one: ask for the job itself.
                current = Job.from_wire(request("job.get", {"job_id": job_id}))
                final = current if current.is_terminal else None
                if final is None:
                    watch.saw(current)
            elif event.job_id != job_id:
                continue
            elif event.type == "job.progress" and event.progress is not None:
                watch.saw_progress(event.progress)
            elif event.type == "job.state" and event.state is not None and event.state in TERMINAL_JOB_STATES:
                final = event.job if event.job is not None and event.job.job_id == job_id else None
                if final is None or not final.is_terminal:
                    final = Job.from_wire(request("job.get", {"job_id": job_id}))
            elif event.type == "job.state" and event.state is not None:
                changed = event.job if event.job is not None and event.job.job_id == job_id else None
                watch.saw(changed or Job.from_wire(request("job.get", {"job_id": job_id})))
            if final is not None:
                request("events.unsubscribe", {})
                connection.clear_notifications()
                return final

    def _finished(self, job: Job) -> Job:
        """The job if it completed; else the error it ended with."""
        if job.state == "cancelled":
            raise DaemonError("cancelled", f"job {job.job_id} was cancelled", {"job_id": job.job_id})
        if job.state != "completed":
            error = job.error
            code, message = (error.code, error.message) if error else ("internal", f"job {job.job_id} {job.state}")
            data = {**(error.data if error else {}), "job_id": job.job_id}
            if code == "timeout":
                raise DaemonTimeoutError(message, transfer_id=job.job_id, data=data)
            raise DaemonError(code, message, data)
        return job

    def _content_digest(self, job: Job, size: int) -> tuple[int, str | None]:
        """Size and SHA-256 of the uploaded content, from the asset, for a daemon whose job lacks them."""
        try:
            asset = self.get_metadata(job.asset_id or "")
        except DaemonError:
            return size, None
        latest = asset.latest_content
        if latest is None or latest.content_id != job.content_id:
            return size, None
        return latest.size, latest.sha256


class _Watch:
    """What one wait saw of its job: the latest state (for ``on_state`` and a timeout's
    message) and the latest progress (for the last event's rate)."""

    def __init__(self, job: Job, on_progress: ProgressCallback | None, on_state: StateCallback | None) -> None:
        self.job = job
        self.last_progress: ProgressEvent | None = None
        self._on_progress = on_progress
        self._on_state = on_state
        self._told: tuple[str, JobWaiting | None] | None = None

    def saw(self, job: Job) -> None:
        """The job as a state event or ``job.get`` gave it; tell ``on_state`` if it differs."""
        self.job = job
        seen = (job.state, job.waiting)
        if seen != self._told:
            self._told = seen
            if self._on_state is not None:
                self._on_state(job)

    def saw_progress(self, progress: ProgressEvent) -> None:
        self.last_progress = progress
        job = self.job
        # A waiting job that failed again says so in a progress event: a new reason or
        # retry time, the same state. Changes of state come from state events only.
        if progress.state == job.state and progress.waiting is not None and progress.waiting != job.waiting:
            raw = {**job.raw, "waiting": progress.waiting.raw, "bytes_done": progress.bytes_done}
            self.saw(dataclasses.replace(job, waiting=progress.waiting, bytes_done=progress.bytes_done, raw=raw))
        if self._on_progress is not None:
            self._on_progress(progress)


def describe_state(job: Job) -> str:
    """Where a job is, for a person: its state, and why it waits or what went wrong last."""
    text = f"it is {job.state}"
    if job.waiting is not None:
        text += f": {job.waiting.reason or job.waiting.code}"
        if job.waiting.retry_at is not None:
            text += f" (next retry at {_iso(job.waiting.retry_at)})"
    elif job.error is not None:
        text += f", last error: [{job.error.code}] {job.error.message}"
    elif job.bytes_total:
        text += f", {job.bytes_done} of {job.bytes_total} bytes done"
    return text


def state_data(job: Job) -> dict[str, Any]:
    """A job's ``state``, ``waiting`` and ``error`` as a timeout's ``data`` carries them."""
    waiting = job.waiting
    return {
        "state": job.state,
        "waiting": None if waiting is None else {
            "code": waiting.code,
            "reason": waiting.reason,
            "retry_at": None if waiting.retry_at is None else _iso(waiting.retry_at),
        },
        "error": None if job.error is None else {"code": job.error.code, "message": job.error.message},
    }


def average_rate(job: Job, last: ProgressEvent | None) -> float:
    """The rate of a completed transfer, in bytes a second, for its last ``ProgressEvent``.

    The daemon's last progress event of a run carries the run's average; a
    wait that did not see it (the job ended before the wait began) reckons
    the bytes over the job's life, from ``created_at`` to ``updated_at``.
    A deduplicated upload sent no bytes: 0.
    """
    if job.deduplicated:
        return 0.0
    if last is not None and last.bytes_done >= job.bytes_total and last.rate_bps > 0:
        return last.rate_bps
    if job.created_at is not None and job.updated_at is not None:
        elapsed = (job.updated_at - job.created_at).total_seconds()
        if elapsed > 0:
            return job.bytes_total / elapsed
    return 0.0


def _iso(value: Any) -> str:
    text: str = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


class EventStream(Iterator[Event]):
    """The daemon's events, as ``DataeraiClient.events()`` subscribed to them.

    Iterating blocks until the next event (``ConnectionError`` if the
    connection breaks). A ``gap`` event means events were dropped for this
    subscriber; durable ones can be replayed with a new stream from ``since``.
    ``close()`` unsubscribes; it is also called at the end of a ``with`` block.
    """

    def __init__(self, client: DataeraiClient, connection: Connection, last_event_id: int | None) -> None:
        self._client = client
        self._conn: Connection = connection
        #: The newest event id when the stream began.
        self.last_event_id = last_event_id
        self.closed = False

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> Event:
        with self._client._lock:
            if self.closed:
                raise StopIteration
            if self._gone():
                self._release()
                raise DaemonConnectionError("the connection this event stream was on is gone")
            while True:
                note = self._conn.next_notification(None)
                if note.method == "event":
                    return Event.from_wire(note.params)

    def close(self) -> None:
        """Unsubscribe and stop. Idempotent."""
        with self._client._lock:
            if self.closed:
                return
            self._release()
            if self._gone():
                return
            try:
                self._conn.request("events.unsubscribe", {}, _deadline(self._client._request_timeout_s))
            except (Expired, DaemonError, DaemonConnectionError):
                self._client._drop_connection()
            else:
                self._conn.clear_notifications()

    def _gone(self) -> bool:
        """True when the connection broke or the client moved on to another one."""
        current: Connection | None = self._client._connection
        return self._conn.closed or current is None or current is not self._conn

    def _release(self) -> None:
        self.closed = True
        if self._client._stream is self:
            self._client._stream = None

    def __enter__(self) -> EventStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


#: The other spelling of the class name; the very same class.
DataEraiClient = DataeraiClient


def asset_query(project_id: str | None, collection_id: str | None, path_prefix: str | None, glob: str | None,
                page_size: int) -> dict[str, Any]:
    """``asset.list``'s parameters (both clients' ``list_assets``)."""
    if (project_id is None) == (collection_id is None):
        raise _invalid("give exactly one of project_id and collection_id")
    params: dict[str, Any] = {"limit": page_size}
    for key, value in (("project_id", project_id), ("collection_id", collection_id),
                       ("path_prefix", path_prefix), ("glob", glob)):
        if value is not None:
            params[key] = value
    return params


def files_query(asset_id: str, prefix: str | None, content_id: str | None, page_size: int) -> dict[str, Any]:
    """``asset.files``'s parameters for a listing (both clients' ``list_files``)."""
    params: dict[str, Any] = {"asset_id": asset_id, "limit": page_size}
    if prefix is not None:
        params["prefix"] = prefix
    if content_id is not None:
        params["content_id"] = content_id
    return params


def file_of_page(item: Any, page: dict[str, Any]) -> FileInfo:
    return FileInfo.from_wire(item, content_id=page.get("content_id"))


def watch_files_query(watch_id: str, states: Iterable[str] | None, page_size: int) -> dict[str, Any]:
    """``watch.files``'s parameters (both clients' ``watch_files``)."""
    params: dict[str, Any] = {"watch_id": _checked_id("watch", "watch_id", watch_id)}
    limit = _MAX_WATCH_FILES_PAGE
    if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= limit:
        raise _invalid_param("page_size", f"page_size must be an int from 1 to {limit}, not {page_size!r}")
    params["limit"] = page_size
    if states is not None:
        wanted = [states] if isinstance(states, str) else list(states)
        unknown = [s for s in wanted if s not in WATCH_FILE_STATES]
        if unknown:
            raise _invalid_param(
                "states", f"unknown file states {unknown!r}: each must be one of {', '.join(WATCH_FILE_STATES)}"
            )
        params["states"] = wanted
    return params


def _invalid_param(param: str, message: str) -> DaemonError:
    """``invalid_argument`` naming the parameter, as the daemon's own (``data.param``)."""
    return DaemonError("invalid_argument", message, {"param": param})


def _checked_id(kind: str, param: str, value: Any) -> str:
    problem = id_problem(kind, value)
    if problem is not None:
        raise _invalid_param(param, f"{param} {problem}, not {value!r}")
    result: str = value
    return result


def _flag(param: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _invalid_param(param, f"{param} must be True or False, not {value!r}")
    return value


def _local_dir(value: Any, param: str) -> str:
    """A local path made absolute (``~`` expanded), as the daemon, with another working directory, needs it."""
    if not isinstance(value, (str, os.PathLike)):
        raise _invalid_param(param, f"{param} must be a path, not {value!r}")
    path = os.path.abspath(os.path.expanduser(os.fspath(value)))
    problem = local_path_problem(path)
    if problem is not None:
        raise _invalid_param(param, f"{param} {problem}")
    return path


def _complete_when(rule: Any) -> str:
    """The rule's name checked here; its argument (a duration, a file name) is the daemon's to judge."""
    if not isinstance(rule, str):
        raise _invalid_param("complete_when", f"complete_when must be a string, not {rule!r}")
    name, colon, argument = rule.partition(":")
    if name not in COMPLETION_RULES or (name == "close") == bool(colon) or (colon and not argument.strip()):
        raise _invalid_param(
            "complete_when", f"complete_when must be 'close', 'stable:DURATION' or 'sentinel:NAME', not {rule!r}"
        )
    return rule


def _after_upload(action: Any) -> str:
    if not isinstance(action, str):
        raise _invalid_param("after_upload", f"after_upload must be a string, not {action!r}")
    name, colon, directory = action.partition(":")
    if name not in AFTER_UPLOAD_ACTIONS or (name == "move") != bool(colon) or (colon and not directory):
        raise _invalid_param("after_upload", f"after_upload must be 'keep', 'move:DIR' or 'delete', not {action!r}")
    if name == "move":
        return "move:" + _local_dir(directory, "after_upload")
    return action


def _excludes(excludes: Iterable[str]) -> list[str]:
    if isinstance(excludes, str):
        raise _invalid_param("excludes", "excludes must be a list of patterns, not one string")
    result = list(excludes)
    if not all(isinstance(pattern, str) and pattern for pattern in result):
        raise _invalid_param("excludes", "excludes must all be non-empty strings")
    if len(result) > MAX_EXCLUDES:
        raise _invalid_param("excludes", f"excludes may hold at most {MAX_EXCLUDES} patterns, not {len(result)}")
    return result


def _rescan_interval(seconds: Any) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (
        MIN_RESCAN_INTERVAL_S <= seconds <= MAX_RESCAN_INTERVAL_S
    ):
        raise _invalid_param(
            "rescan_interval_s",
            f"rescan_interval_s must be a number of seconds from {MIN_RESCAN_INTERVAL_S:g}"
            f" to {MAX_RESCAN_INTERVAL_S:g}, not {seconds!r}",
        )
    return float(seconds)


def _metadata_template(template: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """The template as a dict: a mapping as it is, a path read as TOML."""
    if isinstance(template, Mapping):
        return dict(template)
    if not isinstance(template, (str, os.PathLike)):
        raise _invalid_param("metadata_template", f"metadata_template must be a dict or a TOML file's path, "
                                                  f"not {template!r}")
    path = os.path.abspath(os.path.expanduser(os.fspath(template)))
    try:
        # Imported by name: tomllib is in the standard library from Python 3.11 on only.
        tomllib = importlib.import_module("tomllib")
    except ImportError:
        raise _invalid_param(
            "metadata_template",
            f"reading the TOML file {path} needs Python 3.11 or later (tomllib); on this Python pass"
            " metadata_template as a dict (read it with the tomli package, for example)",
        ) from None
    try:
        with open(path, "rb") as file:
            parsed: object = tomllib.load(file)
    except FileNotFoundError:
        raise DaemonError("not_found", f"no such file: {path}", {"param": "metadata_template"}) from None
    except OSError as exc:
        raise DaemonError("io_error", f"cannot read {path}: {exc.strerror or exc}",
                          {"param": "metadata_template"}) from None
    except tomllib.TOMLDecodeError as exc:
        raise _invalid_param("metadata_template", f"{path} is not valid TOML: {exc}") from None
    if not isinstance(parsed, dict):  # pragma: no cover - tomllib always gives a table
        raise _invalid_param("metadata_template", f"{path} is not a TOML table")
    return parsed


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _earlier(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _upload_target(
    title: str | None, owner_type: str | None, owner_id: str | None, asset_id: str | None
) -> dict[str, str]:
    """The ``upload.start`` parameters that say where an upload goes, those given.

    A new asset needs all of ``title``, ``owner_type`` and ``owner_id``; a new version of
    ``asset_id`` needs none (the daemon checks that a given owner is whole and the asset's).
    """
    given = {"title": title, "owner_type": owner_type, "owner_id": owner_id}
    if asset_id is None:
        missing = [name for name, value in given.items() if value is None]
        if missing:
            raise _invalid(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required "
                           "unless asset_id names an existing asset to make a new version of")
    if owner_type is not None and owner_type not in OWNER_TYPES:
        raise _invalid(f"owner_type must be one of {', '.join(sorted(OWNER_TYPES))}, not {owner_type!r}")
    target = {name: value for name, value in given.items() if value is not None}
    if asset_id is not None:
        target["asset_id"] = asset_id
    return target


#: The arguments an item of ``upload_many`` / ``download_many`` may hold.
_UPLOAD_ITEM_KEYS: Final = frozenset({
    "local_path", "title", "owner_type", "owner_id", "description", "alias", "tags", "metadata", "collection_id",
    "asset_id", "path", "chunk_size_mb", "priority", "window",
})
_DOWNLOAD_ITEM_KEYS: Final = frozenset({"asset_id", "dest_dir", "content_id", "overwrite", "priority", "window"})


def _window(window: str) -> str:
    """A transfer window is the daemon's to parse (one grammar, docs/job-states.md); here only its type."""
    if not isinstance(window, str):
        raise _invalid_param("window", f"window must be a string like 'Mon-Fri 20:00-06:00', not {window!r}")
    return window


def _priority(priority: int) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise _invalid_param("priority", f"priority must be an int, not {priority!r}")
    return priority


def _tags(tags: Iterable[str]) -> list[str]:
    if isinstance(tags, str):
        raise _invalid_param("tags", "tags must be a list of strings, not one string")
    result = list(tags)
    if not all(isinstance(tag, str) for tag in result):
        raise _invalid_param("tags", "tags must all be strings")
    return result
