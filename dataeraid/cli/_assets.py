"""``dataerai assets``, ``meta``, ``rel`` and ``collection``: what a repository holds, and how it is linked."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from dataerai import AssetMetadata
from dataerai.contract import ANALYSIS_MODES

from ._context import open_client
from ._errors import Failure
from ._output import as_dict, emit, human, json_option, print_json


def _json_object(text: str | None, option: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise Failure("invalid_argument", f"{option} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise Failure("invalid_argument", f"{option} must be a JSON object")
    return value


def _describe(asset: AssetMetadata) -> list[str]:
    lines = []
    for key, value in as_dict(asset).items():
        if key == "latest_content" and value:
            lines.append(f"content: {value['content_id']} ({value['size']} bytes, sha256 {value['sha256']})")
        elif value not in (None, [], {}):
            lines.append(f"{key}: {human(value)}")
    return lines


# --- assets ------------------------------------------------------------------------------


@click.group()
def assets() -> None:
    """List, show and delete assets, and the files in them."""


@assets.command("ls")
@click.option("--project", "project_id", metavar="ID", help="The assets of this project.")
@click.option("--collection", "collection_id", metavar="ID", help="The assets of this collection.")
@click.option("--prefix", "path_prefix", metavar="P", help="Only paths that start with P.")
@click.option("--glob", metavar="G", help="Only paths that match G (`*` within a segment, `**` across).")
@json_option
@click.pass_context
def ls(ctx: click.Context, project_id: str | None, collection_id: str | None, path_prefix: str | None,
       glob: str | None, as_json: bool) -> None:
    """List the assets of a project or a collection, by path: one line each with id, size and path.

    With --json: {"assets": [ASSET, ...]}.
    """
    if (project_id is None) == (collection_id is None):
        raise Failure("invalid_argument", "give exactly one of --project and --collection")
    with open_client(ctx) as client:
        found = list(client.list_assets(project_id=project_id, collection_id=collection_id,
                                        path_prefix=path_prefix, glob=glob))
    if as_json:
        print_json({"assets": [as_dict(a) for a in found]})
        return
    for asset in found:
        size = "-" if asset.size is None else str(asset.size)
        click.echo(f"{asset.asset_id}  {size:>12}  {asset.raw.get('path') or asset.title}")


@assets.command("show")
@click.argument("asset_id")
@json_option
@click.pass_context
def show(ctx: click.Context, asset_id: str, as_json: bool) -> None:
    """Show an asset's metadata and its latest content (also `meta get`). With --json: the asset object."""
    with open_client(ctx) as client:
        asset = client.get_metadata(asset_id)
    emit(asset, as_json, "\n".join(_describe(asset)))


@assets.command("files")
@click.argument("asset_id")
@click.option("--prefix", metavar="P", help="Only files whose path starts with P.")
@json_option
@click.pass_context
def files(ctx: click.Context, asset_id: str, prefix: str | None, as_json: bool) -> None:
    """List the files of an asset's latest content: size, SHA-256 and path.

    With --json: {"files": [FILE, ...]}.
    """
    with open_client(ctx) as client:
        found = list(client.list_files(asset_id, prefix=prefix))
    if as_json:
        print_json({"files": [as_dict(f) for f in found]})
        return
    for f in found:
        click.echo(f"{f.size:>12}  {f.sha256 or '-':64}  {f.path}")


@assets.command("rm")
@click.argument("asset_id")
@click.option("--yes", is_flag=True, help="Do not ask; needed when stdin is not a terminal.")
@json_option
@click.pass_context
def rm(ctx: click.Context, asset_id: str, yes: bool, as_json: bool) -> None:
    """Delete an asset, every content version and its relationships."""
    if not yes:
        if not sys.stdin.isatty():
            raise Failure("invalid_argument", "deleting needs --yes when there is no terminal to ask on")
        click.confirm(f"Delete {asset_id} and all its versions?", abort=True, err=True)
    with open_client(ctx) as client:
        client.delete_asset(asset_id)
    if as_json:
        print_json({"asset_id": asset_id, "deleted": True})
    else:
        click.echo(f"deleted {asset_id}")


# --- metadata ------------------------------------------------------------------------------


@click.group()
def meta() -> None:
    """Read and change an asset's metadata."""


meta.add_command(show, "get")


