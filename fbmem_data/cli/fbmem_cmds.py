"""`fbmem segment`, `fbmem score`, `fbmem labels`: the FB-Mem metric (library: fbmem_data.fbmem)."""

from __future__ import annotations

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
from fbmem_data.keyvalues import parse_key_values

SegmenterOption = Annotated[str | None, typer.Option("--segmenter", help="Segmenter plug-in: saliency, birefnet, sam, lab ...")]
WeightsOption = Annotated[
    Path | None,
    typer.Option("--weights", help="Segmenter weights: BiRefNet .onnx file or model dir; SAM checkpoint .pth."),
]
OptionOption = Annotated[
    list[str] | None,
    typer.Option("--option", "-O", help="KEY=VALUE setting passed to the segmenter plug-in (repeatable).", metavar="KEY=VALUE"),
]


def _segmenter_options(segmenter: str, weights: Path | None, option: list[str] | None) -> dict[str, Any]:
    opts = parse_key_values(option, "--option", example="model_type=vit_b")
    if weights is not None:
        opts["checkpoint" if segmenter == "sam" else "model_path"] = str(weights)
    return opts


def _print_summary(summary: dict[str, Any]) -> None:
    typer.echo("  ".join(f"{k}={v}" for k, v in summary.items() if k != "config"))


def segment(
    workspace: WorkspaceOption = None,
    segmenter: SegmenterOption = "saliency",
    role: Annotated[list[str] | None, typer.Option("--role", help="Only images of this role (repeatable): train, generated, reference.")] = None,
    weights: WeightsOption = None,
    option: OptionOption = None,
    device: DeviceOption = "auto",
    threads: ThreadsOption = None,
    batch_size: BatchSizeOption = 8,
    engine: EngineOption = Engine.local,
    ray_address: RayAddressOption = None,
    num_gpus: NumGpusOption = 0.0,
    concurrency: ConcurrencyOption = 1,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Write nothing: print how many images would be segmented.")] = False,
) -> None:
    """Segment every ok image that has no mask yet for this segmenter and settings (resumes)."""
    from fbmem_data.fbmem import segment_images

    ws = open_workspace(workspace)
    name = segmenter or "saliency"
    options = _segmenter_options(name, weights, option)
    summary = segment_images(
        ws, name, roles=role, device=device, batch_size=batch_size, options=options, progress=not dry_run, dry_run=dry_run,
        engine=engine.value, engine_options=engine_options(ray_address, num_gpus, concurrency),
    )
    _print_summary(summary)


def score(
    workspace: WorkspaceOption = None,
    pairing: Annotated[
        str | None,
        typer.Option("--pairing", help="pairing_id of the candidates to score (default: the latest); 'exhaustive' creates exhaustive candidates when there are none."),
    ] = None,
    metric: Annotated[str | None, typer.Option("--metric", help="msssim (paper), ssim, msssim-masked, msssim-regions (default).")] = None,
    size: Annotated[int | None, typer.Option("--size", min=16, help="Side the parts are compared at (reference 512).")] = None,
    preset: Annotated[
        str | None,
        typer.Option("--preset", help="paper: the paper's released code exactly; paper-clean: its metric on fbmem's parts; default: fbmem's best."),
    ] = None,
    whole_image: Annotated[
        bool, typer.Option("--whole-image", help="Baseline without segmentation: compare whole images (fg = bg score); the paper's metric unless --preset/--metric.")
    ] = False,
    segmenter: SegmenterOption = None,
    weights: WeightsOption = None,
    option: OptionOption = None,
    metric_option: Annotated[
        list[str] | None,
        typer.Option("--metric-option", "-M", help="KEY=VALUE metric setting, e.g. data_range=1.0, normalize=none (repeatable).", metavar="KEY=VALUE"),
    ] = None,
    device: DeviceOption = "auto",
    threads: ThreadsOption = None,
    batch_size: BatchSizeOption = 8,
    engine: EngineOption = Engine.local,
    ray_address: RayAddressOption = None,
    num_gpus: NumGpusOption = 0.0,
    concurrency: ConcurrencyOption = 1,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Write nothing: print the pending pairs and images and an estimated CPU time.")] = False,
) -> None:
    """Score candidate pairs into region_scores: fg, bg and pair score per pair (resumes)."""
    from fbmem_data.fbmem import score_pairs
    from fbmem_data.fbmem.scoring import PRESETS, ScoreRequest

    ws = open_workspace(workspace)
    create = pairing == "exhaustive"
    seg_name = segmenter or PRESETS.get(preset or ("paper" if whole_image else "default"), PRESETS["default"])["segmenter"]
    request = ScoreRequest(
        pairing_id=None if create else pairing,
        preset=preset,
        metric=metric,
        size=size,
        segmenter=segmenter,
        segmenter_options=_segmenter_options(seg_name, weights, option),
        metric_options=parse_key_values(metric_option, "--metric-option", example="data_range=1.0") if metric_option else None,
        whole_image=whole_image,
        create_exhaustive=create,
        device=device,
        batch_size=batch_size,
    )
    summary = score_pairs(
        ws, request=request, progress=not dry_run, dry_run=dry_run,
        engine=engine.value, engine_options=engine_options(ray_address, num_gpus, concurrency),
    )
    _print_summary(summary)


