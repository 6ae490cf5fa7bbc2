"""Distributed forms of the diffusion stages: `generate` and NeMo localization.

Both load a diffusion pipeline in every model actor (once) and keep the resume keys of their own
loops: a generation_id per image (generations), a prompt per localization (nemo_summary). The driver
plans the pending work and never needs a GPU: generate loads the pipeline once on the CPU for its
default size and ids, localization needs only the model id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from fbmem_data.distribute import EngineOptions, ExtractorJob
from fbmem_data.distribute.extractors import engine_scope
from fbmem_data.errors import InputError
from fbmem_data.ids import canonical_json, params_hash
from fbmem_data.runs import recorded

if TYPE_CHECKING:
    from fbmem_data.distribute import Distributor
    from fbmem_data.distribute.protocol import BatchFunction
    from fbmem_data.nemo.localize import Algorithm, LocalizationConfig
    from fbmem_data.workspace import Workspace


# -- generate -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerateModel:
    """Model factory of `generate`: the pipeline and one prepared mitigation per actor."""

    model: str
    model_id: str
    device: str
    dtype: str
    scheduler: str
    mitigation: str
    mitigation_params: dict[str, Any]
    settings: tuple[int, float, int, int]  # steps, guidance, height, width
    prompt_ids: tuple[str, ...]
    run_id: str | None = None

    def __call__(self, ws: Workspace) -> BatchFunction:
        from fbmem_data.generate.generator import batch_rows, generate_batch
        from fbmem_data.generate.loading import load_pipeline
        from fbmem_data.generate.planning import GenerationJob
        from fbmem_data.mitigate import create_mitigation
        from fbmem_data.mitigate.protocol import GenerationSettings

        loaded = load_pipeline(self.model, device=self.device, dtype=self.dtype, scheduler=self.scheduler, model_id=self.model_id)
        mitigation = create_mitigation(self.mitigation, **self.mitigation_params)
        mitigation.prepare(ws, self.model_id, list(self.prompt_ids))
        params_json = canonical_json(mitigation.params())
        settings = GenerationSettings(*self.settings)

        def generate_rows(rows: pa.Table) -> dict[str, list[dict[str, Any]]]:
            keys = ["generation_id", "prompt_id", "prompt", "seed", "scheduler", "dtype"]
            jobs = [GenerationJob(**r) for r in rows.select([k for k in keys if k in rows.column_names]).to_pylist()]
            for job in jobs:
                if job.dtype is not None and job.dtype != loaded.dtype:  # the id promised another precision
                    raise InputError(f"this worker loaded the model in {loaded.dtype}, the plan says {job.dtype}",
                                     hint="pass --dtype fp16 or fp32 explicitly with --engine ray")
            images, applied = generate_batch(loaded.pipe, mitigation, jobs, settings)
            image_rows, generation_rows = batch_rows(
                ws, self.run_id, self.model_id, jobs, images, applied, settings, mitigation, params_json
            )
            return {"images": image_rows, "generations": generation_rows}

        return generate_rows


def generate_distributed(
    ws: Workspace,
    model: str,
    *,
    engine: str | Distributor = "local",
    engine_options: EngineOptions | None = None,
    prompt_set: str | None = None,
    prompt_ids: Sequence[str] | None = None,
    n: int = 4,
    seeds: str | Sequence[int] | None = None,
    seed_start: int = 0,
    steps: int = 50,
    guidance: float = 7.0,
    height: int | None = None,
    width: int | None = None,
    batch_size: int = 4,
    shard_rows: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    scheduler: str = "ddim",
    mitigations: Sequence[str] = ("none",),
    mitigation_params: Mapping[str, Any] | None = None,
    model_id: str | None = None,
) -> pa.Table:
    """`fbmem_data.generate.generate` on a distributor (model given by name: lab, a directory, a hub id).

    The same generation ids as the local loop, so either engine resumes the other's work. Images are
    stored by the actors (content-addressed files in the workspace), then their rows.

    Returns:
        One row per mitigation: mitigation, mitigation_params, planned, already_stored, generated, run_id.
    """
    from fbmem_data.generate.generator import _stored_generation_ids, default_image_size, select_prompts
    from fbmem_data.generate.loading import load_pipeline, resolve_device, resolve_dtype
    from fbmem_data.generate.planning import parse_seeds, plan_jobs
    from fbmem_data.mitigate import create_mitigation, split_mitigation_params

    seed_list = parse_seeds(seeds, n, seed_start)
    prompts = select_prompts(ws, prompt_set, prompt_ids)
    names = list(mitigations)
    if len(set(names)) != len(names):
        raise InputError(f"mitigation listed twice: {names}")
    routed = split_mitigation_params(names, dict(mitigation_params or {}))
    # The driver needs the recorded model id and default size, not a GPU: load once on the CPU.
    probe = load_pipeline(model, device="cpu", dtype="fp32", scheduler=scheduler, model_id=model_id)
    default_h, default_w = default_image_size(probe.pipe)
    mid = probe.model_id
    # The sampler and precision the actors will use (they load dtype_name, not "auto"): part of generation_id.
    scheduler_name = type(probe.pipe.scheduler).__name__
    dtype_name = resolve_dtype(dtype, resolve_device(device))
    del probe
    settings = (int(steps), float(guidance), int(height or default_h), int(width or default_w))
    all_prompt_ids = tuple(dict.fromkeys(pid for pid, _ in prompts))
    config = {"model": model, "model_id": mid, "prompt_set": prompt_set, "n_prompts": len(prompts), "seeds": seed_list,
              "steps": settings[0], "guidance": settings[1], "height": settings[2], "width": settings[3],
              "batch_size": batch_size, "device": device, "dtype": dtype, "mitigations": names,
              "engine": engine if isinstance(engine, str) else engine.name}
    summary: list[dict[str, Any]] = []
    with ws.run("generate", config) as run, engine_scope(engine, engine_options) as distributor:
        stored = _stored_generation_ids(ws, mid)
        for name in names:
            mitigation = create_mitigation(name, **routed[name])
            mitigation.prepare(ws, mid, list(all_prompt_ids))
            params = mitigation.params()
            jobs = plan_jobs(prompts, seed_list, model_id=mid, steps=settings[0], guidance=settings[1], height=settings[2],
                             width=settings[3], mitigation=name, mitigation_params=params, scheduler=scheduler_name,
                             dtype=dtype_name)
            pending = [j for j in jobs if j.generation_id not in stored]
            inputs = pa.Table.from_pylist(
                [{"generation_id": j.generation_id, "prompt_id": j.prompt_id, "prompt": j.prompt, "seed": j.seed,
                  "scheduler": j.scheduler, "dtype": j.dtype} for j in pending],
                schema=pa.schema([("generation_id", pa.string()), ("prompt_id", pa.string()), ("prompt", pa.string()), ("seed", pa.int64()),
                                  ("scheduler", pa.string()), ("dtype", pa.string())]),
            )
            job = ExtractorJob(
                extractor="generate",
                config_hash=params_hash({"model_id": mid, "settings": settings, "mitigation": name, "params": params}),
                tables=("images", "generations"),
                inputs=inputs,
                key=("generation_id",),
                model=GenerateModel(model, mid, device, dtype_name, scheduler, name, dict(routed[name]), settings, all_prompt_ids, run.run_id),
                shard_rows=shard_rows or batch_size * 4,
                batch_size=batch_size,
            )
            distributor.run(ws, job)
            summary.append({"mitigation": name, "mitigation_params": canonical_json(params), "planned": len(jobs),
                            "already_stored": len(jobs) - len(pending), "generated": len(pending), "run_id": run.run_id})
    return pa.Table.from_pylist(summary)


# -- NeMo localization ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LocalizeModel:
    """Model factory of NeMo localization: the pipeline, its NeMo layers and the neuron statistics."""

    model: str
    model_id: str
    device: str
    stats_reference: str
    config: LocalizationConfig
    algorithm: Algorithm
    width: int
    max_batch: int
    base: dict[str, Any] = field(default_factory=dict)  # localization_id, model_id, algorithm, params, run_id

    def __call__(self, ws: Workspace) -> BatchFunction:
        from fbmem_data.generate.loading import load_pipeline
        from fbmem_data.nemo.layers import discover_nemo_layers
        from fbmem_data.nemo.localize import prompt_localization_rows
        from fbmem_data.nemo.stats import load_stats

        pipe = load_pipeline(self.model, device=self.device, model_id=self.model_id).pipe
        _, means, stds = load_stats(ws, self.model_id, self.stats_reference)
        layers = discover_nemo_layers(pipe.unet)

        def localize_rows(rows: pa.Table) -> dict[str, list[dict[str, Any]]]:
            neurons: list[dict[str, Any]] = []
            summaries: list[dict[str, Any]] = []
            for pid, text in zip(rows.column("prompt_id").to_pylist(), rows.column("text").to_pylist(), strict=True):
                got, summary, _ = prompt_localization_rows(
                    pipe, layers, text, {**self.base, "prompt_id": pid}, means, stds, self.config,
                    algorithm=self.algorithm, width=self.width, max_batch=self.max_batch,
                )
                neurons += got
                summaries.append(summary)
            return {"nemo_neurons": neurons, "nemo_summary": summaries}

        return localize_rows


def _localize_run_config(args: Mapping[str, Any]) -> dict[str, Any]:
    from fbmem_data.nemo.localize import localize_run_config

    engine = args["engine"]
    return {**localize_run_config(args), "engine": engine if isinstance(engine, str) else type(engine).__name__}


@recorded("nemo localize", _localize_run_config)
def localize_distributed(
    ws: Workspace,
    model: str,
    model_id: str,
    prompt_ids: Sequence[str],
    *,
    engine: str | Distributor = "local",
    engine_options: EngineOptions | None = None,
    config: LocalizationConfig | None = None,
    stats_reference: str | None = None,
    algorithm: Algorithm = "batched",
    width: int = 16,
    max_batch: int = 160,
    device: str = "auto",
    shard_rows: int = 4,
    run_id: str | None = None,
) -> str:
    """`localize_prompts` on a distributor, one prompt per batch-function call; returns the localization_id.

    Raises:
        InputError: a prompt id is not stored, or the statistics are missing/ambiguous.
    """
    import json

    from fbmem_data.nemo.localize import LocalizationConfig, localization_id
    from fbmem_data.nemo.stats import load_stats

    config = config or LocalizationConfig()
    reference, _, _ = load_stats(ws, model_id, stats_reference)
    loc_id = localization_id(model_id, reference, config, algorithm)
    pending = ws.sql(
        "SELECT prompt_id, any_value(text) AS text FROM prompts WHERE prompt_id IN (SELECT unnest($ids::VARCHAR[])) "
        "AND prompt_id NOT IN (SELECT prompt_id FROM nemo_summary WHERE localization_id = $id) GROUP BY 1",
        {"ids": list(prompt_ids), "id": loc_id},
    )
    known = set(ws.sql("SELECT prompt_id FROM prompts WHERE prompt_id IN (SELECT unnest($ids::VARCHAR[]))", {"ids": list(prompt_ids)})
                .column("prompt_id").to_pylist())
    unknown = [p for p in prompt_ids if p not in known]
    if unknown:
        raise InputError(f"{len(unknown)} prompt id(s) are not in the prompts table, e.g. {unknown[:3]}")
    params = json.dumps({"stats": reference, "config": config.as_params(), "width": width, "max_batch": max_batch})
    base = {"localization_id": loc_id, "model_id": model_id, "algorithm": algorithm, "params": params, "run_id": run_id}
    job = ExtractorJob(
        extractor="nemo-localize",
        config_hash=loc_id,
        tables=("nemo_neurons", "nemo_summary"),
        inputs=pending,
        key=("prompt_id",),
        model=LocalizeModel(model, model_id, device, reference, config, algorithm, width, max_batch, base),
        shard_rows=shard_rows,
        batch_size=1,
    )
    with engine_scope(engine, engine_options) as distributor:
        distributor.run(ws, job)
    return loc_id
