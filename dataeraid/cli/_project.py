"""``dataerai project``: projects own the assets uploaded into them."""

from __future__ import annotations

import click

from ._context import open_client
from ._output import as_dict, emit, json_option, print_json


@click.group()
def project() -> None:
    """Create and list projects."""


@project.command("create")
@click.argument("name")
@click.option("--description", metavar="D", default="", help="A description of the project.")
@json_option
@click.pass_context
def create(ctx: click.Context, name: str, description: str, as_json: bool) -> None:
    """Create the project NAME (with its root collection) and print its id.

    Needs a token with the `write` scope. With --json prints the project object.
    """
    with open_client(ctx) as client:
        created = client.create_project(name, description=description)
    emit(created, as_json, created.project_id)


@project.command("ls")
@json_option
@click.pass_context
def ls(ctx: click.Context, as_json: bool) -> None:
    """List your projects: id, your role and name. With --json: {"projects": [PROJECT, ...]}."""
    with open_client(ctx) as client:
        found = client.list_projects()
    if as_json:
        print_json({"projects": [as_dict(p) for p in found]})
        return
    for p in found:
        click.echo(f"{p.project_id}  {p.role or '-':7}  {p.name}")
