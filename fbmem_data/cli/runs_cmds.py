"""`fbmem runs list|show`: what ran in a workspace, with which settings (the `runs` table)."""

from __future__ import annotations

from typing import Annotated

import pyarrow as pa
import typer

from fbmem_data.cli.common import WorkspaceOption, open_workspace
from fbmem_data.cli.output import output_options

runs_app = typer.Typer(help="What ran in the workspace and with which settings.", no_args_is_help=True)


@output_options
def list_cmd(
    workspace: WorkspaceOption = None,
    command: Annotated[
        str | None,
        typer.Option("--command", help="Only runs of this command, e.g. generate, 'nemo localize'."),
    ] = None,
    status: Annotated[
        str | None,
        typer.Option("--status", help="Only runs with this status: running, ok, failed, interrupted."),
    ] = None,
    last: Annotated[int | None, typer.Option("--last", min=1, help="Only the N most recent runs.")] = None,
) -> pa.Table:
    """Every run, newest first: command, status, start, seconds and its settings (config)."""
    from fbmem_data.runs import list_runs

    return list_runs(open_workspace(workspace), command=command, status=status, last=last)


@output_options
def show_cmd(
    run_id: Annotated[str, typer.Argument(help="A run id, or a unique prefix of one.")],
    workspace: WorkspaceOption = None,
) -> pa.Table:
    """One run's status, every setting and the package and model versions it ran with, one per row."""
    from fbmem_data.runs import show_run

    return show_run(open_workspace(workspace), run_id)


def register(app: typer.Typer) -> None:
    runs_app.command("list")(list_cmd)
    runs_app.command("show")(show_cmd)
    app.add_typer(runs_app, name="runs")
