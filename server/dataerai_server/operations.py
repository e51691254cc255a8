"""The API's operations: one table that the routing (``app.py``) and the OpenAPI document
(``openapi.py``) are both made from.

Each :class:`Operation` names its method and path, the ``Api`` method that serves it, the
scope its bearer token needs, the models its body and query are validated with
(:mod:`schemas`), and every status it can answer. The statuses every operation of a kind
can answer are added here once (:meth:`Operation.statuses`): 401 with a bearer token, 403
for a ``write`` one or a signed URL, 400 and 413 with a JSON body, 400 with a query or a
path parameter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from pydantic import BaseModel

from . import schemas
from .auth import READ, WRITE
from .config import MAX_JSON_BODY, MAX_MANIFEST_JSON_BODY, MAX_PART_COUNT

PREFIX: Final = "/api/v1"

#: How a caller is authenticated: a bearer token with a scope, a signed URL, or not at all.
Access = Literal["read", "write", "signed", "public"]


@dataclass(frozen=True)
class Reply:
    """A success answer: its description and body (a model, raw bytes, or nothing)."""

    description: str
    model: type[BaseModel] | tuple[type[BaseModel], ...] | None = None
    media_type: str = "application/json"


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    handler: str
    summary: str
    access: Access
    replies: Mapping[int, Reply]
    #: Error statuses this operation answers besides those of its kind (see :meth:`statuses`).
    errors: tuple[int, ...] = ()
    body: type[schemas.Body] | None = None
    body_limit: int = MAX_JSON_BODY
    query: type[schemas.Query] | None = None
    #: A body of raw bytes (a part), read by the handler as a stream.
    raw_body: bool = False
    description: str = ""
    #: Response headers by status, for the document.
    headers: Mapping[int, Mapping[str, str]] = field(default_factory=dict)
    #: Request headers the operation reads (name: description), for the document.
    request_headers: Mapping[str, str] = field(default_factory=dict)
    #: Fields whose 400 no schema can foretell: the rule depends on stored state (a part's
    #: expected size, the session's digest) or spans fields in a way JSON Schema cannot say.
    #: A schema-valid request may be refused with 400 naming one of these, and no other.
    checked_fields: tuple[str, ...] = ()

    @property
    def full_path(self) -> str:
        return PREFIX + self.path

    @property
    def path_parameters(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)

    @property
    def scope(self) -> str | None:
        """The bearer token scope needed, or None for an operation without a token."""
        return {"read": READ, "write": WRITE}.get(self.access)

    def statuses(self) -> list[int]:
        """Every status this operation can answer, the successes first."""
        errors = set(self.errors)
        if self.scope is not None:
            errors.add(401)
        if self.access in ("write", "signed"):
            errors.add(403)
        if self.body is not None:
            errors.update((400, 413))
        if self.query is not None or self.path_parameters or self.checked_fields:
            errors.add(400)
        return sorted(self.replies) + sorted(errors)


_ID: Final = {"type": "string", "minLength": 1, "pattern": schemas.NO_NUL_PATTERN}

#: The schema and description of each path parameter, by name.
PATH_PARAMETERS: Final[Mapping[str, tuple[dict[str, object], str]]] = {
    "project_id": (_ID, "a project id (`prj_…`)"),
    "collection_id": (_ID, "a collection id (`col_…`)"),
    "asset_id": (_ID, "an asset id (`ast_…`)"),
    "content_id": (_ID, "a content id (`cnt_…`)"),
    "upload_id": (_ID, "an upload session id (`upl_…`)"),
    "challenge_id": (_ID, "from `POST .../dedup`"),
    "number": (
        {"type": "integer", "minimum": 1, "maximum": MAX_PART_COUNT},
        "a part number, from 1 to the session's `part_count` (400 with `field: number` past it)",
    ),
}

_S = schemas
_JSON = "application/json"
_BYTES = "application/octet-stream"

OPERATIONS: Final[tuple[Operation, ...]] = (
    Operation("GET", "/health", "health", "Liveness; needs no token", "public", {200: Reply("up", _S.Health)}),
    Operation("GET", "/openapi.json", "openapi", "This document", "public", {200: Reply("the OpenAPI document")}),
    Operation("GET", "/me", "me", "Who the token belongs to and what it may do", "read",
              {200: Reply("the caller", _S.Me)}),
    Operation("POST", "/projects", "create_project",
              "Create a project with its root collection, owner membership and allocation", "write",
              {201: Reply("created", _S.Project)}, body=_S.NewProject),
    Operation("GET", "/projects", "list_projects", "The caller's projects (every one they are a member of)",
              "read", {200: Reply("the projects", _S.ProjectList)}),
    Operation("GET", "/projects/{project_id}", "get_project", "A project (members only)", "read",
              {200: Reply("the project", _S.Project)}, errors=(404,)),
    Operation("GET", "/projects/{project_id}/members", "list_members",
              "The project's members and their roles (members only)", "read",
              {200: Reply("the members", _S.MemberList)}, errors=(404,)),
    Operation("POST", "/projects/{project_id}/members", "set_member",
              "Add a member or change their role (owners only)", "write",
              {201: Reply("added", _S.Member), 200: Reply("their role changed", _S.Member)},
              errors=(404, 409), body=_S.NewMember,
              description="No user with that email is 404 with `field: email`; taking the last owner's "
              "`owner` role away is 409."),
    Operation("GET", "/projects/{project_id}/collections", "list_collections",
              "Every collection of the project, the root first (members only)", "read",
              {200: Reply("the collections", _S.CollectionList)}, errors=(404,)),
    Operation("POST", "/collections", "create_collection",
              "Create a collection under `parent_id` or the root collection (owners, editors)", "write",
              {201: Reply("created", _S.Collection)}, errors=(404,), body=_S.NewCollection),
    Operation("GET", "/collections/{collection_id}", "get_collection",
              "A collection (members of its project only)", "read",
              {200: Reply("the collection", _S.Collection)}, errors=(404,)),
    Operation("GET", "/assets", "list_assets", "A page of a project's or a collection's assets, by path then id",
              "read", {200: Reply("a page of assets", _S.AssetList)}, errors=(404,), query=_S.AssetListQuery,
              checked_fields=("project_id", "cursor"),
              description="Exactly one of `project_id` and `collection_id` (400 with `field: project_id` "
              "otherwise). A `cursor` the server did not hand out is 400 with `field: cursor`."),
    Operation("GET", "/assets/{asset_id}", "get_asset", "An asset's metadata and latest content", "read",
              {200: Reply("the asset", _S.Asset)}, errors=(404,)),
    Operation("PATCH", "/assets/{asset_id}", "patch_asset",
              "Change title, description, alias, tags, metadata or path", "write",
              {200: Reply("the changed asset", _S.Asset)}, errors=(404,), body=_S.AssetPatch),
    Operation("DELETE", "/assets/{asset_id}", "delete_asset",
              "Delete the asset, every content version and relationship, and their bytes", "write",
              {204: Reply("deleted", None)}, errors=(404,)),
    Operation("GET", "/assets/{asset_id}/files", "asset_files",
              "One file of the latest (or a chosen) content by exact `path`, or a page of its files", "read",
              {200: Reply("with `path`: the file; without: a page of files in stream order",
                          (_S.FileOfContent, _S.FileList))},
              errors=(404,), query=_S.AssetFilesQuery, checked_fields=("cursor",)),
    Operation("POST", "/assets/{asset_id}/relationships", "create_relationship",
              "Link this asset (the source; write access) to `to_asset_id` (read access)", "write",
              {201: Reply("created", _S.Relationship)}, errors=(404,), body=_S.NewRelationship,
              checked_fields=("to_asset_id",),
              description="An asset cannot be related to itself: `to_asset_id` equal to the path's "
              "`asset_id` is 400 with `field: to_asset_id`."),
    Operation("GET", "/assets/{asset_id}/relationships", "list_relationships",
              "The asset's outgoing and incoming links (`direction`)", "read",
              {200: Reply("the links", _S.RelationshipList)}, errors=(404,)),
    Operation("GET", "/assets/{asset_id}/download", "download",
              "A signed URL to read the latest (or a chosen) content version from", "read",
              {200: Reply("where to read", _S.Download)}, errors=(404,), query=_S.DownloadQuery),
    Operation("GET", "/contents/{content_id}/data", "content_data",
              "Content bytes on a signed URL; `Range: bytes=A-B` gives 206", "signed",
              {200: Reply("the whole content", None, _BYTES), 206: Reply("the range asked for", None, _BYTES)},
              errors=(404, 416), query=_S.ContentQuery,
              request_headers={"Range": "`bytes=A-B`, `bytes=A-` or `bytes=-N`; another form is ignored"},
              description="`HEAD` gives the headers alone. A wrong or expired signature is 403 with `reason`."),
    Operation("POST", "/uploads", "create_upload",
              "Open a resumable upload session; the same idempotency key gives the same session", "write",
              {201: Reply("created", _S.UploadSession),
               200: Reply("the session made earlier with this idempotency key", _S.UploadSession)},
              errors=(404, 503, 507), body=_S.NewUpload, body_limit=MAX_MANIFEST_JSON_BODY,
              checked_fields=("owner_id", "collection_id", "part_size", "files"),
              description="413 `quota_exceeded` when `size` does not fit the project's allocation; "
              "413 `frame_too_large` for a body over 64 MiB."),
    Operation("GET", "/uploads/{upload_id}", "get_upload", "A session, with the parts the server holds", "read",
              {200: Reply("the session", _S.UploadSession)}, errors=(404, 503)),
    Operation("DELETE", "/uploads/{upload_id}", "abort_upload", "Abort a session and drop its parts", "write",
              {204: Reply("aborted", None)}, errors=(404, 409, 503)),
    Operation("POST", "/uploads/{upload_id}/parts/{number}/target", "part_target",
              "Where to send a part, its digest and size signed in", "write",
              {200: Reply("the target", _S.PartTarget)}, errors=(404, 409), body=_S.PartTargetRequest,
              checked_fields=("number", "size", "prefix_sha256")),
    Operation("PUT", "/uploads/{upload_id}/parts/{number}", "put_part",
              "A part's bytes, on the signed URL from `.../target`", "signed",
              {200: Reply("stored", _S.PartReceipt)}, errors=(404, 409, 422, 503, 507), query=_S.PartQuery,
              raw_body=True, headers={503: {"Retry-After": "seconds to wait before sending the part again"}},
              checked_fields=("number", "size"),
              description="A body whose length or SHA-256 differs from the signed one is 422 "
              "`checksum_mismatch`; a full disk is 507 `disk_full`; storage out of reach is 503 "
              "`unavailable` with `Retry-After`. A wrong or expired signature is 403 with `reason`."),
    Operation("POST", "/uploads/{upload_id}/complete", "complete_upload",
              "Assemble the parts into an asset or a new version, exactly once", "write",
              {200: Reply("the result", _S.UploadResult)}, errors=(404, 409, 422, 503, 507),
              body=_S.Completion, body_limit=MAX_MANIFEST_JSON_BODY,
              checked_fields=("sha256", "file_sha256", "parts"),
              description="Parts missing: 409 with `missing_parts`. A whole-content digest that does not "
              "match: 422. A `sha256` other than the session's, a `file_sha256` of the wrong length, or "
              "`parts` naming a number twice: 400. `parts`: every part sent straight to the store, with "
              "the ETag it answered (the store is then not asked which parts it holds)."),
    Operation("POST", "/uploads/{upload_id}/dedup", "dedup_challenge",
              "A proof-of-possession challenge for completing with held content", "write",
              {200: Reply("the challenge", _S.DedupChallenge)}, errors=(404, 409), body=_S.DedupRequest,
              checked_fields=("sha256",),
              description="Always a challenge, whether or not such a content is held. A `sha256` other "
              "than the session's is 400."),
    Operation("POST", "/uploads/{upload_id}/dedup/{challenge_id}", "dedup_prove",
              "Answer a challenge; completes the session without its bytes on proof of possession", "write",
              {200: Reply("the result, as completion gives it", _S.DedupResult)}, errors=(404, 409),
              body=_S.DedupProof, body_limit=MAX_MANIFEST_JSON_BODY, checked_fields=("digests", "file_sha256"),
              description="409 `conflict` with `reason: no_match` when it does not match (the session stays "
              "open); `reason: challenge_used` or `challenge_expired` for a challenge that can no longer be "
              "answered. The wrong number of `digests` is 400."),
)


def operations_by_path() -> dict[str, dict[str, Operation]]:
    """The operations grouped by full path, then by method, in table order."""
    grouped: dict[str, dict[str, Operation]] = {}
    for operation in OPERATIONS:
        grouped.setdefault(operation.full_path, {})[operation.method] = operation
    return grouped
