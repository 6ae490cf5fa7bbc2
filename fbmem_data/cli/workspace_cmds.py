"""`fbmem init`, `fbmem sql` (alias `query`), `fbmem tables`: table-only commands, no torch."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import pyarrow as pa
import typer

from fbmem_data.cli.common import WorkspaceOption, open_workspace
from fbmem_data.cli.output import output_options
from fbmem_data.errors import InputError
from fbmem_data.workspace import Workspace


def init(
    path: Annotated[Path, typer.Argument(help="Directory to create (or repair) as a workspace.")],
    repair: Annotated[bool, typer.Option("--repair", help="Rewrite a missing or damaged fbmem.json of an existing workspace (tables and images are kept).")] = False,
) -> None:
    """Create a workspace: Parquet tables, an image store and a DuckDB catalog."""
    ws = Workspace.init(path, repair=repair)
    typer.echo(f"workspace ready: {ws.root}")
    typer.echo(f"  duckdb {ws.catalog_path}    # SQL shell over every table and view")


def _parse_params(param: list[str] | None) -> dict[str, str]:
    params = {}
    for item in param or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"-p/--param needs a name and a value, got {item!r}", hint="-p tau 0.7")
        params[name] = value
    bad = [name for name in params if not name.isidentifier()]
    if bad:
        raise InputError(f"parameter name(s) {bad} are not identifiers", hint="-p tau 0.7")
    return params


@output_options
def sql(
    query: Annotated[str, typer.Argument(help="SQL to run; '-' reads it from stdin.")],
    workspace: WorkspaceOption = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="NAME VALUE: a $NAME parameter, also set as a DuckDB variable for views.", metavar="NAME VALUE"),
    ] = None,
) -> pa.Table:
    """Run a SQL query against the workspace's tables and views."""
    if query == "-":
        query = sys.stdin.read()
    ws = open_workspace(workspace)
    return ws.sql(query, _parse_params(param))


@output_options
def tables(workspace: WorkspaceOption = None) -> pa.Table:
    """List the tables and views with their row counts and schema versions."""
    from fbmem_data.schemas import all_schemas

    ws = open_workspace(workspace)
    rows = []
    for name, schema in all_schemas().items():
        rows.append({"name": name, "kind": "table", "rows": ws.count(name), "schema_version": schema.version})
    views = ws.sql(
        "SELECT view_name FROM duckdb_views() WHERE NOT internal AND view_name NOT IN "
        "(SELECT unnest($tables::VARCHAR[])) ORDER BY 1",
        {"tables": list(all_schemas())},
    )
    for name in views.column("view_name").to_pylist():
        rows.append({"name": name, "kind": "view", "rows": None, "schema_version": None})
    return pa.Table.from_pylist(rows)


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("sql")(sql)
    app.command("query", help="Alias of `fbmem sql`.")(sql)
    app.command("tables")(tables)
