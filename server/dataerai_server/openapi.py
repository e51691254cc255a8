"""The OpenAPI 3.1 document served at ``GET /api/v1/openapi.json``.

Written by hand beside ``docs/http-api.md`` (the prose contract); a test checks that
every route the app serves appears here, so the two cannot silently drift apart.
"""

from __future__ import annotations

from typing import Any


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): {"$ref": "#/components/responses/Error"} for status in statuses}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string"}}


_SIGNED = [
    {"name": "expires", "in": "query", "required": True, "schema": {"type": "integer"}, "description": "Unix seconds"},
    {
        "name": "signature",
        "in": "query",
        "required": True,
        "schema": {"type": "string"},
        "description": "hex HMAC-SHA256",
    },
]

_STR = {"type": "string"}
_NSTR = {"type": ["string", "null"]}
_INT = {"type": "integer", "minimum": 0}
_TIME = {"type": "string", "format": "date-time"}
_SHA = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_NSHA = {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$"}
_PATH = {"type": "string", "maxLength": 1024, "description": "a relative POSIX path: no leading `/`, no `.`, `..` "
         "or empty segments, no backslash or NUL"}
_CURSOR = {"type": ["string", "null"], "description": "pass as `cursor` for the next page; null on the last"}
_OWNER_TYPE = {"enum": ["project", "collection", "user"]}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": _STR, "message": _STR},
                "additionalProperties": True,
            }
        },
    },
    "Me": {
        "type": "object",
        "properties": {
            "user_id": _STR,
            "email": _STR,
            "scopes": {"type": "array", "items": {"enum": ["read", "write"]}},
            "token_expires_at": {"type": ["string", "null"], "format": "date-time"},
        },
    },
    "NewProject": {
        "type": "object",
        "required": ["name"],
        "properties": {"name": _STR, "description": _STR},
    },
    "Project": {
        "type": "object",
        "properties": {
            "project_id": _STR,
            "name": _STR,
            "description": _STR,
            "root_collection_id": _STR,
            "allocation_bytes": _INT,
            "used_bytes": _INT,
            "role": _STR,
            "created_at": _TIME,
        },
    },
    "ProjectList": {"type": "object", "properties": {"projects": {"type": "array", "items": _ref("Project")}}},
    "NewMember": {
        "type": "object",
        "required": ["email", "role"],
        "additionalProperties": False,
        "properties": {"email": _STR, "role": {"enum": ["owner", "editor", "viewer"]}},
    },
    "Member": {
        "type": "object",
        "properties": {
            "user_id": _STR,
            "email": _STR,
            "role": {"enum": ["owner", "editor", "viewer"]},
            "created_at": _TIME,
        },
    },
    "MemberList": {"type": "object", "properties": {"members": {"type": "array", "items": _ref("Member")}}},
    "NewCollection": {
        "type": "object",
        "required": ["project_id", "name"],
        "additionalProperties": False,
        "properties": {"project_id": _STR, "name": _STR, "parent_id": _NSTR},
    },
    "Collection": {
        "type": "object",
        "properties": {
            "collection_id": _STR,
            "project_id": _STR,
            "parent_id": _NSTR,
            "name": _STR,
            "created_at": _TIME,
        },
    },
    "CollectionList": {
        "type": "object",
        "properties": {"collections": {"type": "array", "items": _ref("Collection")}},
    },
    "FileInfo": {
        "type": "object",
        "properties": {"path": _PATH, "offset": _INT, "size": _INT, "sha256": _NSHA},
    },
    "FileOfContent": {
        "type": "object",
        "properties": {"path": _PATH, "offset": _INT, "size": _INT, "sha256": _NSHA, "content_id": _STR},
    },
    "FileList": {
        "type": "object",
        "properties": {
            "content_id": _STR,
            "files": {"type": "array", "items": _ref("FileOfContent")},
            "next_cursor": _CURSOR,
        },
    },
    "ContentInfo": {
        "type": "object",
        "properties": {
            "content_id": _STR,
            "size": _INT,
            "sha256": _SHA,
            "file_name": _NSTR,
            "file_count": _INT,
            "files": {
                "type": "array",
                "items": _ref("FileInfo"),
                "description": "the manifest, in stream order; left out in listings (see `file_count`)",
            },
            "created_at": _TIME,
        },
    },
    "Asset": {
        "type": "object",
        "properties": {
            "asset_id": _STR,
            "title": _NSTR,
            "description": _NSTR,
            "alias": _NSTR,
            "path": _PATH,
            "tags": {"type": "array", "items": _STR},
            "metadata": {"type": "object"},
            "owner_type": _OWNER_TYPE,
            "owner_id": _STR,
            "project_id": _NSTR,
            "collection_id": _NSTR,
            "created_by": _STR,
            "created_at": _TIME,
            "updated_at": _TIME,
            "latest_content": {"oneOf": [_ref("ContentInfo"), {"type": "null"}]},
        },
    },
    "AssetPatch": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "title": _NSTR,
            "description": _NSTR,
            "alias": _NSTR,
            "tags": {"type": "array", "items": _STR},
            "metadata": {"type": "object"},
            "path": _PATH,
        },
    },
    "AssetList": {
        "type": "object",
        "properties": {"assets": {"type": "array", "items": _ref("Asset")}, "next_cursor": _CURSOR},
    },
    "NewRelationship": {
        "type": "object",
        "required": ["to_asset_id", "rel_type"],
        "additionalProperties": False,
        "properties": {
            "to_asset_id": _STR,
            "rel_type": {"type": "string", "minLength": 1, "maxLength": 255},
            "analysis_mode": {
                "enum": [
                    "non_destructive",
                    "altering",
                    "destructive",
                    "in_situ",
                    "ex_situ",
                    "invasive",
                    "non_invasive",
                    None,
                ]
            },
            "qualifier_note": _NSTR,
            "qualifier_time": {"type": ["string", "null"], "format": "date-time"},
            "qualifiers": {"type": ["object", "null"]},
        },
    },
    "Relationship": {
        "type": "object",
        "properties": {
            "relationship_id": _STR,
            "type": _STR,
            "from_asset_id": _STR,
            "to_asset_id": _STR,
            "related_asset": {
                "type": "object",
                "properties": {"id": _STR, "title": _NSTR, "owner_type": _OWNER_TYPE, "owner_id": _STR},
            },
            "analysis_mode": _NSTR,
            "qualifier_note": _NSTR,
            "qualifier_time": {"type": ["string", "null"], "format": "date-time"},
            "qualifiers": {"type": ["object", "null"]},
            "created_by": _STR,
            "created_at": _TIME,
            "direction": {"enum": ["outgoing", "incoming"], "description": "in listings only"},
        },
    },
    "RelationshipList": {
        "type": "object",
        "properties": {"relationships": {"type": "array", "items": _ref("Relationship")}},
    },
    "Download": {
        "type": "object",
        "properties": {
            "content_id": _STR,
            "size": _INT,
            "sha256": _SHA,
            "file_name": _NSTR,
            "files": {"type": "array", "items": _ref("FileInfo")},
            "url": _STR,
            "headers": {"type": "object", "additionalProperties": _STR},
            "expires_at": _TIME,
        },
    },
    "NewUpload": {
        "type": "object",
        "required": ["size", "part_size"],
        "properties": {
            "owner_type": _OWNER_TYPE,
            "owner_id": _STR,
            "title": _NSTR,
            "description": _NSTR,
            "alias": _NSTR,
            "tags": {"type": "array", "items": _STR},
            "metadata": {"type": "object"},
            "collection_id": _NSTR,
            "asset_id": _NSTR,
            "file_name": {"type": ["string", "null"], "maxLength": 1024},
            "path": {**_PATH, "type": ["string", "null"]},
            "files": {
                "type": ["array", "null"],
                "maxItems": 100000,
                "items": {"type": "object", "required": ["path", "size"], "properties": {"path": _PATH, "size": _INT}},
                "description": "the files in stream order; their sizes add up to `size`",
            },
            "size": _INT,
            "part_size": {"type": "integer", "minimum": 65536, "maximum": 5368709120},
            "sha256": _NSHA,
            "idempotency_key": _NSTR,
        },
    },
    "Part": {
        "type": "object",
        "description": "the digests the part was checked against (part 1's own digest is its prefix digest)",
        "properties": {
            "number": {"type": "integer", "minimum": 1},
            "size": _INT,
            "sha256": _NSHA,
            "prefix_sha256": _NSHA,
            "writes": _INT,
        },
    },
    "UploadResult": {
        "type": "object",
        "properties": {"asset_id": _STR, "content_id": _STR, "size": _INT, "sha256": _SHA},
    },
    "UploadSession": {
        "type": "object",
        "properties": {
            "upload_id": _STR,
            "state": {"enum": ["open", "completed", "aborted"]},
            "size": _INT,
            "part_size": _INT,
            "part_count": {"type": "integer", "minimum": 1},
            "sha256": _NSHA,
            "file_name": _NSTR,
            "path": _NSTR,
            "files": {
                "type": ["array", "null"],
                "items": {"type": "object", "properties": {"path": _PATH, "size": _INT}},
            },
            "parts": {"type": "array", "items": _ref("Part")},
            "part_digests": {
                "type": "array",
                "items": {"enum": ["sha256", "prefix_sha256"]},
                "description": "which digest a part target takes",
            },
            "bytes_received": _INT,
            "created_at": _TIME,
            "expires_at": _TIME,
            "result": {"oneOf": [_ref("UploadResult"), {"type": "null"}]},
        },
    },
    "PartTargetRequest": {
        "type": "object",
        "required": ["size"],
        "description": "one of `sha256` (the part's own) and `prefix_sha256` (the content's through the part's end)",
        "properties": {"sha256": _SHA, "prefix_sha256": _SHA, "size": _INT},
    },
    "PartTarget": {
        "type": "object",
        "properties": {
            "method": {"enum": ["PUT"]},
            "url": _STR,
            "headers": {"type": "object", "additionalProperties": _STR},
            "expires_at": _TIME,
        },
    },
    "PartReceipt": {
        "type": "object",
        "description": "`prefix_sha256` null: the prefix digest could not be checked; `sha256` is then the part's own",
        "properties": {"number": {"type": "integer"}, "size": _INT, "sha256": _NSHA, "prefix_sha256": _NSHA},
    },
    "DedupRequest": {
        "type": "object",
        "required": ["sha256"],
        "properties": {"sha256": _SHA},
    },
    "DedupChallenge": {
        "type": "object",
        "properties": {
            "challenge_id": _STR,
            "ranges": {
                "type": "array",
                "items": {"type": "object", "properties": {"offset": _INT, "length": _INT}},
                "description": "random byte ranges of the content; none for an empty one",
            },
            "expires_at": _TIME,
        },
    },
    "DedupProof": {
        "type": "object",
        "required": ["digests"],
        "properties": {
            "digests": {"type": "array", "items": _SHA, "description": "SHA-256 of each range, in order"},
            "idempotency_key": _NSTR,
            "file_sha256": {"type": ["array", "null"], "items": _SHA, "description": "one per file, as reported"},
        },
    },
    "DedupResult": {
        "type": "object",
        "properties": {
            "asset_id": _STR,
            "content_id": _STR,
            "size": _INT,
            "sha256": _SHA,
            "deduplicated": {"type": "boolean", "description": "the content shares a held content's bytes"},
        },
    },
    "Completion": {
        "type": "object",
        "properties": {
            "idempotency_key": _NSTR,
            "sha256": _NSHA,
            "file_sha256": {"type": ["array", "null"], "items": _SHA, "description": "one per file, as reported"},
        },
    },
}