@meta.command("set")
@click.argument("asset_id")
@click.option("--title", metavar="T")
@click.option("--description", metavar="D")
@click.option("--alias", metavar="A")
@click.option("--path", metavar="P", help="The asset's path in its project (listing and globs use it).")
@click.option("--tag", "tags", multiple=True, metavar="X", help="Replace the tags with these; repeatable.")
@click.option("--metadata", metavar="JSON", help="Replace the free metadata with this JSON object.")
@json_option
@click.pass_context
def meta_set(ctx: click.Context, asset_id: str, title: str | None, description: str | None, alias: str | None,
             path: str | None, tags: tuple[str, ...], metadata: str | None, as_json: bool) -> None:
    """Change the given fields of an asset's metadata; print the asset."""
    fields: dict[str, Any] = {k: v for k, v in (("title", title), ("description", description),
                                                ("alias", alias), ("path", path)) if v is not None}
    if tags:
        fields["tags"] = list(tags)
    parsed = _json_object(metadata, "--metadata")
    if parsed is not None:
        fields["metadata"] = parsed
    if not fields:
        raise Failure("invalid_argument", "nothing to change: give at least one field option")
    with open_client(ctx) as client:
        asset = client.set_metadata(asset_id, **fields)
    emit(asset, as_json, "\n".join(_describe(asset)))


# --- relationships --------------------------------------------------------------------------


@click.group()
def rel() -> None:
    """Provenance links between assets."""


@rel.command("add")
@click.argument("from_asset_id")
@click.argument("to_asset_id")
@click.option("--type", "rel_type", required=True, metavar="VERB", help="What the link means, e.g. analysis_of.")
@click.option("--mode", "analysis_mode", type=click.Choice(list(ANALYSIS_MODES)), help="The analysis mode.")
@click.option("--note", "qualifier_note", metavar="TEXT")
@click.option("--time", "qualifier_time", metavar="ISO8601")
@click.option("--qualifiers", metavar="JSON", help="Extra qualifiers as a JSON object.")
@json_option
@click.pass_context
def rel_add(ctx: click.Context, from_asset_id: str, to_asset_id: str, rel_type: str, analysis_mode: str | None,
            qualifier_note: str | None, qualifier_time: str | None, qualifiers: str | None, as_json: bool) -> None:
    """Link FROM_ASSET_ID (the dependent asset) to TO_ASSET_ID (its origin); print the link's id.

    Needs write access to the first and read access to the second.
    """
    with open_client(ctx) as client:
        link = client.create_relationship(from_asset_id, to_asset_id, rel_type, analysis_mode=analysis_mode,
                                          qualifier_note=qualifier_note, qualifier_time=qualifier_time,
                                          qualifiers=_json_object(qualifiers, "--qualifiers"))
    emit(link, as_json, link.relationship_id)


@rel.command("ls")
@click.argument("asset_id")
@json_option
@click.pass_context
def rel_ls(ctx: click.Context, asset_id: str, as_json: bool) -> None:
    """List an asset's links, outgoing and incoming. With --json: {"relationships": [...]}."""
    with open_client(ctx) as client:
        links = client.list_relationships(asset_id)
    if as_json:
        print_json({"relationships": [as_dict(link) for link in links]})
        return
    for link in links:
        direction = link.raw.get("direction", "")
        click.echo(f"{link.relationship_id}  {direction:8}  {link.from_asset_id} --{link.type}--> {link.to_asset_id}")


# --- collections -----------------------------------------------------------------------------


@click.group()
def collection() -> None:
    """Collections group a project's assets."""


@collection.command("create")
@click.argument("project_id")
@click.argument("name")
@click.option("--parent", "parent_id", metavar="ID", help="The parent collection [default: the project's root].")
@json_option
@click.pass_context
def collection_create(ctx: click.Context, project_id: str, name: str, parent_id: str | None, as_json: bool) -> None:
    """Create the collection NAME in PROJECT_ID and print its id."""
    with open_client(ctx) as client:
        made = client.create_collection(project_id, name, parent_id=parent_id)
    emit(made, as_json, made.collection_id)


@collection.command("ls")
@click.argument("project_id")
@json_option
@click.pass_context
def collection_ls(ctx: click.Context, project_id: str, as_json: bool) -> None:
    """List a project's collections, its root first."""
    with open_client(ctx) as client:
        found = client.list_collections(project_id)
    if as_json:
        print_json({"collections": [as_dict(c) for c in found]})
        return
    for c in found:
        click.echo(f"{c.collection_id}  {c.parent_id or '-':24}  {c.name}")
