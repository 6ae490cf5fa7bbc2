"""`fbmem nemo ...` (activations, statistics, import, detection, calibration, localization) and
`fbmem nemo-c ...` (clusters and cluster masks). Thin layer over fbmem_data.nemo; torch is imported
inside the commands only."""

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
from fbmem_data.errors import FbmemError, InputError

nemo_app = typer.Typer(help="NeMo: find the neurons that memorize (activations, detection, localization).", no_args_is_help=True)
nemo_c_app = typer.Typer(help="NeMo-C: cluster prompts and build cluster-wise neuron masks.", no_args_is_help=True)

ModelOption = Annotated[str, typer.Option("--model", "-m", help="A model source (`lab`, `lab-v2`), a diffusers directory, or a cached hub id.")]
ModelIdOption = Annotated[str | None, typer.Option("--model-id", help="Model id to record (default: derived from --model).")]
PromptsOption = Annotated[str, typer.Option("--prompts", help="Prompt set (prompts.prompt_set).")]
SD_V14 = "CompVis/stable-diffusion-v1-4"


def _model_id(model: str, model_id: str | None) -> str:
    from fbmem_data.generate.loading import default_model_id

    return model_id or default_model_id(model)


def _load(model: str, model_id: str | None, device: str) -> tuple[Any, str]:
    try:
        from fbmem_data.generate.loading import load_pipeline
    except ImportError as exc:  # the generation module is another helper's; say so plainly
        raise FbmemError("fbmem_data.generate (the pipeline loader) is not installed in this checkout") from exc
    loaded = load_pipeline(model, device=device, model_id=model_id)
    return loaded.pipe, loaded.model_id


@output_options
def activations(
    model: ModelOption,
    prompts: PromptsOption,
    workspace: WorkspaceOption = None,
    model_id: ModelIdOption = None,
    stats: Annotated[bool, typer.Option("--stats", help="Also store per-neuron mean/std over this set in neuron_stats.")] = False,
    device: DeviceOption = "auto",
    threads: ThreadsOption = None,
    batch_size: BatchSizeOption = 32,
) -> pa.Table:
    """Store each prompt's NeMo activations (mean |to_v(E)| per neuron) in `activations`."""
    from fbmem_data.nemo.activations import compute_activations
    from fbmem_data.nemo.stats import compute_stats

    ws = open_workspace(workspace)
    pipe, mid = _load(model, model_id, device)
    written = compute_activations(ws, pipe, mid, prompts, batch_size=batch_size)
    stat_rows = compute_stats(ws, mid, prompts) if stats else 0
    return pa.table({"model_id": [mid], "prompt_set": [prompts], "activation_rows": [written], "neuron_stats_rows": [stat_rows]})


@output_options
def import_stats(
    file: Annotated[Path, typer.Argument(help="NeMo statistics .pt: a (means, stds) tuple of per-layer tensors.")],
    workspace: WorkspaceOption = None,
    model_id: Annotated[str, typer.Option("--model-id", help="Model the statistics belong to.")] = SD_V14,
) -> pa.Table:
    """Import reference activation statistics (e.g. statistics_additional_laion_prompts_v1_4.pt) into neuron_stats."""
    from fbmem_data.nemo.stats import import_stats_file

    ws = open_workspace(workspace)
    written = import_stats_file(ws, file, model_id)
    return ws.sql("SELECT *, $n AS rows_written FROM nemo_stats_layers WHERE model_id = $m", {"m": model_id, "n": written})


@output_options
def import_neurons(
    file: Annotated[Path, typer.Argument(help="NeMo output CSV (Caption;URL;Initial Neurons;...;Refined SSIM).")],
    workspace: WorkspaceOption = None,
    model_id: Annotated[str, typer.Option("--model-id")] = SD_V14,
    prompts: Annotated[str, typer.Option("--prompts", help="Prompt set the captions belong to.")] = "memorized",
) -> pa.Table:
    """Import NeMo's released neuron lists into nemo_neurons (matched to prompts by caption)."""
    from fbmem_data.nemo.import_csv import import_nemo_csv

    ws = open_workspace(workspace)
    report = import_nemo_csv(ws, file, model_id=model_id, prompt_set=prompts)
    if report.unmatched:
        typer.echo(f"{len(report.unmatched)} caption(s) matched no prompt, e.g. {report.unmatched[:3]}", err=True)
    return ws.sql("SELECT * FROM nemo_neuron_stats WHERE localization_id = $id", {"id": report.localization_id})


