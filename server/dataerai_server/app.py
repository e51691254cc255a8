"""The HTTP routes of ``/api/v1`` (the contract is ``docs/http-api.md``).

Each endpoint parses and checks its input (``validation``), authenticates the
bearer token or the URL signature, calls the service functions, and returns JSON.
Errors are raised as :class:`~dataerai_server.errors.ApiError` from anywhere and
rendered in one place; anything else becomes a logged ``internal`` error.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import structlog
import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__, assets, deletions, project_collections, projects, relationships, validation
from .auth import READ, WRITE, Principal, bearer_token, lookup_principal
from .clock import from_unix, isoformat, parse_timestamp, utcnow
from .config import MAX_MANIFEST_JSON_BODY, MAX_PART_SIZE, MIN_PART_SIZE
from .errors import ApiError, api_error_handler, error_response, http_exception_handler, internal_error
from .logs import request_log_fields
from .models import Content
from .openapi import openapi_document
from .services import Services
from .streaming import StreamedBody, Unsatisfiable, parse_range
from .uploads import NewUpload

log = structlog.get_logger(__name__)

PREFIX = "/api/v1"


def _route_path(template: str, **params: str | int) -> str:
    return PREFIX + template.format(**params)


def _absolute(request: Request, path: str, query: dict[str, str]) -> str:
    """A URL on this server as the client reached it (scheme and Host of the request)."""
    return str(request.base_url).rstrip("/") + path + "?" + urlencode(query)


def _expires_at(query: dict[str, str]) -> str | None:
    return isoformat(from_unix(int(query["expires"])))


def _part_number(request: Request) -> int:
    text = request.path_params["number"]
    if not text.isdigit():
        raise ApiError("invalid_argument", f"part number must be a positive integer, not {text!r}", field="number")
    return int(text)


class Api:
    """The endpoints, bound to the server's :class:`~dataerai_server.services.Services`."""

    def __init__(self, services: Services) -> None:
        self.s = services

    async def who(self, request: Request, scope: str) -> Principal:
        """Authenticate the bearer token and require ``scope``."""
        token = bearer_token(request.headers.get("authorization"))
        principal = await self.s.db.read(lambda session: lookup_principal(session, token, utcnow()))
        principal.require(scope)
        return principal

    # --- health, identity, schema ---------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": __version__})

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document(__version__))

    async def me(self, request: Request) -> Response:
        who = await self.who(request, READ)
        return JSONResponse(
            {
                "user_id": who.user_id,
                "email": who.email,
                "scopes": list(who.scopes),
                "token_expires_at": isoformat(who.token_expires_at),
            }
        )

    # --- projects ---------------------------------------------------------------------

    async def create_project(self, request: Request) -> Response:
        who = await self.who(request, WRITE)
        body = await validation.read_json_object(request)
        name = validation.required_string(body, "name", max_length=200)
        if not name.strip():
            raise validation.bad("name", "must not be empty")
        description = validation.string(body, "description", nullable=False, default="") or ""
        allocation = self.s.settings.default_allocation_bytes
        view = await self.s.db.write(
            lambda session: projects.create_project(session, who, name, description, allocation)
        )
        return JSONResponse(view, status_code=201)

    async def get_project(self, request: Request) -> Response:
        who = await self.who(request, READ)
        project_id = request.path_params["project_id"]
        return JSONResponse(await self.s.db.read(lambda session: projects.get_project(session, who, project_id)))

    async def list_projects(self, request: Request) -> Response:
        who = await self.who(request, READ)
        return JSONResponse({"projects": await self.s.db.read(lambda session: projects.list_projects(session, who))})

    async def list_members(self, request: Request) -> Response:
        who = await self.who(request, READ)
        project_id = request.path_params["project_id"]
        members = await self.s.db.read(lambda session: projects.list_members(session, who, project_id))
        return JSONResponse({"members": members})

    async def set_member(self, request: Request) -> Response:
        who = await self.who(request, WRITE)
        project_id = request.path_params["project_id"]
        body = await validation.read_json_object(request)
        validation.reject_unknown(body, ("email", "role"))
        email = validation.required_string(body, "email", max_length=320)
        role = validation.required_string(body, "role", max_length=20)
        if role not in projects.ROLES:
            raise validation.bad("role", f"must be one of {', '.join(projects.ROLES)}")
        member, added = await self.s.db.write(
            lambda session: projects.set_member(session, who, project_id, email, role)
        )
        return JSONResponse(member, status_code=201 if added else 200)

    # --- collections ------------------------------------------------------------------

    async def create_collection(self, request: Request) -> Response:
        who = await self.who(request, WRITE)
        body = await validation.read_json_object(request)
        validation.reject_unknown(body, ("project_id", "name", "parent_id"))
        project_id = validation.required_string(body, "project_id", max_length=40)
        name = validation.required_string(body, "name", max_length=200)
        if not name.strip():
            raise validation.bad("name", "must not be empty")
        parent_id = validation.string(body, "parent_id", max_length=40)
        view = await self.s.db.write(
            lambda session: project_collections.create_collection(session, who, project_id, name, parent_id)
        )
        return JSONResponse(view, status_code=201)

    async def get_collection(self, request: Request) -> Response:
        who = await self.who(request, READ)
        collection_id = request.path_params["collection_id"]
        return JSONResponse(
            await self.s.db.read(lambda session: project_collections.get_collection(session, who, collection_id))
        )

    async def list_collections(self, request: Request) -> Response:
        who = await self.who(request, READ)
        project_id = request.path_params["project_id"]
        found = await self.s.db.read(lambda session: project_collections.list_collections(session, who, project_id))
        return JSONResponse({"collections": found})

    # --- assets and content -----------------------------------------------------------

    async def get_asset(self, request: Request) -> Response:
        who = await self.who(request, READ)
        asset_id = request.path_params["asset_id"]
        return JSONResponse(await self.s.db.read(lambda session: assets.get_asset(session, who, asset_id)))

    async def list_assets(self, request: Request) -> Response:
        who = await self.who(request, READ)
        query = request.query_params
        project_id, collection_id = query.get("project_id") or None, query.get("collection_id") or None
        if (project_id is None) == (collection_id is None):
            raise validation.bad("project_id", "or `collection_id` is required (exactly one of them)")
        glob = query.get("glob") or None
        if glob is not None and len(glob) > 4 * 1024:
            raise validation.bad("glob", "must be at most 4096 characters")
        wanted = assets.AssetQuery(
            project_id=project_id,
            collection_id=collection_id,
            path_prefix=query.get("path_prefix") or None,
            glob=glob,
            limit=validation.query_limit(query, default=assets.DEFAULT_LIMIT, maximum=assets.MAX_LIMIT),
            cursor=query.get("cursor") or None,
        )
        return JSONResponse(await self.s.db.read(lambda session: assets.list_assets(session, who, wanted)))

    async def delete_asset(self, request: Request) -> Response:
        who = await self.who(request, WRITE)
        asset_id = request.path_params["asset_id"]
        keys = await self.s.db.write(lambda session: assets.delete_asset(session, who, asset_id))
        # After the commit, and shielded: the rows are gone, so the bytes go now, whether or
        # not the client waits; what fails stays queued for the sweep (deletions.py).
        with trio.CancelScope(shield=True):
            await deletions.delete_queued(self.s.db, self.s.storage, keys)
        return Response(status_code=204)

    async def asset_files(self, request: Request) -> Response:
        who = await self.who(request, READ)
        asset_id = request.path_params["asset_id"]
        query = request.query_params
        content_id = query.get("content_id") or None
        exact = query.get("path")
        if exact is not None:
            return JSONResponse(
                await self.s.db.read(lambda session: assets.file_info(session, who, asset_id, content_id, exact))
            )
        prefix = query.get("prefix") or None
        limit = validation.query_limit(query, default=assets.DEFAULT_LIMIT, maximum=assets.MAX_LIMIT)
        cursor = query.get("cursor") or None
        return JSONResponse(
            await self.s.db.read(
                lambda session: assets.list_files(session, who, asset_id, content_id, prefix, limit, cursor)
            )
        )

    async def create_relationship(self, request: Request) -> Response:
        who = await self.who(request, WRITE)
        from_asset_id = request.path_params["asset_id"]
        body = await validation.read_json_object(request)
        validation.reject_unknown(
            body, ("to_asset_id", "rel_type", "analysis_mode", "qualifier_note", "qualifier_time", "qualifiers")
        )
        rel_type = validation.required_string(body, "rel_type", max_length=relationships.MAX_REL_TYPE_LENGTH)
        if not rel_type.strip():
            raise validation.bad("rel_type", "must not be empty")
        mode = validation.string(body, "analysis_mode", max_length=20)
        if mode is not None and mode not in relationships.ANALYSIS_MODES:
            raise validation.bad("analysis_mode", f"must be null or one of {', '.join(relationships.ANALYSIS_MODES)}")
        time_text = validation.string(body, "qualifier_time", max_length=100)
        qualifier_time = None
        if time_text is not None:
            qualifier_time = parse_timestamp(time_text)
            if qualifier_time is None:
                raise validation.bad("qualifier_time", "must be an ISO-8601 timestamp such as 2026-11-30T12:00:00Z")
        qualifiers = body.get("qualifiers")
        if qualifiers is not None and not isinstance(qualifiers, dict):
            raise validation.bad("qualifiers", "must be null or a JSON object")
        new = relationships.NewRelationship(
            to_asset_id=validation.required_string(body, "to_asset_id", max_length=40),
            rel_type=rel_type,
            analysis_mode=mode,
            qualifier_note=validation.string(body, "qualifier_note"),
            qualifier_time=qualifier_time,
            qualifiers=qualifiers,
        )
        view = await self.s.db.write(
            lambda session: relationships.create_relationship(session, who, from_asset_id, new)
        )
        return JSONResponse(view, status_code=201)

    async def list_relationships(self, request: Request) -> Response:
        who = await self.who(request, READ)
        asset_id = request.path_params["asset_id"]
        found = await self.s.db.read(lambda session: relationships.list_relationships(session, who, asset_id))
        return JSONResponse({"relationships": found})

    async def patch_asset(self, request: Request) -> Response:
        who = await self.who(request, WRITE)
        asset_id = request.path_params["asset_id"]
        body = await validation.read_json_object(request)
        validation.reject_unknown(body, assets.PATCHABLE)
        changes: dict[str, Any] = {}
        for name in ("title", "description", "alias"):
            if name in body:
                changes[name] = validation.string(body, name, max_length=200 if name == "alias" else 10_000)
        if "tags" in body:
            if body["tags"] is None:
                raise validation.bad("tags", "must be a list of strings")
            changes["tags"] = validation.string_list(body, "tags")
        if "metadata" in body:
            if body["metadata"] is None:
                raise validation.bad("metadata", "must be a JSON object")
            changes["metadata"] = validation.json_object(body, "metadata")
        if "path" in body:
            changes["path"] = validation.path(body, "path", nullable=False)
        view = await self.s.db.write(lambda session: assets.patch_asset(session, who, asset_id, changes))
        return JSONResponse(view)

    async def download(self, request: Request) -> Response:
        who = await self.who(request, READ)
        asset_id = request.path_params["asset_id"]
        content_id = request.query_params.get("content_id") or None
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

    async def content_data(self, request: Request) -> Response | StreamedBody:
        # Logged for every content read, so that ranged reads can be counted from the log.
        request_log_fields(request.scope)["range"] = request.headers.get("range")
        content_id = request.path_params["content_id"]
        path = _route_path("/contents/{content_id}/data", content_id=content_id)
        self.s.signer.verify("GET", path, request.query_params)
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

    async def create_upload(self, request: Request) -> Response:
        who = await self.who(request, WRITE)
        body = await validation.read_json_object(request, max_bytes=MAX_MANIFEST_JSON_BODY)
        asset_id = validation.string(body, "asset_id", max_length=40)
        required = asset_id is None
        size = validation.integer(body, "size", minimum=0)
        new = NewUpload(
            owner_type=validation.string(body, "owner_type", required=required, nullable=not required, max_length=20),
            owner_id=validation.string(body, "owner_id", required=required, nullable=not required, max_length=40),
            # It names the one file (or the uploaded directory), so it follows the path rules.
            file_name=validation.path(body, "file_name"),
            size=size,
            part_size=validation.integer(body, "part_size", minimum=MIN_PART_SIZE, maximum=MAX_PART_SIZE),
            sha256=validation.sha256_hex(body, "sha256"),
            idempotency_key=validation.string(body, "idempotency_key", max_length=200),
            asset_id=asset_id,
            collection_id=validation.string(body, "collection_id", max_length=40),
            title=validation.string(body, "title"),
            description=validation.string(body, "description"),
            alias=validation.string(body, "alias", max_length=200),
            tags=validation.string_list(body, "tags"),
            metadata=validation.json_object(body, "metadata"),
            path=validation.path(body, "path"),
            files=validation.file_list(body, "files", total_size=size),
        )
        view, created = await self.s.uploads.create(who, new)
        return JSONResponse(view, status_code=201 if created else 200)

    async def get_upload(self, request: Request) -> Response:
        who = await self.who(request, READ)
        return JSONResponse(await self.s.uploads.get(who, request.path_params["upload_id"]))

    async def abort_upload(self, request: Request) -> Response:
        who = await self.who(request, WRITE)
        await self.s.uploads.abort(who, request.path_params["upload_id"])
        return Response(status_code=204)

    async def part_target(self, request: Request) -> Response:
        who = await self.who(request, WRITE)
        upload_id = request.path_params["upload_id"]
        number = _part_number(request)
        body = await validation.read_json_object(request)
        own = validation.sha256_hex(body, "sha256")
        prefix_sha256 = validation.sha256_hex(body, "prefix_sha256")
        if (own is None) == (prefix_sha256 is None):
            raise ApiError(
                "invalid_argument", "give the part's `sha256` or its `prefix_sha256` (one of them)", field="sha256"
            )
        sha256 = prefix_sha256 or own
        assert sha256 is not None
        digest_field = "sha256" if own is not None else "prefix_sha256"
        size = validation.integer(body, "size", minimum=0)
        ttl = self.s.settings.url_ttl_seconds
        direct = await self.s.uploads.part_target(
            who, upload_id, number, size, sha256, prefix=prefix_sha256 is not None
        )
        if direct is not None:
            expires_at = isoformat(from_unix(time.time() + ttl))
            return JSONResponse(
                {"method": direct.method, "url": direct.url, "headers": dict(direct.headers), "expires_at": expires_at}
            )
        path = _route_path("/uploads/{upload_id}/parts/{number}", upload_id=upload_id, number=number)
        query = self.s.signer.sign("PUT", path, ttl, {digest_field: sha256, "size": str(size)})
        return JSONResponse(
            {
                "method": "PUT",
                "url": _absolute(request, path, query),
                "headers": {"Content-Length": str(size)},
                "expires_at": _expires_at(query),
            }
        )

    async def put_part(self, request: Request) -> Response:
        upload_id = request.path_params["upload_id"]
        number = _part_number(request)
        path = _route_path("/uploads/{upload_id}/parts/{number}", upload_id=upload_id, number=number)
        # The signature covers the field's name too: a part's own digest and its prefix
        # digest cannot stand in for each other.
        prefix = "prefix_sha256" in request.query_params
        digest_field = "prefix_sha256" if prefix else "sha256"
        self.s.signer.verify("PUT", path, request.query_params, (digest_field, "size"))
        # Signed by us, so well-formed; checked anyway rather than trusted to be.
        sha256, size_text = request.query_params[digest_field], request.query_params["size"]
        if not validation.is_sha256_hex(sha256) or not size_text.isdigit():
            raise ApiError("invalid_argument", "malformed part URL; ask for a new one")
        size = int(size_text)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) != size:
            raise ApiError(
                "checksum_mismatch",
                f"Content-Length is {declared}, but part {number} is {size} bytes",
                expected_size=size,
                actual_size=int(declared),
                number=number,
            )
        result = await self.s.uploads.put_part(upload_id, number, size, sha256, request.stream(), prefix=prefix)
        return JSONResponse(result)

    async def complete_upload(self, request: Request) -> Response:
        who = await self.who(request, WRITE)
        body = await validation.read_json_object(request, max_bytes=MAX_MANIFEST_JSON_BODY)
        key = validation.string(body, "idempotency_key", max_length=200)
        sha256 = validation.sha256_hex(body, "sha256")
        file_sha256 = validation.sha256_list(body, "file_sha256")
        upload_id = request.path_params["upload_id"]
        return JSONResponse(await self.s.uploads.complete(who, upload_id, key, sha256, file_sha256))

    async def dedup_challenge(self, request: Request) -> Response:
        who = await self.who(request, WRITE)
        body = await validation.read_json_object(request)
        validation.reject_unknown(body, ("sha256",))
        sha256 = validation.sha256_hex(body, "sha256", required=True)
        assert sha256 is not None
        return JSONResponse(await self.s.uploads.dedup_challenge(who, request.path_params["upload_id"], sha256))

    async def dedup_prove(self, request: Request) -> Response:
        who = await self.who(request, WRITE)
        body = await validation.read_json_object(request, max_bytes=MAX_MANIFEST_JSON_BODY)
        validation.reject_unknown(body, ("digests", "idempotency_key", "file_sha256"))
        digests = validation.sha256_list(body, "digests")
        if digests is None:
            raise validation.bad("digests", "is required: the SHA-256 of each range, in order")
        key = validation.string(body, "idempotency_key", max_length=200)
        file_sha256 = validation.sha256_list(body, "file_sha256")
        upload_id, challenge_id = request.path_params["upload_id"], request.path_params["challenge_id"]
        return JSONResponse(await self.s.uploads.dedup_prove(who, upload_id, challenge_id, digests, key, file_sha256))

    def routes(self) -> list[Route]:
        def r(path: str, endpoint: Callable[[Request], Awaitable[Any]], *methods: str) -> Route:
            return Route(PREFIX + path, endpoint, methods=list(methods))

        return [
            r("/health", self.health, "GET"),
            r("/openapi.json", self.openapi, "GET"),
            r("/me", self.me, "GET"),
            r("/projects", self.create_project, "POST"),
            r("/projects", self.list_projects, "GET"),
            r("/projects/{project_id}", self.get_project, "GET"),
            r("/projects/{project_id}/members", self.list_members, "GET"),
            r("/projects/{project_id}/members", self.set_member, "POST"),
            r("/projects/{project_id}/collections", self.list_collections, "GET"),
            r("/collections", self.create_collection, "POST"),
            r("/collections/{collection_id}", self.get_collection, "GET"),
            r("/assets", self.list_assets, "GET"),
            r("/assets/{asset_id}", self.get_asset, "GET"),
            r("/assets/{asset_id}", self.patch_asset, "PATCH"),
            r("/assets/{asset_id}", self.delete_asset, "DELETE"),
            r("/assets/{asset_id}/files", self.asset_files, "GET"),
            r("/assets/{asset_id}/relationships", self.create_relationship, "POST"),
            r("/assets/{asset_id}/relationships", self.list_relationships, "GET"),
            r("/assets/{asset_id}/download", self.download, "GET"),
            r("/contents/{content_id}/data", self.content_data, "GET"),
            r("/uploads", self.create_upload, "POST"),
            r("/uploads/{upload_id}", self.get_upload, "GET"),
            r("/uploads/{upload_id}", self.abort_upload, "DELETE"),
            r("/uploads/{upload_id}/parts/{number}/target", self.part_target, "POST"),
            r("/uploads/{upload_id}/parts/{number}", self.put_part, "PUT"),
            r("/uploads/{upload_id}/complete", self.complete_upload, "POST"),
            r("/uploads/{upload_id}/dedup", self.dedup_challenge, "POST"),
            r("/uploads/{upload_id}/dedup/{challenge_id}", self.dedup_prove, "POST"),
        ]


class RequestLog:
    """Logs one line per request and turns unexpected exceptions into ``internal`` errors.

    The line (event ``request``) has ``method``, ``path``, ``status``, ``bytes`` (response
    body bytes handed to the server) and ``duration_ms``, plus what the handler put into
    :func:`~dataerai_server.logs.request_log_fields` (``range`` for content reads). It
    has ``"client_disconnected": true`` when the client went away mid-request, and the
    traceback (at level ``error``) when the request failed. Never the query (signatures)
    or a header that may carry a secret (tokens). A pure ASGI middleware, so streamed
    bodies pass through untouched.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
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
            await self.app(scope, receive, send_tracking)
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


def create_app(services: Services) -> Starlette:
    """The ASGI application over open ``services``."""
    api = Api(services)
    return Starlette(
        routes=api.routes(),
        middleware=[Middleware(RequestLog)],
        exception_handlers={ApiError: api_error_handler, HTTPException: http_exception_handler},
    )
