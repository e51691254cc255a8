"""The HTTP routes of ``/api/v1`` (the contract is ``docs/http-api.md``).

The routes are made from the operation table (``operations.py``): one route per path,
whose endpoint authenticates the bearer token (or leaves the URL signature to the
handler), parses the part number, query and body with the operation's models
(``schemas``, ``validation``), and calls the handler, which calls the service functions
and returns JSON.
Errors are raised as :class:`~dataerai_server.errors.ApiError` from anywhere and
rendered in one place; anything else becomes a logged ``internal`` error.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar, cast
from urllib.parse import urlencode

import anyio
import structlog
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route, Router
from starlette.types import Message, Receive, Scope, Send

from . import __version__, assets, deletions, project_collections, projects, relationships, schemas, validation
from .auth import Bearer, Principal, bearer_token, callers
from .clock import from_unix, isoformat, parse_timestamp
from .db import Together
from .errors import ApiError, error_response, http_exception_handler, internal_error
from .logs import request_log_fields
from .models import Content
from .openapi import openapi_bytes
from .operations import PREFIX, Operation, operations_by_path
from .services import Services
from .streaming import StreamedBody, Unsatisfiable, parse_range
from .uploads import NewUpload

log = structlog.get_logger(__name__)


def _route_path(template: str, **params: str | int) -> str:
    return PREFIX + template.format(**params)


def _absolute(request: Request, path: str, query: dict[str, str]) -> str:
    """A URL on this server as the client reached it (scheme and Host of the request)."""
    return str(request.base_url).rstrip("/") + path + "?" + urlencode(query)


def _expires_at(query: dict[str, str]) -> str | None:
    return isoformat(from_unix(int(query["expires"])))


M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    """One request as its operation parsed it: the caller, the part number, the body and query.

    A handler takes what its operation declares with :meth:`body_as` and :meth:`query_as`,
    which also check that the handler and the table (``operations.py``) agree.
    """

    operation: Operation
    who: Principal | None = None
    number: int | None = None
    body: BaseModel | None = None
    query: BaseModel | None = None
    #: The bearer token, not looked up yet: the handler does so in its own transaction
    #: (:attr:`bearer`).
    token: str | None = None

    @property
    def bearer(self) -> Bearer:
        """The token not looked up yet, for a handler whose first query reads it too."""
        assert self.token is not None and self.operation.scope is not None
        return Bearer(self.token, self.operation.scope)

    @property
    def principal(self) -> Principal:
        assert self.who is not None, f"{self.operation.handler} takes no token"
        return self.who

    def body_as(self, model: type[M]) -> M:
        assert isinstance(self.body, model), f"{self.operation.handler} declares {self.operation.body}"
        return self.body

    def query_as(self, model: type[M]) -> M:
        assert isinstance(self.query, model), f"{self.operation.handler} declares {self.operation.query}"
        return self.query

    def signed_query(self, request: Request, model: type[M]) -> M:
        """The query of a signed URL, read after its signature was checked."""
        assert self.operation.query is model
        return validation.parse_query(model, request.query_params)

    @property
    def part_number(self) -> int:
        assert self.number is not None
        return self.number


Handler = Callable[[Request, Call], Awaitable[Response]]


def _caller(session: Session, who: Principal) -> Principal:
    return who


#: Handlers that look the token up in their own first transaction (``Call.bearer``):
#: the requests a fleet makes most, one per part (docs/server.md, "Requests per CPU second").
_AUTHENTICATED_WITH_ITS_WORK: Final = frozenset({"part_target", "create_upload", "complete_upload", "get_asset"})
#: The most reads (each with its caller's token) that share a transaction.
READS_PER_TRANSACTION: Final = 64


@dataclass(frozen=True)
class _ReadAs(Generic[T]):
    """A read made as the caller whose token ``bearer`` holds, looked up in the same transaction."""

    bearer: Bearer
    read: Callable[[Session, Principal], T]


def _read_as_callers(session: Session, asks: list[_ReadAs[Any]]) -> list[Any]:
    """Each ask's read, or the ``ApiError`` that is its own (its token's first): the tokens of
    all of them in one statement, then each read in turn."""
    outcomes: list[Any] = []
    for ask, who in zip(asks, callers(session, [ask.bearer for ask in asks]), strict=True):
        if isinstance(who, ApiError):
            outcomes.append(who)
            continue
        try:
            outcomes.append(ask.read(session, who))
        except SQLAlchemyError:
            raise  # the transaction may be unusable: the batch goes again, ask by ask
        except Exception as exc:
            outcomes.append(exc)
    return outcomes


class Api:
    """The endpoints, bound to the server's :class:`~dataerai_server.services.Services`."""

    def __init__(self, services: Services) -> None:
        self.s = services
        # Reads that arrive at the same moment (each with its token) share a transaction and a
        # thread hop: every token looked up first, and the reads of a handler that needs one.
        self._reads: Together[_ReadAs[Any], Any] = Together(
            services.db.read, _read_as_callers, most=READS_PER_TRANSACTION)

    async def who(self, request: Request, scope: str) -> Principal:
        """Authenticate the bearer token and require ``scope``."""
        bearer = Bearer(bearer_token(request.headers.get("authorization")), scope)
        return cast(Principal, await self._reads(_ReadAs(bearer, _caller)))

    async def read_as(self, call: Call, read: Callable[[Session, Principal], T]) -> T:
        """``read(session, caller)`` with the caller's token looked up in the same transaction,
        for a handler in :data:`_AUTHENTICATED_WITH_ITS_WORK`."""
        return cast(T, await self._reads(_ReadAs(call.bearer, read)))

    async def _call(self, request: Request, operation: Operation) -> Call:
        """Parse the request as ``operation`` declares, in the order errors are reported:
        the token, the part number, the query, the body.

        An operation in :data:`_AUTHENTICATED_WITH_ITS_WORK` has its token looked up in the
        same transaction as its own first query (``Call.token``), which saves a transaction
        and a thread hop per request; if its request is malformed, the token is looked up
        first all the same, so the errors come in the same order.
        """
        if operation.scope is not None and operation.handler in _AUTHENTICATED_WITH_ITS_WORK:
            try:
                parsed = await self._parse(request, operation, None)
            except ApiError:
                await self.who(request, operation.scope)
                raise
            token = bearer_token(request.headers.get("authorization"))
            return Call(operation, None, parsed.number, parsed.body, parsed.query, token=token)
        who = None if operation.scope is None else await self.who(request, operation.scope)
        return await self._parse(request, operation, who)

    async def _parse(self, request: Request, operation: Operation, who: Principal | None) -> Call:
        validation.check_path_parameters(request.path_params)
        number = None
        if "number" in operation.path_parameters:
            number = validation.path_number(request.path_params["number"])
        query = None
        if operation.query is not None and operation.access != "signed":
            query = validation.parse_query(operation.query, request.query_params)
        body = None
        if operation.body is not None:
            body = validation.parse_body(operation.body, await validation.read_body(request, operation.body_limit))
        return Call(operation, who, number, body, query)

    def _endpoint(self, methods: Mapping[str, Operation]) -> Callable[[Request], Awaitable[Response]]:
        """One endpoint for every method of a path, so that a 405 lists them all in ``Allow``."""
        handlers: dict[str, tuple[Operation, Handler]] = {
            method: (operation, getattr(self, operation.handler)) for method, operation in methods.items()
        }
        if "GET" in handlers:
            handlers.setdefault("HEAD", handlers["GET"])

        async def endpoint(request: Request) -> Response:
            operation, handler = handlers[request.method]
            return await handler(request, await self._call(request, operation))

        return endpoint

    def routes(self) -> list[Route]:
        return [
            Route(path, self._endpoint(methods), methods=list(methods))
            for path, methods in operations_by_path().items()
        ]

    # --- health, identity, schema ---------------------------------------------------

    async def health(self, request: Request, call: Call) -> Response:
        return JSONResponse({"status": "ok", "version": __version__})

    async def openapi(self, request: Request, call: Call) -> Response:
        return Response(openapi_bytes(__version__), media_type="application/json")

    async def me(self, request: Request, call: Call) -> Response:
        who = call.principal
        return JSONResponse(
            {
                "user_id": who.user_id,
                "email": who.email,
                "scopes": list(who.scopes),
                "token_expires_at": isoformat(who.token_expires_at),
            }
        )

    # --- projects ---------------------------------------------------------------------

    async def create_project(self, request: Request, call: Call) -> Response:
        who, body = call.principal, call.body_as(schemas.NewProject)
        allocation = self.s.settings.default_allocation_bytes
        view = await self.s.db.write(
            lambda session: projects.create_project(session, who, body.name, body.description, allocation)
        )
        return JSONResponse(view, status_code=201)

    async def get_project(self, request: Request, call: Call) -> Response:
        who, project_id = call.principal, request.path_params["project_id"]
        return JSONResponse(await self.s.db.read(lambda session: projects.get_project(session, who, project_id)))

    async def list_projects(self, request: Request, call: Call) -> Response:
        who = call.principal
        return JSONResponse({"projects": await self.s.db.read(lambda session: projects.list_projects(session, who))})

    async def list_members(self, request: Request, call: Call) -> Response:
        who, project_id = call.principal, request.path_params["project_id"]
        members = await self.s.db.read(lambda session: projects.list_members(session, who, project_id))
        return JSONResponse({"members": members})

    async def set_member(self, request: Request, call: Call) -> Response:
        who, body = call.principal, call.body_as(schemas.NewMember)
        project_id = request.path_params["project_id"]
        member, added = await self.s.db.write(
            lambda session: projects.set_member(session, who, project_id, body.email, body.role)
        )
        return JSONResponse(member, status_code=201 if added else 200)

    # --- collections ------------------------------------------------------------------

    async def create_collection(self, request: Request, call: Call) -> Response:
        who, body = call.principal, call.body_as(schemas.NewCollection)
        view = await self.s.db.write(
            lambda session: project_collections.create_collection(
                session, who, body.project_id, body.name, body.parent_id
            )
        )
        return JSONResponse(view, status_code=201)

    async def get_collection(self, request: Request, call: Call) -> Response:
        who, collection_id = call.principal, request.path_params["collection_id"]
        return JSONResponse(
            await self.s.db.read(lambda session: project_collections.get_collection(session, who, collection_id))
        )

    async def list_collections(self, request: Request, call: Call) -> Response:
        who, project_id = call.principal, request.path_params["project_id"]
        found = await self.s.db.read(lambda session: project_collections.list_collections(session, who, project_id))
        return JSONResponse({"collections": found})

    # --- assets and content -----------------------------------------------------------

    async def get_asset(self, request: Request, call: Call) -> Response:
        asset_id = request.path_params["asset_id"]
        return JSONResponse(await self.read_as(call, lambda session, who: assets.get_asset(session, who, asset_id)))

    async def list_assets(self, request: Request, call: Call) -> Response:
        who, query = call.principal, call.query_as(schemas.AssetListQuery)
        wanted = assets.AssetQuery(
            project_id=query.project_id,
            collection_id=query.collection_id,
            path_prefix=query.path_prefix,
            glob=query.glob,
            limit=query.limit,
            cursor=query.cursor,
        )
        return JSONResponse(await self.s.db.read(lambda session: assets.list_assets(session, who, wanted)))

    async def delete_asset(self, request: Request, call: Call) -> Response:
        who, asset_id = call.principal, request.path_params["asset_id"]
        keys = await self.s.db.write(lambda session: assets.delete_asset(session, who, asset_id))
        # After the commit, and shielded: the rows are gone, so the bytes go now, whether or
        # not the client waits; what fails stays queued for the sweep (deletions.py).
        with anyio.CancelScope(shield=True):
            await deletions.delete_queued(self.s.db, self.s.storage, keys)
        return Response(status_code=204)

    async def asset_files(self, request: Request, call: Call) -> Response:
        who, query = call.principal, call.query_as(schemas.AssetFilesQuery)
        asset_id = request.path_params["asset_id"]
        exact = query.path
        if exact is not None:
            return JSONResponse(
                await self.s.db.read(
                    lambda session: assets.file_info(session, who, asset_id, query.content_id, exact)
                )
            )
        return JSONResponse(
            await self.s.db.read(
                lambda session: assets.list_files(
                    session, who, asset_id, query.content_id, query.prefix, query.limit, query.cursor
                )
            )
        )

    async def create_relationship(self, request: Request, call: Call) -> Response:
        who, body = call.principal, call.body_as(schemas.NewRelationship)
        from_asset_id = request.path_params["asset_id"]
        qualifier_time = None
        if body.qualifier_time is not None:
            qualifier_time = parse_timestamp(body.qualifier_time)
            if qualifier_time is None:
                raise validation.bad("qualifier_time", "must be an ISO-8601 timestamp such as 2026-11-30T12:00:00Z")
        new = relationships.NewRelationship(
            to_asset_id=body.to_asset_id,
            rel_type=body.rel_type,
            analysis_mode=body.analysis_mode,
            qualifier_note=body.qualifier_note,
            qualifier_time=qualifier_time,
            qualifiers=body.qualifiers,
        )
        view = await self.s.db.write(
            lambda session: relationships.create_relationship(session, who, from_asset_id, new)
        )
        return JSONResponse(view, status_code=201)

    async def list_relationships(self, request: Request, call: Call) -> Response:
        who, asset_id = call.principal, request.path_params["asset_id"]
        found = await self.s.db.read(lambda session: relationships.list_relationships(session, who, asset_id))
        return JSONResponse({"relationships": found})

    async def patch_asset(self, request: Request, call: Call) -> Response:
        who, changes = call.principal, call.body_as(schemas.AssetPatch).changes()
        asset_id = request.path_params["asset_id"]
        view = await self.s.db.write(lambda session: assets.patch_asset(session, who, asset_id, changes))
        return JSONResponse(view)

    async def download(self, request: Request, call: Call) -> Response:
        who, content_id = call.principal, call.query_as(schemas.DownloadQuery).content_id
        asset_id = request.path_params["asset_id"]
        content, files = await self.s.db.read(
            lambda session: assets.download_source(session, who, asset_id, content_id)
        )
        ttl = self.s.settings.url_ttl_seconds
        direct = self.s.storage.content_url(content.storage_key, ttl)
        if direct is not None:
            url, headers = direct.url, dict(direct.headers)
            expires_at = isoformat(from_unix(time.time() + ttl))
        else:
            path = _route_path("/contents/{content_id}/data", content_id=content.id)
            query = self.s.signer.sign("GET", path, ttl)
            url, headers, expires_at = _absolute(request, path, query), {}, _expires_at(query)
        return JSONResponse(
            {
                "content_id": content.id,
                "size": content.size,
                "sha256": content.sha256,
                "file_name": content.file_name,
                "files": files,
                "url": url,
                "headers": headers,
                "expires_at": expires_at,
            }
        )

    async def content_data(self, request: Request, call: Call) -> Response | StreamedBody:
        # Logged for every content read, so that ranged reads can be counted from the log.
        request_log_fields(request.scope)["range"] = request.headers.get("range")
        content_id = request.path_params["content_id"]
        path = _route_path("/contents/{content_id}/data", content_id=content_id)
        self.s.signer.verify("GET", path, request.query_params)
        call.signed_query(request, schemas.ContentQuery)
        content = await self.s.db.read(lambda session: session.get(Content, content_id))
        if content is None:
            raise ApiError("not_found", f"no content {content_id!r}", content_id=content_id)
        headers = {
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "X-Content-SHA256": content.sha256,
            "ETag": f'"{content.sha256}"',
        }
        try:
            wanted = parse_range(request.headers.get("range"), content.size)
        except Unsatisfiable:
            raise ApiError(
                "invalid_argument",
                f"the range lies outside the content's {content.size} bytes",
                status=416,
                headers={**headers, "Content-Range": f"bytes */{content.size}"},
                size=content.size,
            ) from None
        start, length, status = (0, content.size, 200) if wanted is None else (wanted.start, wanted.length, 206)
        headers["Content-Length"] = str(length)
        if wanted is not None:
            headers["Content-Range"] = wanted.content_range
        storage, key = self.s.storage, content.storage_key
        return StreamedBody(status, headers, lambda: storage.read_range(key, start, length))

    # --- uploads ------------------------------------------------------------------------

    async def create_upload(self, request: Request, call: Call) -> Response:
        body = call.body_as(schemas.NewUpload)
        new = NewUpload(
            owner_type=body.owner_type,
            owner_id=body.owner_id,
            file_name=body.file_name,
            size=body.size,
            part_size=body.part_size,
            sha256=body.sha256,
            idempotency_key=body.idempotency_key,
            asset_id=body.asset_id,
            collection_id=body.collection_id,
            title=body.title,
            description=body.description,
            alias=body.alias,
            tags=list(body.tags or ()),
            metadata=dict(body.metadata or {}),
            path=body.path,
            files=None if body.files is None else [dict(entry) for entry in body.files],
        )
        view, created = await self.s.uploads.create(call.bearer, new)
        return JSONResponse(view, status_code=201 if created else 200)

    async def get_upload(self, request: Request, call: Call) -> Response:
        return JSONResponse(await self.s.uploads.get(call.principal, request.path_params["upload_id"]))

    async def abort_upload(self, request: Request, call: Call) -> Response:
        await self.s.uploads.abort(call.principal, request.path_params["upload_id"])
        return Response(status_code=204)

    async def part_target(self, request: Request, call: Call) -> Response:
        body, number = call.body_as(schemas.PartTargetRequest), call.part_number
        upload_id = request.path_params["upload_id"]
        digest_field = "sha256" if body.sha256 is not None else "prefix_sha256"
        sha256 = body.prefix_sha256 or body.sha256
        assert sha256 is not None  # the model takes exactly one of the two
        ttl = self.s.settings.url_ttl_seconds
        direct = await self.s.uploads.part_target(
            call.bearer, upload_id, number, body.size, sha256, prefix=body.prefix_sha256 is not None
        )
        if direct is not None:
            expires_at = isoformat(from_unix(time.time() + ttl))
            return JSONResponse(
                {"method": direct.method, "url": direct.url, "headers": dict(direct.headers), "expires_at": expires_at}
            )
        path = _route_path("/uploads/{upload_id}/parts/{number}", upload_id=upload_id, number=number)
        query = self.s.signer.sign("PUT", path, ttl, {digest_field: sha256, "size": str(body.size)})
        return JSONResponse(
            {
                "method": "PUT",
                "url": _absolute(request, path, query),
                "headers": {"Content-Length": str(body.size)},
                "expires_at": _expires_at(query),
            }
        )

    async def put_part(self, request: Request, call: Call) -> Response:
        upload_id = request.path_params["upload_id"]
        number = call.part_number
        path = _route_path("/uploads/{upload_id}/parts/{number}", upload_id=upload_id, number=number)
        # The signature covers the field's name too: a part's own digest and its prefix
        # digest cannot stand in for each other.
        prefix = "prefix_sha256" in request.query_params
        digest_field = "prefix_sha256" if prefix else "sha256"
        self.s.signer.verify("PUT", path, request.query_params, (digest_field, "size"))
        # Signed by us, so well-formed; checked anyway rather than trusted to be.
        query = call.signed_query(request, schemas.PartQuery)
        sha256, size = query.prefix_sha256 if prefix else query.sha256, query.size
        if sha256 is None:
            raise ApiError("invalid_argument", "malformed part URL; ask for a new one")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isascii() and declared.isdigit() and int(declared) != size:
            raise ApiError(
                "checksum_mismatch",
                f"Content-Length is {declared}, but part {number} is {size} bytes",
                expected_size=size,
                actual_size=int(declared),
                number=number,
            )
        result = await self.s.uploads.put_part(upload_id, number, size, sha256, request.stream(), prefix=prefix)
        return JSONResponse(result)

    async def complete_upload(self, request: Request, call: Call) -> Response:
        body = call.body_as(schemas.Completion)
        upload_id = request.path_params["upload_id"]
        return JSONResponse(
            await self.s.uploads.complete(call.bearer, upload_id, body.idempotency_key, body.sha256,
                                          body.file_sha256,
                                          None if body.parts is None else {p.number: p.etag for p in body.parts})
        )

    async def dedup_challenge(self, request: Request, call: Call) -> Response:
        who, body = call.principal, call.body_as(schemas.DedupRequest)
        return JSONResponse(await self.s.uploads.dedup_challenge(who, request.path_params["upload_id"], body.sha256))

    async def dedup_prove(self, request: Request, call: Call) -> Response:
        who, body = call.principal, call.body_as(schemas.DedupProof)
        upload_id, challenge_id = request.path_params["upload_id"], request.path_params["challenge_id"]
        return JSONResponse(
            await self.s.uploads.dedup_prove(
                who, upload_id, challenge_id, body.digests, body.idempotency_key, body.file_sha256
            )
        )


