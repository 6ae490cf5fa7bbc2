"""`fbmem check`: verify (and with --repair, quarantine) a workspace's table parts."""

from __future__ import annotations

from typing import Annotated

import pyarrow as pa
import typer

from fbmem_data.cli.common import WorkspaceOption
from fbmem_data.cli.output import output_options
from fbmem_data.errors import WorkspaceError


@output_options
def check(
    workspace: WorkspaceOption = None,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair", help="Move bad and stray files to WORKSPACE/quarantine/<time>/ (nothing is deleted)."
        ),
    ] = False,
    deep: Annotated[
        bool, typer.Option("--deep", help="Also decode every part's data, not only its footer (slower).")
    ] = False,
) -> pa.Table:
    """Verify every table part against its table's schema and metadata; report stray, unreadable and misplaced parts and row counts."""
    from fbmem_data.check import check_workspace, open_for_check

    ws = open_for_check(workspace)
    report = check_workspace(ws, repair=repair, deep=deep)
    moved = [p for p in report.problems if p.moved_to]
    if moved:
        typer.echo(f"moved {len(moved)} file(s) to {ws.root / str(report.quarantine)}", err=True)
    left = [p for p in report.problems if not p.moved_to]
    if not left:
        if not moved:
            typer.echo(f"all parts of {ws.root} are readable and in place", err=True)
        return report.to_table()
    from fbmem_data.cli.output import emit

    emit(report.to_table())
    files = [p for p in left if p.problem != "dangling"]
    if files:
        raise WorkspaceError(
            f"{len(files)} bad or stray file(s) under {ws.tables_dir}",
            hint=f"`fbmem check -w {ws.root} --repair` moves them to a quarantine folder (nothing is deleted)",
        )
    raise WorkspaceError(
        f"{len(left)} kind(s) of dangling rows (see the table above): rows of a deleted part or store file are gone",
        hint="run the command that wrote the missing rows again (ingest, fetch, generate): it adds only what is missing",
    )


def register(app: typer.Typer) -> None:
    app.command("check")(check)
