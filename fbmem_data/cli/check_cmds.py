"""`fbmem check`: verify (and with --repair, quarantine) a workspace's table parts."""

from __future__ import annotations

from typing import Annotated

import pyarrow as pa
import typer

from fbmem_data.cli.common import WorkspaceOption, open_workspace
from fbmem_data.cli.output import output_options
from fbmem_data.errors import WorkspaceError


@output_options
def check(
    workspace: WorkspaceOption = None,
    repair: Annotated[bool, typer.Option("--repair", help="Move bad and stray files to WORKSPACE/quarantine/<time>/ (nothing is deleted).")] = False,
    deep: Annotated[bool, typer.Option("--deep", help="Also decode every part's data, not only its footer (slower).")] = False,
) -> pa.Table:
    """Verify every table part against its table's schema and metadata; report stray, unreadable and misplaced parts and row counts."""
    from fbmem_data.check import check_workspace

    ws = open_workspace(workspace)
    report = check_workspace(ws, repair=repair, deep=deep)
    n = len(report.problems)
    if report.quarantine:
        typer.echo(f"moved {n} file(s) to {ws.root / report.quarantine}", err=True)
    elif n:
        from fbmem_data.cli.output import emit

        emit(report.to_table())
        raise WorkspaceError(
            f"{n} bad or stray file(s) under {ws.tables_dir}",
            hint=f"`fbmem check -w {ws.root} --repair` moves them to a quarantine folder (nothing is deleted)",
        )
    else:
        typer.echo(f"all parts of {ws.root} are readable and in place", err=True)
    return report.to_table()


def register(app: typer.Typer) -> None:
    app.command("check")(check)