class RequestLog:
    """The application: routes each request and logs one line for it; the only layer
    between the server (``bodies.CloseOnLargeUnreadBody``) and the endpoints.

    The line (event ``request``) has ``method``, ``path``, ``status``, ``bytes`` (response
    body bytes handed to the server) and ``duration_ms``, plus what the handler put into
    :func:`~dataerai_server.logs.request_log_fields` (``range`` for content reads). It
    has ``"client_disconnected": true`` when the client went away mid-request, and the
    traceback (at level ``error``) when the request failed. Never the query (signatures)
    or a header that may carry a secret (tokens).

    It also renders errors: an :class:`ApiError` from anywhere, Starlette's own 404 and 405
    (``HTTPException``) in the API's shape, anything else as ``internal``. This is what
    Starlette's application did with a middleware stack of four layers (its error
    middleware, this log, its exception middleware, and a wrapper per endpoint), each a
    call, a closure and a ``Request`` per request: one plain ASGI callable costs a fraction
    of that (docs/server.md, "Requests per CPU second"). Streamed bodies pass through
    untouched.
    """

    def __init__(self, routes: Sequence[Route]) -> None:
        self._routes = tuple(routes)
        # Whatever does not match a route exactly (404, 405, a trailing slash redirected) is
        # left to Starlette's router, so those answers stay exactly Starlette's.
        self._router = Router(routes=list(routes))

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        for route in self._routes:
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                scope.update(child_scope)
                response = await route.endpoint(Request(scope, receive, send))
                await response(scope, receive, send)
                return
        await self._router(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._router(scope, receive, send)  # lifespan
            return
        # With an application in the scope, the router raises its 404 and 405 as
        # HTTPException (rendered below) instead of answering in plain text.
        scope["app"] = self
        started = time.perf_counter()
        status: int | None = None
        sent = 0
        fields = request_log_fields(scope)
        failure: Exception | None = None

        async def send_tracking(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            try:
                await self._dispatch(scope, receive, send_tracking)
            except (ApiError, HTTPException) as exc:
                if status is not None:
                    raise  # the response is under way: below, as any failure then
                if isinstance(exc, ApiError):
                    answer = error_response(exc)
                else:
                    answer = await http_exception_handler(Request(scope, receive), exc)
                await answer(scope, receive, send_tracking)
        except ClientDisconnect:
            fields["client_disconnected"] = True
        except Exception as exc:
            failure = exc
            if status is None:
                await error_response(internal_error())(scope, receive, send_tracking)
            # else: the response is already under way; ending here makes the server cut the
            # connection, which tells the client the body is incomplete.
        finally:
            # One line per request, whatever happened, so that counting lines counts requests.
            line = {
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "bytes": sent,
                **fields,
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            }
            if failure is not None:
                log.error("request", exc_info=failure, **line)
            else:
                log.info("request", **line)


def create_app(services: Services) -> RequestLog:
    """The ASGI application over open ``services``."""
    return RequestLog(Api(services).routes())
