"""``project.*`` and ``collection.*``: where assets live."""

from __future__ import annotations

from typing import Any

from dataeraid.methods._call import REPOSITORY_ERRORS, Call, ask_repository
from dataeraid.rpc import Methods, Param
from dataeraid.rpc.params import FREE_TEXT, TITLE, Id

methods = Methods("projects")
PROJECT_ID = Param("project_id", Id(("project",)), required=True)


@methods.add("project.create",
             "Creates a project with its root collection; the caller becomes its owner.",
             Param("name", TITLE, required=True), Param("description", FREE_TEXT, default=""),
             result="the project object of the HTTP API.", errors=REPOSITORY_ERRORS)
async def project_create(call: Call, name: str, description: str) -> dict[str, Any]:
    return await ask_repository("creating the project", lambda: call.svc.remote.create_project(name, description))


@methods.add("project.list", "The projects the signed-in user is a member of, each with the user's `role`.",
             result="`{\"projects\": [project, …]}`.", errors=REPOSITORY_ERRORS, heavy=True)
async def project_list(call: Call) -> dict[str, Any]:
    return await ask_repository("listing projects", call.svc.remote.list_projects)


@methods.add("collection.create",
             "A collection in a project, below `parent_id` (default: the project's root collection). Needs the "
             "`owner` or `editor` role.",
             PROJECT_ID, Param("name", TITLE, required=True),
             Param("parent_id", Id(("collection",)), "the parent collection"),
             result="the collection.", errors=REPOSITORY_ERRORS)
async def collection_create(call: Call, project_id: str, name: str, parent_id: str | None) -> dict[str, Any]:
    body = {"project_id": project_id, "name": name, "parent_id": parent_id}
    return await ask_repository("creating the collection", lambda: call.svc.remote.create_collection(body))


@methods.add("collection.list", "A project's collections, its root collection first.", PROJECT_ID,
             result="`{\"collections\": [collection, …]}`.", errors=REPOSITORY_ERRORS, heavy=True)
async def collection_list(call: Call, project_id: str) -> dict[str, Any]:
    return await ask_repository("listing collections", lambda: call.svc.remote.list_collections(project_id))

