"""Options shared by the commands: the workspace, the device, batch size, presets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fbmem_data.workspace import ENV_VAR, Workspace

WorkspaceOption = Annotated[
    Path | None,
    typer.Option("--workspace", "-w", envvar=ENV_VAR, help=f"Workspace directory (or ${ENV_VAR}).", show_envvar=True),
]
DeviceOption = Annotated[str, typer.Option("--device", help="torch device: auto, cpu, cuda, cuda:1 ...")]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", min=1, help="Rows per batch.")]


def open_workspace(path: Path | None) -> Workspace:
    return Workspace.open(path)
