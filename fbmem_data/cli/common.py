"""Options shared by the commands: the workspace, the device, batch size, presets, the engine."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fbmem_data.workspace import ENV_VAR, Workspace

if TYPE_CHECKING:
    from fbmem_data.distribute.protocol import EngineOptions

WorkspaceOption = Annotated[
    Path | None,
    typer.Option("--workspace", "-w", envvar=ENV_VAR, help=f"Workspace directory (or ${ENV_VAR}).", show_envvar=True),
]
DeviceOption = Annotated[str, typer.Option("--device", help="torch device: auto, cpu, cuda, cuda:1 ...")]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", min=1, help="Rows per batch.")]


def _apply_threads(value: int | None) -> int | None:
    # Set while the options are parsed, so a command needs no code for it; torch only when asked.
    if value is not None:
        import torch

        torch.set_num_threads(value)
    return value


ThreadsOption = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        callback=_apply_threads,
        help="torch CPU threads (default: torch's choice; 1 is fastest on a busy machine).",
    ),
]


def open_workspace(path: Path | None) -> Workspace:
    return Workspace.open(path)


class Engine(str, Enum):
    local = "local"
    ray = "ray"


# The engine options every extractor command takes (docs/scale.md).
EngineOption = Annotated[
    Engine, typer.Option("--engine", help="Where the model work runs: local (this process) or ray (Ray Data; pip install 'fbmem[ray]').")
]
RayAddressOption = Annotated[
    str | None, typer.Option("--ray-address", help="ray: an existing cluster (auto, ray://head:10001); default: start a local Ray instance.")
]
NumGpusOption = Annotated[float, typer.Option("--num-gpus", min=0.0, help="ray: GPUs per model actor (0.5 puts two actors on a GPU).")]
ConcurrencyOption = Annotated[int, typer.Option("--concurrency", min=1, help="ray: model actors running at once.")]


def engine_options(ray_address: str | None, num_gpus: float, concurrency: int) -> EngineOptions:
    from fbmem_data.distribute.protocol import EngineOptions

    return EngineOptions(ray_address=ray_address, num_gpus=num_gpus, concurrency=concurrency)