@output_options
def detect(
    model: ModelOption,
    prompts: PromptsOption,
    workspace: WorkspaceOption = None,
    model_id: ModelIdOption = None,
    method: Annotated[str, typer.Option("--method", help="nemo_msssim or wen_norm.")] = "nemo_msssim",
    n_seeds: Annotated[int, typer.Option("--n-seeds", min=2)] = 10,
    latent_size: Annotated[int | None, typer.Option("--latent-size", help="Default: the UNet's sample_size.")] = None,
    preset: Annotated[str, typer.Option("--preset", help="'paper' (NeMo's MS-SSIM exactly) or 'paper-clean' (data range 1).")] = "paper",
    device: DeviceOption = "auto",
    threads: ThreadsOption = None,
) -> pa.Table:
    """Score memorization per prompt into detection_scores (NeMo's noise-difference MS-SSIM or Wen's norm)."""
    from fbmem_data.nemo.detect import record_detection_scores
    from fbmem_data.nemo.localize import PRESETS

    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}", hint=f"available: {sorted(PRESETS)}")
    ws = open_workspace(workspace)
    pipe, mid = _load(model, model_id, device)
    import dataclasses

    settings = dataclasses.replace(PRESETS[preset].noise, n_seeds=n_seeds, latent_size=latent_size)
    config_hash = record_detection_scores(ws, pipe, mid, prompts, method=method, settings=settings)
    return ws.sql(
        "SELECT d.method, d.config_hash, count(score) AS n, avg(score) AS mean, stddev_samp(score) AS std, "
        "min(score) AS min, max(score) AS max, count(error) AS errors FROM detection_scores d JOIN prompts p USING (prompt_id) "
        "WHERE d.config_hash = $h AND p.prompt_set = $s GROUP BY ALL",
        {"h": config_hash, "s": prompts},
    )


@output_options
def calibrate(
    prompts: Annotated[str, typer.Option("--prompts", help="A NON-memorized prompt set with detection scores.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model (only its id is used).")],
    workspace: WorkspaceOption = None,
    model_id: ModelIdOption = None,
    method: Annotated[str, typer.Option("--method")] = "nemo_msssim",
    config: Annotated[str | None, typer.Option("--config", help="detection_scores.config_hash when several exist.")] = None,
    n_std: Annotated[float, typer.Option("--n-std")] = 1.0,
) -> pa.Table:
    """Set the detection threshold tau = mean + n_std * std over a non-memorized set (nemo_calibration)."""
    from fbmem_data.nemo.detect import calibrate as run_calibrate

    ws = open_workspace(workspace)
    mid = _model_id(model, model_id)
    row = run_calibrate(ws, mid, prompts, method=method, config_hash=config, n_std=n_std)
    return pa.Table.from_pylist([row])


@output_options
def localize(
    model: ModelOption,
    workspace: WorkspaceOption = None,
    prompts: Annotated[str | None, typer.Option("--prompts", help="Prompt set to localize.")] = None,
    prompt_id: Annotated[list[str] | None, typer.Option("--prompt-id", help="Single prompt(s) instead of a set.")] = None,
    model_id: ModelIdOption = None,
    preset: Annotated[str, typer.Option("--preset", help="Constant set: 'paper' (NeMo's code exactly) or 'paper-clean' (simpler MS-SSIM, ascending refinement order).")] = "paper",
    tau: Annotated[str | None, typer.Option("--tau", help="Threshold: a number, or 'calibrated' (nemo calibrate). Default: the preset's 0.428.")] = None,
    algorithm: Annotated[str, typer.Option("--algorithm", help="batched, or sequential (the reference).")] = "batched",
    width: Annotated[int, typer.Option("--width", min=1, help="Hypotheses per batched UNet call.")] = 16,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Most latent samples per UNet call.")] = 160,
    stats: Annotated[str | None, typer.Option("--stats", help="neuron_stats reference (when a model has several).")] = None,
    n_seeds: Annotated[int | None, typer.Option("--n-seeds", min=2)] = None,
    latent_size: Annotated[int | None, typer.Option("--latent-size")] = None,
    force: Annotated[bool, typer.Option("--force", help="Localize prompts whose detection score is below tau too.")] = False,
    limit: Annotated[int | None, typer.Option("--limit", min=1)] = None,
    device: DeviceOption = "auto",
    threads: ThreadsOption = None,
    engine: EngineOption = Engine.local,
    ray_address: RayAddressOption = None,
    num_gpus: NumGpusOption = 0.0,
    concurrency: ConcurrencyOption = 1,
) -> pa.Table:
    """Localize memorization neurons (NeMo initial selection + refinement) into nemo_neurons / nemo_summary."""
    import dataclasses

    from fbmem_data.generate.loading import model_id_for
    from fbmem_data.nemo.detect import current_tau
    from fbmem_data.nemo.localize import PRESETS, localize_prompts

    if algorithm not in ("batched", "sequential"):
        raise InputError(f"--algorithm must be batched or sequential, got {algorithm!r}")
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}", hint=f"available: {sorted(PRESETS)}")
    if (prompts is None) == (not prompt_id):
        raise InputError("give exactly one of --prompts SET or --prompt-id ID")
    ws = open_workspace(workspace)
    # the engine loads the pipeline where it localizes (only when a prompt is left); here only its id is needed
    mid = model_id_for(model, model_id)
    config = PRESETS[preset]
    changes: dict[str, Any] = {}
    if tau is not None:
        changes["tau"] = current_tau(ws, mid) if tau == "calibrated" else float(tau)
    if force:
        changes["skip_not_memorized"] = False
    noise_changes = {k: v for k, v in (("n_seeds", n_seeds), ("latent_size", latent_size)) if v is not None}
    if noise_changes:
        changes["noise"] = dataclasses.replace(config.noise, **noise_changes)
    config = dataclasses.replace(config, **changes)
    ids = list(prompt_id or [])
    if prompts is not None:
        ids = ws.sql(
            "SELECT prompt_id FROM prompts WHERE prompt_set = $s ORDER BY source_index NULLS LAST, source_key, prompt_id", {"s": prompts}
        ).column("prompt_id").to_pylist()
        if not ids:
            raise InputError(f"no prompts in set {prompts!r}")
    ids = ids[:limit] if limit else ids
    loc_id = localize_prompts(
        ws, model, mid, ids, config=config, stats_reference=stats, algorithm=algorithm,  # type: ignore[arg-type]
        width=width, max_batch=max_batch, device=device,
        engine=engine.value, engine_options=engine_options(ray_address, num_gpus, concurrency),
        progress=lambda pid, res: typer.echo(f"{pid}: {res.status}, {sum(len(v) for v in res.refined.values())} neuron(s)", err=True),
    )
    return ws.sql("SELECT * FROM nemo_localization_cost WHERE localization_id = $id", {"id": loc_id})