def openapi_document(version: str) -> dict[str, Any]:
    """The whole document; ``version`` is the server's version."""
    asset = _path_param("asset_id", "an asset id (`ast_…`)")
    upload = _path_param("upload_id", "an upload session id (`upl_…`)")
    number = {"name": "number", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
    project = _path_param("project_id", "a project id (`prj_…`)")
    limit = {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}
    cursor = {"name": "cursor", "in": "query", "required": False, "schema": _STR,
              "description": "the `next_cursor` of the previous page"}

    def query(name: str, description: str) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "schema": _STR, "description": description}

    paths: dict[str, Any] = {
        "/api/v1/health": {
            "get": {
                "summary": "Liveness; needs no token",
                "security": [],
                "responses": {"200": _json({"type": "object", "properties": {"status": _STR, "version": _STR}}, "up")},
            }
        },
        "/api/v1/openapi.json": {
            "get": {
                "summary": "This document",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "OpenAPI")},
            }
        },
        "/api/v1/me": {
            "get": {
                "summary": "Who the token belongs to and what it may do",
                "responses": {"200": _json(_ref("Me"), "the caller"), **_errors(401)},
            }
        },
        "/api/v1/projects": {
            "post": {
                "summary": "Create a project with its root collection, owner membership and allocation (write)",
                "requestBody": _body(_ref("NewProject")),
                "responses": {"201": _json(_ref("Project"), "created"), **_errors(400, 401, 403)},
            },
            "get": {
                "summary": "The caller's projects (every one they are a member of)",
                "responses": {"200": _json(_ref("ProjectList"), "the projects"), **_errors(401)},
            },
        },
        "/api/v1/projects/{project_id}": {
            "get": {
                "summary": "A project (members only)",
                "parameters": [project],
                "responses": {"200": _json(_ref("Project"), "the project"), **_errors(401, 404)},
            }
        },
        "/api/v1/projects/{project_id}/members": {
            "get": {
                "summary": "The project's members and their roles (members only)",
                "parameters": [project],
                "responses": {"200": _json(_ref("MemberList"), "the members"), **_errors(401, 404)},
            },
            "post": {
                "summary": "Add a member or change their role (owners only; write)",
                "parameters": [project],
                "requestBody": _body(_ref("NewMember")),
                "responses": {
                    "201": _json(_ref("Member"), "added"),
                    "200": _json(_ref("Member"), "their role changed"),
                    **_errors(400, 401, 403, 404, 409),
                },
            },
        },
        "/api/v1/projects/{project_id}/collections": {
            "get": {
                "summary": "Every collection of the project, the root first (members only)",
                "parameters": [project],
                "responses": {"200": _json(_ref("CollectionList"), "the collections"), **_errors(401, 404)},
            }
        },
        "/api/v1/collections": {
            "post": {
                "summary": "Create a collection under `parent_id` or the root collection (owners, editors; write)",
                "requestBody": _body(_ref("NewCollection")),
                "responses": {"201": _json(_ref("Collection"), "created"), **_errors(400, 401, 403, 404)},
            }
        },
        "/api/v1/collections/{collection_id}": {
            "get": {
                "summary": "A collection (members of its project only)",
                "parameters": [_path_param("collection_id", "a collection id (`col_…`)")],
                "responses": {"200": _json(_ref("Collection"), "the collection"), **_errors(401, 404)},
            }
        },
        "/api/v1/assets": {
            "get": {
                "summary": "A page of a project's or a collection's assets, by path then id",
                "parameters": [
                    query("project_id", "list this project's assets (this or `collection_id`)"),
                    query("collection_id", "list the assets directly in this collection"),
                    query("path_prefix", "only paths starting with this string"),
                    query("glob", "only paths matching: `*` within a segment, `**` across, `?`, `[...]`"),
                    limit,
                    cursor,
                ],
                "responses": {"200": _json(_ref("AssetList"), "a page of assets"), **_errors(400, 401, 404)},
            }
        },
        "/api/v1/assets/{asset_id}": {
            "get": {
                "summary": "An asset's metadata and latest content",
                "parameters": [asset],
                "responses": {"200": _json(_ref("Asset"), "the asset"), **_errors(401, 404)},
            },
            "patch": {
                "summary": "Change title, description, alias, tags or metadata (write)",
                "parameters": [asset],
                "requestBody": _body(_ref("AssetPatch")),
                "responses": {"200": _json(_ref("Asset"), "the changed asset"), **_errors(400, 401, 403, 404)},
            },
            "delete": {
                "summary": "Delete the asset, every content version and relationship, and their bytes (write)",
                "parameters": [asset],
                "responses": {"204": {"description": "deleted"}, **_errors(401, 403, 404)},
            },
        },
        "/api/v1/assets/{asset_id}/files": {
            "get": {
                "summary": "One file of the latest (or a chosen) content by exact `path`, or a page of its files",
                "parameters": [
                    asset,
                    query("path", "exactly this file: answers one FileOfContent (404 if absent)"),
                    query("prefix", "list only files whose path starts with this string"),
                    query("content_id", "a content version of this asset (default: the latest)"),
                    limit,
                    cursor,
                ],
                "responses": {
                    "200": _json(
                        {"oneOf": [_ref("FileOfContent"), _ref("FileList")]},
                        "with `path`: the file; without: a page of files in stream order",
                    ),
                    **_errors(400, 401, 404),
                },
            }
        },
        "/api/v1/assets/{asset_id}/relationships": {
            "post": {
                "summary": "Link this asset (the source; write access) to `to_asset_id` (read access) (write)",
                "parameters": [asset],
                "requestBody": _body(_ref("NewRelationship")),
                "responses": {"201": _json(_ref("Relationship"), "created"), **_errors(400, 401, 403, 404)},
            },
            "get": {
                "summary": "The asset's outgoing and incoming links (`direction`)",
                "parameters": [asset],
                "responses": {"200": _json(_ref("RelationshipList"), "the links"), **_errors(401, 404)},
            },
        },
        "/api/v1/assets/{asset_id}/download": {
            "get": {
                "summary": "A signed URL to read the latest (or a chosen) content version from",
                "parameters": [
                    asset,
                    {"name": "content_id", "in": "query", "required": False, "schema": _STR},
                ],
                "responses": {"200": _json(_ref("Download"), "where to read"), **_errors(401, 404)},
            }
        },
        "/api/v1/contents/{content_id}/data": {
            "get": {
                "summary": "Content bytes on a signed URL; `Range: bytes=A-B` gives 206",
                "security": [],
                "parameters": [_path_param("content_id", "a content id (`cnt_…`)"), *_SIGNED],
                "responses": {
                    "200": {"description": "the whole content", "content": {"application/octet-stream": {}}},
                    "206": {"description": "the range asked for", "content": {"application/octet-stream": {}}},
                    **_errors(403, 404, 416),
                },
            }
        },
        "/api/v1/uploads": {
            "post": {
                "summary": "Open a resumable upload session (write); same idempotency key → the same session",
                "requestBody": _body(_ref("NewUpload")),
                "responses": {
                    "201": _json(_ref("UploadSession"), "created"),
                    "200": _json(_ref("UploadSession"), "the session made earlier with this idempotency key"),
                    **_errors(400, 401, 403, 404, 413),
                },
            }
        },
        "/api/v1/uploads/{upload_id}": {
            "get": {
                "summary": "A session, with the parts the server holds",
                "parameters": [upload],
                "responses": {"200": _json(_ref("UploadSession"), "the session"), **_errors(401, 404)},
            },
            "delete": {
                "summary": "Abort a session and drop its parts (write)",
                "parameters": [upload],
                "responses": {"204": {"description": "aborted"}, **_errors(401, 403, 404, 409)},
            },
        },
        "/api/v1/uploads/{upload_id}/parts/{number}/target": {
            "post": {
                "summary": "Where to send a part, its digest and size signed in (write)",
                "parameters": [upload, number],
                "requestBody": _body(_ref("PartTargetRequest")),
                "responses": {"200": _json(_ref("PartTarget"), "the target"), **_errors(400, 401, 403, 404, 409)},
            }
        },
        "/api/v1/uploads/{upload_id}/parts/{number}": {
            "put": {
                "summary": "A part's bytes, on the signed URL from `.../target`",
                "security": [],
                "parameters": [
                    upload,
                    number,
                    {"name": "sha256", "in": "query", "required": False, "schema": _SHA},
                    {"name": "prefix_sha256", "in": "query", "required": False, "schema": _SHA},
                    {"name": "size", "in": "query", "required": True, "schema": _INT},
                    *_SIGNED,
                ],
                "requestBody": {"required": True, "content": {"application/octet-stream": {}}},
                "responses": {"200": _json(_ref("PartReceipt"), "stored"), **_errors(403, 404, 409, 422)},
            }
        },
        "/api/v1/uploads/{upload_id}/complete": {
            "post": {
                "summary": "Assemble the parts into an asset or a new version, exactly once (write)",
                "parameters": [upload],
                "requestBody": _body(_ref("Completion")),
                "responses": {
                    "200": _json(_ref("UploadResult"), "the result"),
                    **_errors(400, 401, 403, 404, 409, 422),
                },
            }
        },
        "/api/v1/uploads/{upload_id}/dedup": {
            "post": {
                "summary": "A proof-of-possession challenge for completing with held content (write)",
                "description": "Always a challenge, whether or not such a content is held.",
                "parameters": [upload],
                "requestBody": _body(_ref("DedupRequest")),
                "responses": {
                    "200": _json(_ref("DedupChallenge"), "the challenge"),
                    **_errors(400, 401, 403, 404, 409),
                },
            }
        },
        "/api/v1/uploads/{upload_id}/dedup/{challenge_id}": {
            "post": {
                "summary": "Answer a challenge; completes the session without its bytes on proof of possession (write)",
                "description": "`409 conflict` with `reason: no_match` when it does not (the session stays open); "
                "`reason: challenge_used` or `challenge_expired` for a challenge that can no longer be answered.",
                "parameters": [upload, _path_param("challenge_id", "from `POST .../dedup`")],
                "requestBody": _body(_ref("DedupProof")),
                "responses": {
                    "200": _json(_ref("DedupResult"), "the result, as completion gives it"),
                    **_errors(400, 401, 403, 404, 409),
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Dataerai repository API",
            "version": version,
            "description": "The contract in prose is docs/http-api.md in the Dataerai repository.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "`dtk_…` token"}},
            "schemas": _SCHEMAS,
            "responses": {"Error": _json(_ref("Error"), "an error; `error.code` is from the shared catalogue")},
        },
    }