@output_options
def labels(
    workspace: WorkspaceOption = None,
    tau: Annotated[float, typer.Option("--tau", help="Label threshold on fg/bg scores, in [0, 1] (reference 0.8).")] = 0.8,
    scoring_id: Annotated[
        str | None, typer.Option("--scoring-id", help="Which scoring configuration (default: the one whose latest run started last).")
    ] = None,
    per_image: Annotated[bool, typer.Option("--per-image", help="Print every generated image's label instead of the rates.")] = False,
) -> pa.Table:
    """Print FB-Mem label rates (VM/BM/FM/NM) by prompt set, model and mitigation, on matched generations.

    Within a prompt set, n counts the prompts, seeds and sampler settings that every model and mitigation
    of the set generated (n_generated: all). The scoring the labels come from is named on stderr.
    """
    from fbmem_data.fbmem import label_rows
    from fbmem_data.fbmem import labels as rates
    from fbmem_data.fbmem.labelling import describe_scoring

    ws = open_workspace(workspace)
    table = label_rows(ws, tau, scoring_id) if per_image else rates(ws, tau, scoring_id)
    typer.echo(f"labels from {describe_scoring(ws, scoring_id)}; tau {tau:g}", err=True)
    return table


def eval_cmd(
    workspace: Annotated[
        Path | None,
        typer.Option("--workspace", "-w", help="Workspace to store eval_results in (default $FBMEM_WORKSPACE; none: print only)."),
    ] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="default, paper or paper-clean; --metric/--size/-M override it.")] = None,
    metric: Annotated[str | None, typer.Option("--metric", help="msssim (paper), ssim, msssim-masked, msssim-regions ...")] = None,
    size: Annotated[int | None, typer.Option("--size", min=16, help="Comparison side for every bed (default: the preset's; the lab bed: 256).")] = None,
    segmenter: Annotated[str | None, typer.Option("--segmenter", help="Segmenter of the planted and real-photos beds (default saliency; the lab bed uses lab).")] = None,
    weights: WeightsOption = None,
    option: OptionOption = None,
    metric_option: Annotated[
        list[str] | None,
        typer.Option("--metric-option", "-M", help="KEY=VALUE metric setting (repeatable).", metavar="KEY=VALUE"),
    ] = None,
    bed: Annotated[list[str] | None, typer.Option("--bed", help="lab, planted, real-photos (repeatable; default all).")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed the beds are built from.")] = 0,
    tau: Annotated[float, typer.Option("--tau", help="Label threshold (reference 0.8).")] = 0.8,
    k: Annotated[int, typer.Option("--k", min=1, help="Thumbnail candidates per generated image (lab: k+2).")] = 3,
    small: Annotated[bool, typer.Option("--small", help="A few cases per label (a smoke test, not a measurement).")] = False,
    device: DeviceOption = "auto",
    threads: ThreadsOption = None,
) -> None:
    """Score a preset or configuration on the built-in test beds with known truth and print accuracy tables."""
    import os

    from fbmem_data.evaluate import evaluate, format_table
    from fbmem_data.segment.base import resolve_device

    ws = open_workspace(workspace) if workspace is not None or os.environ.get("FBMEM_WORKSPACE") else None
    cache = None if ws is not None else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fbmem" / "eval"
    seg_name = segmenter or "saliency"
    result = evaluate(
        ws,
        preset=preset,
        metric=metric,
        size=size,
        segmenter=segmenter,
        metric_options=parse_key_values(metric_option, "--metric-option", example="data_range=1.0") if metric_option else None,
        segmenter_options=_segmenter_options(seg_name, weights, option),
        beds=tuple(bed) if bed else None,
        seed=seed,
        small=small,
        tau=tau,
        k=k,
        device=resolve_device(device),
        cache_dir=cache,
        log=lambda m: typer.echo(m, err=True),
        skip_unavailable=not bed,  # all beds by default: one whose data is missing is reported, not fatal
    )
    typer.echo(format_table(result))
    where = f"stored in eval_results of {ws.root}" if ws is not None else "not stored (pass -w DIR to keep them in eval_results)"
    typer.echo(f"\nresults {where}; seconds per bed: {result.seconds}")


def register(app: typer.Typer) -> None:
    app.command("segment")(segment)
    app.command("score")(score)
    app.command("labels")(labels)
    app.command("eval")(eval_cmd)