@output_options
def cluster(
    model: ModelOption,
    prompts: PromptsOption,
    workspace: WorkspaceOption = None,
    model_id: ModelIdOption = None,
    k: Annotated[str, typer.Option("--k", help="Number of clusters, or 'auto' (best silhouette).")] = "12",
    embedding: Annotated[str, typer.Option("--embedding", help="flat (paper), pooled, or minilm.")] = "flat",
    random_state: Annotated[int, typer.Option("--random-state")] = 1,
    max_iter: Annotated[int, typer.Option("--max-iter")] = 500,
    device: DeviceOption = "auto",
    threads: ThreadsOption = None,
) -> pa.Table:
    """Cluster a prompt set by its text embeddings (KMeans) into prompt_clusters."""
    from fbmem_data.nemo.clusters import cluster_prompts

    if embedding not in ("flat", "pooled", "minilm"):
        raise InputError(f"--embedding must be flat, pooled or minilm, got {embedding!r}")
    k_value: int | str = k if k == "auto" else int(k)
    ws = open_workspace(workspace)
    pipe, mid = (None, _model_id(model, model_id)) if embedding == "minilm" else _load(model, model_id, device)
    cid = cluster_prompts(ws, pipe, mid, prompts, k=k_value, embedding=embedding,  # type: ignore[arg-type]
                          random_state=random_state, max_iter=max_iter)
    return ws.sql(
        "SELECT clustering_id, cluster, count(*) AS n_prompts, any_value(silhouette) AS silhouette FROM prompt_clusters "
        "WHERE clustering_id = $c GROUP BY ALL ORDER BY cluster",
        {"c": cid},
    )


@output_options
def masks(
    clustering: Annotated[str, typer.Option("--clustering", help="prompt_clusters.clustering_id.")],
    localization: Annotated[str, typer.Option("--localization", help="nemo_neurons.localization_id.")],
    workspace: WorkspaceOption = None,
    q: Annotated[float | None, typer.Option("--q", help="Keep neurons in >= q of a cluster's prompts (default: union).")] = None,
) -> pa.Table:
    """Build the clusters' neuron masks in SQL into cluster_masks."""
    from fbmem_data.nemo.clusters import build_cluster_masks

    ws = open_workspace(workspace)
    mask_id = build_cluster_masks(ws, clustering, localization, q=q)
    return ws.sql("SELECT * FROM nemo_cluster_mask_sizes WHERE mask_id = $m", {"m": mask_id})


@output_options
def export_neurons(
    localization_id: Annotated[str, typer.Argument(help="nemo_summary.localization_id to export.")],
    file: Annotated[Path, typer.Argument(help="Output CSV in NeMo's format (Caption;URL;Initial Neurons;...).")],
    prompts: Annotated[str | None, typer.Option("--prompts", help="Only the prompts of this set.")] = None,
    workspace: WorkspaceOption = None,
) -> pa.Table:
    """Export a localization's neuron lists in NeMo's CSV format (`fbmem nemo import` reads it back)."""
    from fbmem_data.nemo.export_csv import export_nemo_csv

    ws = open_workspace(workspace)
    written = export_nemo_csv(ws, localization_id, file, prompt_set=prompts)
    return pa.table({"localization_id": [localization_id], "file": [str(file)], "prompts": [written]})


def register(app: typer.Typer) -> None:
    nemo_app.command("activations")(activations)
    nemo_app.command("import-stats")(import_stats)
    nemo_app.command("import")(import_neurons)
    nemo_app.command("export")(export_neurons)
    nemo_app.command("detect")(detect)
    nemo_app.command("calibrate")(calibrate)
    nemo_app.command("localize")(localize)
    nemo_c_app.command("cluster")(cluster)
    nemo_c_app.command("masks")(masks)
    app.add_typer(nemo_app, name="nemo")
    app.add_typer(nemo_c_app, name="nemo-c")
