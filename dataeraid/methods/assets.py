"""``asset.*`` and ``relationship.*``: what the repository holds and how it is linked."""

from __future__ import annotations

from typing import Any

from dataerai import contract

from dataeraid.errors import DataeraiError
from dataeraid.methods._call import REPOSITORY_ERRORS, Call, ask_repository, drop_none
from dataeraid.rpc import Methods, Param
from dataeraid.rpc.params import FREE_TEXT, TAGS, TITLE, Choice, Id, Integer, JsonObject, Record, RepositoryPath, Text

methods = Methods("assets")

ASSET_ID = Param("asset_id", Id(("asset",)), required=True)
#: The most items one page of a listing holds (the repository's own bound).
MAX_PAGE = 1000
LIMIT = Param("limit", Integer(1, MAX_PAGE), "the most items in the page")
CURSOR = Param("cursor", Text(1024, min_length=1), "the `next_cursor` of the page before")
PREFIX_TEXT = Text(contract.MAX_PATH_LENGTH)
#: What ``asset.update`` may change, each with its spec.
ASSET_FIELDS = {"title": TITLE, "description": FREE_TEXT, "alias": Text(contract.MAX_TAG_LENGTH), "tags": TAGS,
                "metadata": JsonObject(), "path": RepositoryPath()}


@methods.add("asset.get", "An asset's metadata.", ASSET_ID, result="the asset object of the HTTP API.",
             errors=REPOSITORY_ERRORS)
async def asset_get(call: Call, asset_id: str) -> dict[str, Any]:
    return await ask_repository("reading the asset", lambda: call.svc.remote.get_asset(asset_id))


@methods.add("asset.update",
             "Updates an asset's metadata: any of the named fields, or `fields`, an object of them where a "
             "`null` clears a field.",
             ASSET_ID, *(Param(name, spec) for name, spec in ASSET_FIELDS.items()),
             Param("fields", Record(ASSET_FIELDS, keep_nulls=True), "the fields to set; null clears one"),
             result="the asset.", errors=(*REPOSITORY_ERRORS, "conflict"))
async def asset_update(call: Call, asset_id: str, fields: dict[str, Any] | None, **named: Any) -> dict[str, Any]:
    changes = {k: v for k, v in named.items() if v is not None}
    changes.update(fields or {})
    if not changes:
        raise DataeraiError("invalid_argument", "nothing to update")
    return await ask_repository("updating the asset", lambda: call.svc.remote.update_asset(asset_id, changes))


@methods.add("asset.list",
             "Assets of a project or a collection (exactly one of `project_id`, `collection_id`), ordered by "
             "path, a page at a time. `glob`: `*` stays within a path segment, `**` crosses them, as DANDI's "
             "globs do.",
             Param("project_id", Id(("project",))), Param("collection_id", Id(("collection",))),
             Param("path_prefix", PREFIX_TEXT, "paths starting with this"),
             Param("glob", PREFIX_TEXT, "paths matching this glob"), LIMIT, CURSOR,
             result="`{\"assets\": [asset, …], \"next_cursor\"}`.", errors=REPOSITORY_ERRORS, heavy=True)
async def asset_list(call: Call, project_id: str | None, collection_id: str | None, path_prefix: str | None,
                     glob: str | None, limit: int | None, cursor: str | None) -> dict[str, Any]:
    if (project_id is None) == (collection_id is None):
        raise DataeraiError("invalid_argument", "give exactly one of `project_id` and `collection_id`",
                            param="project_id")
    query = drop_none(project_id=project_id, collection_id=collection_id, path_prefix=path_prefix, glob=glob,
                      limit=limit, cursor=cursor)
    return await ask_repository("listing assets", lambda: call.svc.remote.list_assets(query))


@methods.add("asset.delete",
             "Deletes an asset: every content version, its file lists and its relationships; the stored bytes go "
             "once no other content shares them.",
             ASSET_ID, result="`{\"asset_id\", \"deleted\": true}`.", errors=REPOSITORY_ERRORS)
async def asset_delete(call: Call, asset_id: str) -> dict[str, Any]:
    await ask_repository("deleting the asset", lambda: call.svc.remote.delete_asset(asset_id))
    return {"asset_id": asset_id, "deleted": True}


@methods.add("asset.files",
             "The files of an asset's content (its latest, or `content_id`): one by its exact `path`, or a page "
             "of them by `prefix`. A file is `{\"path\", \"offset\", \"size\", \"sha256\"}`: where its bytes lie "
             "in the content's stream, and its SHA-256 as the uploader reported it.",
             ASSET_ID, Param("path", RepositoryPath(), "one file by its exact path"),
             Param("prefix", PREFIX_TEXT, "files whose paths start with this"),
             Param("content_id", Id(("content",)), "a version of the asset (default: the latest)"), LIMIT, CURSOR,
             result="the file (with `content_id`), or `{\"content_id\", \"files\": [file, …], \"next_cursor\"}`.",
             errors=REPOSITORY_ERRORS, heavy=True)
async def asset_files(call: Call, asset_id: str, path: str | None, prefix: str | None, content_id: str | None,
                      limit: int | None, cursor: str | None) -> dict[str, Any]:
    if path is not None and (prefix is not None or cursor is not None):
        raise DataeraiError("invalid_argument", "`path` names one file; it goes without `prefix` and `cursor`",
                            param="path")
    query = drop_none(path=path, prefix=prefix, content_id=content_id, limit=limit, cursor=cursor)
    return await ask_repository("reading the asset's files", lambda: call.svc.remote.asset_files(asset_id, query))


@methods.add("relationship.create",
             "A directed provenance link from `from_asset_id` (the dependent asset) to `to_asset_id` (its "
             "origin). Needs write access to the source and read access to the target.",
             Param("from_asset_id", Id(("asset",)), required=True), Param("to_asset_id", Id(("asset",)), required=True),
             Param("type", Text(255, min_length=1, non_blank=True), "a free-form verb", required=True),
             Param("analysis_mode", Choice(contract.ANALYSIS_MODES)),
             Param("qualifier_note", FREE_TEXT), Param("qualifier_time", Text(64), "ISO-8601"),
             Param("qualifiers", JsonObject()),
             result="the relationship, with `related_asset` the target.", errors=REPOSITORY_ERRORS)
async def relationship_create(call: Call, from_asset_id: str, to_asset_id: str, type: str,
                              analysis_mode: str | None, qualifier_note: str | None, qualifier_time: str | None,
                              qualifiers: dict[str, Any] | None) -> dict[str, Any]:
    body = {"to_asset_id": to_asset_id, "rel_type": type, "analysis_mode": analysis_mode,
            "qualifier_note": qualifier_note, "qualifier_time": qualifier_time, "qualifiers": qualifiers}
    return await ask_repository("creating the relationship",
                                lambda: call.svc.remote.create_relationship(from_asset_id, body))


@methods.add("relationship.list",
             "An asset's relationships, each with `direction` (`outgoing` from this asset, or `incoming`); links "
             "to assets the user cannot see are left out.",
             ASSET_ID, result="`{\"relationships\": [relationship, …]}`.", errors=REPOSITORY_ERRORS, heavy=True)
async def relationship_list(call: Call, asset_id: str) -> dict[str, Any]:
    return await ask_repository("listing relationships", lambda: call.svc.remote.list_relationships(asset_id))
