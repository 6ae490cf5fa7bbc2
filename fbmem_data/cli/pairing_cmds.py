"""`fbmem embed` and `fbmem pair`: thin layers over fbmem_data.embed and fbmem_data.pairing.

torch, usearch and the plug-ins are imported inside the commands, never at module import.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import typer

from fbmem_data.cli.common import (
    BatchSizeOption,
    ConcurrencyOption,
    DeviceOption,
    Engine,
    EngineOption,
    NumGpusOption,
    RayAddressOption,
    ThreadsOption,
    WorkspaceOption,
    engine_options,
    open_workspace,
)
from fbmem_data.cli.output import output_options
from fbmem_data.errors import InputError


class Role(str, Enum):
    train = "train"
    generated = "generated"
    all = "all"


class Method(str, Enum):
    exhaustive = "exhaustive"
    ann = "ann"


class Search(str, Enum):
    auto = "auto"
    exact = "exact"
    hnsw = "hnsw"


class Preset(str, Enum):
    paper = "paper"


EmbedderOption = Annotated[
    str, typer.Option("--embedder", "-e", help="Embedder plug-in: thumbnail, efficientnet-lite0, open_clip, sscd.")
]
WeightsOption = Annotated[
    Path | None,
    typer.Option("--weights", help="Local weights: SSCD TorchScript file, OpenCLIP checkpoint file or directory."),
]
ModelNameOption = Annotated[
    str | None, typer.Option("--model-name", help="open_clip architecture, e.g. ViT-B-32-quickgelu (default ViT-B-32).")
]
SizeOption = Annotated[int | None, typer.Option("--size", help="Input size: thumbnail side (16) or SSCD resize (320).")]


def embedder_options(name: str, weights: Path | None, model_name: str | None, size: int | None) -> dict[str, Any]:
    """Map the generic CLI flags onto the option names of each plug-in."""
    options: dict[str, Any] = {}
    if weights is not None:
        options["pretrained" if name == "open_clip" else "weights"] = weights
    if model_name is not None:
        if name != "open_clip":
            raise InputError("--model-name applies to the open_clip embedder only")
        options["model_name"] = model_name
    if size is not None:
        if name not in ("thumbnail", "sscd"):
            raise InputError("--size applies to the thumbnail and sscd embedders only")
        options["size"] = size
    return options


@output_options
def embed(
    workspace: WorkspaceOption = None,
    embedder: EmbedderOption = "thumbnail",
    role: Annotated[Role, typer.Option("--role", help="Which images to embed.")] = Role.all,
    device: DeviceOption = "auto",
    threads: ThreadsOption = None,
    batch_size: BatchSizeOption = 64,
    weights: WeightsOption = None,
    model_name: ModelNameOption = None,
    size: SizeOption = None,
    engine: EngineOption = Engine.local,
    ray_address: RayAddressOption = None,
    num_gpus: NumGpusOption = 0.0,
    concurrency: ConcurrencyOption = 1,
) -> pa.Table:
    """Embed images into the `embeddings` table (skips images already embedded with the same settings)."""
    from fbmem_data.embed import embed_images

    ws = open_workspace(workspace)
    summary = embed_images(
        ws,
        embedder,
        role=role.value,
        device=device,
        batch_size=batch_size,
        embedder_options=embedder_options(embedder, weights, model_name, size),
        progress=True,
        engine=engine.value,
        engine_options=engine_options(ray_address, num_gpus, concurrency),
    )
    return pa.Table.from_pylist([summary.as_row()])


@output_options
def pair(
    workspace: WorkspaceOption = None,
    method: Annotated[
        Method | None, typer.Option("--method", help="exhaustive: all pairs (the paper); ann: top-k by embedding.")
    ] = None,
    embedder: EmbedderOption = "thumbnail",
    k: Annotated[int, typer.Option("--k", min=1, help="ann: training images kept per generated image.")] = 20,
    search: Annotated[
        Search, typer.Option("--search", help="ann: exact top-k, usearch HNSW, or auto (exact up to 250,000 training images or on a GPU).")
    ] = Search.auto,
    preset: Annotated[Preset | None, typer.Option("--preset", help="paper: exhaustive pairing, as the reference.")] = None,
    device: DeviceOption = "auto",
    threads: ThreadsOption = None,
    batch_size: BatchSizeOption = 64,
    weights: WeightsOption = None,
    model_name: ModelNameOption = None,
    size: SizeOption = None,
    max_pairs: Annotated[
        int, typer.Option("--max-pairs", min=1, help="exhaustive: refuse to write more pairs than this.")
    ] = 50_000_000,
    engine: EngineOption = Engine.local,
    ray_address: RayAddressOption = None,
    num_gpus: NumGpusOption = 0.0,
    concurrency: ConcurrencyOption = 1,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Write nothing: print the images to embed and pair, the candidate rows and an estimated CPU time.")
    ] = False,
) -> pa.Table:
    """Choose candidate training images for every generated image (the `candidates` table); prints the pairing_id."""
    from fbmem_data.pairing import pair_with_summary

    if preset is Preset.paper and method is Method.ann:
        raise InputError("--preset paper pairs exhaustively; drop --method ann or the preset")
    chosen = (method or Method.exhaustive).value
    ws = open_workspace(workspace)
    if dry_run:
        from fbmem_data.pairing.dry_run import plan_pairing, plan_table

        return plan_table(plan_pairing(
            ws, chosen, embedder, k, embedder_options=embedder_options(embedder, weights, model_name, size) if chosen == "ann" else None,
            device=device, search=search.value, max_pairs=max_pairs,
        ))
    summary = pair_with_summary(
        ws,
        chosen,
        embedder,
        k,
        embedder_options=embedder_options(embedder, weights, model_name, size) if chosen == "ann" else None,
        device=device,
        batch_size=batch_size,
        search=search.value,
        max_pairs=max_pairs,
        progress=True,
        engine=engine.value,
        engine_options=engine_options(ray_address, num_gpus, concurrency),
    )
    return pa.Table.from_pylist([summary.as_row()])


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)
    app.command("pair")(pair)
