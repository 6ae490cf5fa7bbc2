"""Generate images for prompts under mitigations, batched and resumable, into the workspace tables.

`generate()` is the library form of `fbmem generate` (settings: a `GenerateRequest`); it plans the
images and runs each mitigation's pending ones as a job (`GenerateModel`) on engine "local" or "ray".
`generate_batch()` is the pure part (no workspace): initial noise from per-image seeds, the mitigation's
context, one pipeline call.
"""

from __future__ import annotations

import datetime as dt
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fbmem_data.errors import InputError
from fbmem_data.generate.loading import LoadedPipeline, load_pipeline, resolve_guidance
from fbmem_data.generate.planning import GenerationJob, parse_seeds, plan_jobs
from fbmem_data.ids import canonical_json
from fbmem_data.mitigate import create_mitigation, split_mitigation_params
from fbmem_data.mitigate.protocol import GenerationBatch, GenerationSettings, Mitigation
from fbmem_data.noise import default_image_size, initial_latents, shape_noise  # noqa: F401  (also imported from here)

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from fbmem_data.distribute import Distributor, EngineOptions
    from fbmem_data.distribute.protocol import BatchFunction
    from fbmem_data.workspace import Workspace


def make_batch(pipe: Any, jobs: Sequence[GenerationJob], settings: GenerationSettings) -> GenerationBatch:
    return GenerationBatch(
        prompt_ids=[j.prompt_id for j in jobs],
        prompts=[j.prompt for j in jobs],
        seeds=[j.seed for j in jobs],
        settings=settings,
        latents=initial_latents(pipe, [j.seed for j in jobs], settings.height, settings.width),
    )


def run_pipeline(pipe: Any, batch: GenerationBatch) -> np.ndarray:
    """One pipeline call on a (possibly mitigated) batch.

    Returns:
        uint8 array (B, H, W, 3).
    """
    import numpy as np

    kwargs: dict[str, Any] = {
        "num_inference_steps": batch.settings.steps,
        "guidance_scale": batch.settings.guidance,
        "height": batch.settings.height,
        "width": batch.settings.width,
        "latents": batch.latents,
        "output_type": "np",
    }
    if batch.prompt_embeds is not None:
        kwargs["prompt_embeds"] = batch.prompt_embeds
    else:
        kwargs["prompt"] = list(batch.prompts)
    if batch.negative_prompt_embeds is not None:
        kwargs["negative_prompt_embeds"] = batch.negative_prompt_embeds
    images = pipe(**kwargs).images
    return (np.clip(np.asarray(images, dtype=np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)


def generate_batch(
    pipe: Any, mitigation: Mitigation, jobs: Sequence[GenerationJob], settings: GenerationSettings
) -> tuple[np.ndarray, GenerationBatch]:
    """Generate one batch under a mitigation (no workspace involved).

    Returns:
        (uint8 images (B, H, W, 3), the batch as the mitigation rewrote it: prompts, details ...).
    """
    batch = make_batch(pipe, jobs, settings)
    with mitigation.apply(pipe, batch) as applied:
        if len(applied) != len(batch):
            raise InputError(f"mitigation {mitigation.name!r} changed the batch size {len(batch)} -> {len(applied)}")
        images = run_pipeline(pipe, applied)
    return images, applied


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def select_prompts(ws: Workspace, prompt_set: str | None, prompt_ids: Sequence[str] | None) -> list[tuple[str, str]]:
    """(prompt_id, text) of a set and/or an id list, in the set's file order.

    Raises:
        InputError: neither given, an id that is not stored, or nothing selected.
    """
    if prompt_set is None and not prompt_ids:
        raise InputError("no prompts selected", hint="pass --prompts SET and/or --prompt-ids ID ...")
    rows = ws.sql(
        """
        SELECT prompt_id, text FROM prompts
        WHERE ($prompt_set IS NULL OR prompt_set = $prompt_set)
        ORDER BY prompt_set, TRY_CAST(source_key AS BIGINT) NULLS LAST, source_key, prompt_id
        """,
        {"prompt_set": prompt_set},
    ).to_pylist()
    if prompt_ids:
        wanted = list(dict.fromkeys(prompt_ids))
        by_id = {r["prompt_id"]: r["text"] for r in rows}
        missing = [p for p in wanted if p not in by_id]
        if missing:
            where = f"in prompt set {prompt_set!r}" if prompt_set else "in the prompts table"
            raise InputError(f"{len(missing)} prompt id(s) not found {where}: {', '.join(missing[:5])}")
        return [(p, by_id[p]) for p in wanted]
    if not rows:
        raise InputError(f"prompt set {prompt_set!r} has no prompts in {ws.root}", hint="ingest prompts first")
    return [(r["prompt_id"], r["text"]) for r in rows]


def stored_generation_ids(ws: Workspace, model_id: str) -> set[str]:
    table = ws.sql("SELECT generation_id FROM generations WHERE model_id = $model_id", {"model_id": model_id})
    return set(table.column("generation_id").to_pylist())


def batch_rows(
    ws: Workspace,
    run_id: str | None,
    model_id: str,
    jobs: Sequence[GenerationJob],
    images: np.ndarray,
    applied: GenerationBatch,
    settings: GenerationSettings,
    mitigation: Mitigation,
    params_json: str,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Store a generated batch's image files and return its (images rows, generations rows).

    The caller writes the images rows before the generations rows (the commit mark of an image).
    """
    now = dt.datetime.now(dt.timezone.utc)
    image_rows: list[dict[str, Any]] = []
    generation_rows: list[dict[str, Any]] = []
    for job, image, prompt_used, detail in zip(jobs, images, applied.prompts, applied.details, strict=True):
        data = png_bytes(image)
        image_id, path = ws.store_image(data, "png")
        image_rows.append(
            {
                "image_id": image_id,
                "role": "generated",
                "source_uri": f"fbmem-generate:{job.generation_id}",
                "store_path": str(path.relative_to(ws.root)),
                "width": int(image.shape[1]),
                "height": int(image.shape[0]),
                "mode": "RGB",
                "format": "PNG",
                "n_bytes": len(data),
                "status": "ok",
                "error": None,
                "ingested_at": now,
                "run_id": run_id,
            }
        )
        detail = dict(detail)
        if prompt_used != job.prompt and "prompt" not in detail:
            detail["prompt"] = prompt_used
        generation_rows.append(
            {
                "generation_id": job.generation_id,
                "image_id": image_id,
                "prompt_id": job.prompt_id,
                "model_id": model_id,
                "seed": job.seed,
                "steps": settings.steps,
                "guidance": settings.guidance,
                "height": settings.height,
                "width": settings.width,
                "mitigation": mitigation.name,
                "mitigation_params": params_json,
                "mitigation_detail": canonical_json(detail) if detail else None,
                "scheduler": job.scheduler,
                "dtype": job.dtype,
                "run_id": run_id,
            }
        )
    # Two images of a batch can be byte-identical (e.g. a saturated model): one images row per id.
    image_rows = list({r["image_id"]: r for r in reversed(image_rows)}.values())[::-1]
    return image_rows, generation_rows


@dataclass(frozen=True)
class GenerateRequest:
    """The settings of one generate run (what `fbmem generate` and `generate` take), checked once here.

    Attributes:
        prompt_set: prompts.prompt_set to generate for.
        prompt_ids: specific prompt ids (within prompt_set when both are given).
        n: images per prompt when `seeds` is not given (seeds seed_start .. seed_start+n-1).
        seeds: explicit seeds for every prompt: "0..3", "0,5,9" or a list.
        steps, guidance, height, width: sampler settings (height/width default to the model's size;
            guidance to the model's own scale, `resolve_guidance`: lab v2 2.0, otherwise 7.0).
        batch_size: images per pipeline call (does not change any image beyond float rounding).
        device, dtype, scheduler, model_id: see `load_pipeline`.
        mitigations: names (or built instances) to generate under, one after the other.
        mitigation_params: "key" -> value for every mitigation taking `key`, "name.key" -> value for one.
        shard_rows: images per shard (= per Parquet part; a killed run loses at most one shard's images);
            default one batch.
    """

    prompt_set: str | None = None
    prompt_ids: Sequence[str] | None = None
    n: int = 4
    seeds: str | Sequence[int] | None = None
    seed_start: int = 0
    steps: int = 50
    guidance: float | None = None
    height: int | None = None
    width: int | None = None
    batch_size: int = 4
    device: str = "auto"
    dtype: str = "auto"
    scheduler: str = "ddim"
    mitigations: Sequence[str | Mitigation] = ("none",)
    mitigation_params: Mapping[str, Any] | None = None
    model_id: str | None = None
    shard_rows: int | None = None

    def __post_init__(self) -> None:
        self.seed_list()  # a malformed seed spec fails here, before any model is loaded
        if self.guidance is not None and not math.isfinite(float(self.guidance)):
            raise InputError(f"guidance must be a finite number, got {self.guidance!r}", hint="--guidance 7.0")
        if int(self.steps) < 1:
            raise InputError("--steps must be at least 1")
        if self.batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {self.batch_size}")
        if self.shard_rows is not None and self.shard_rows < 1:
            raise InputError(f"shard_rows must be at least 1, got {self.shard_rows}")
        names = self.mitigation_names()
        if len(set(names)) != len(names):
            raise InputError(f"mitigation listed twice: {names}")

    def seed_list(self) -> list[int]:
        return parse_seeds(self.seeds, self.n, self.seed_start)

    def mitigation_names(self) -> list[str]:
        return [m if isinstance(m, str) else m.name for m in self.mitigations]


@dataclass(frozen=True)
class GenerateModel:
    """Model factory of `generate`: the pipeline and one prepared mitigation per worker.

    A worker loads `model` and creates and prepares `mitigation` itself; an in-process engine is lent
    the pipeline and the prepared mitigation the caller holds (`loaded`, `built`).
    """

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
    loaded: LoadedPipeline | None = None
    built: Mitigation | None = None

    def __call__(self, ws: Workspace) -> BatchFunction:
        loaded = self.loaded or load_pipeline(self.model, device=self.device, dtype=self.dtype, scheduler=self.scheduler, model_id=self.model_id)
        mitigation = self.built
        if mitigation is None:
            mitigation = create_mitigation(self.mitigation, **self.mitigation_params)
            mitigation.prepare(ws, self.model_id, list(self.prompt_ids))
        params_json = canonical_json(mitigation.params())
        settings = GenerationSettings(*self.settings)
        keys = ["generation_id", "prompt_id", "prompt", "seed", "scheduler", "dtype"]

        def generate_rows(rows: pa.Table) -> dict[str, list[dict[str, Any]]]:
            jobs = [GenerationJob(**r) for r in rows.select(keys).to_pylist()]
            for job in jobs:
                if job.dtype is not None and job.dtype != loaded.dtype:  # the id promised another precision
                    raise InputError(f"this worker loaded the model in {loaded.dtype}, the plan says {job.dtype}",
                                     hint="pass --dtype fp16 or fp32 explicitly with --engine ray")
            images, applied = generate_batch(loaded.pipe, mitigation, jobs, settings)
            image_rows, generation_rows = batch_rows(ws, self.run_id, self.model_id, jobs, images, applied, settings, mitigation, params_json)
            # images first: a generations row is the commit mark of an image (resume keys on it)
            return {"images": image_rows, "generations": generation_rows}

        return generate_rows


_JOB_SCHEMA = {
    "plan_index": "int64", "generation_id": "string", "prompt_id": "string", "prompt": "string", "seed": "int64",
    "scheduler": "string", "dtype": "string",
}


def _job_inputs(jobs: Sequence[GenerationJob], pending: Sequence[GenerationJob]) -> pa.Table:
    """The pending images as job input rows; plan_index (the position in the plan) keeps the plan's
    order, so the batches are the same consecutive runs of the plan on every engine. The job's key is
    (plan_index, generation_id): shard ids, which mark shards done, must name the images themselves."""
    import pyarrow as pa

    index = {j.generation_id: i for i, j in enumerate(jobs)}
    rows = [{"plan_index": index[j.generation_id], "generation_id": j.generation_id, "prompt_id": j.prompt_id, "prompt": j.prompt,
             "seed": j.seed, "scheduler": j.scheduler, "dtype": j.dtype} for j in pending]
    return pa.Table.from_pylist(rows, schema=pa.schema([(k, getattr(pa, t)()) for k, t in _JOB_SCHEMA.items()]))


def generate(
    ws: Workspace,
    model: str | LoadedPipeline,
    *,
    request: GenerateRequest | None = None,
    progress: bool = False,
    engine: str | Distributor = "local",
    engine_options: EngineOptions | None = None,
    **settings: Any,
) -> pa.Table:
    """Generate N images per prompt under each mitigation; record them in generations/images/runs.

    Each mitigation's pending images are one `generate` job (GenerateModel's batch function) run on
    `engine`; the generation ids are the same on every engine, so any engine resumes another's work.

    Args:
        ws: the workspace (prompts are read from it, images and rows written to it).
        model: a model source name (`lab` ...), a diffusers directory, a cached hub id, or an already loaded pipeline
            (`load_pipeline(...)` / `wrap_pipeline(pipe, model_id)`; in-process engines only).
        request: the settings (a GenerateRequest); **settings: GenerateRequest fields given as keywords
            (prompt_set=, seeds=, steps=, batch_size= ...), applied over `request`.
        progress: show a progress bar on stderr (in-process engines).
        engine: "local", "ray", or a Distributor the caller holds; engine_options: how a named one runs.

    Returns:
        One row per mitigation: mitigation, mitigation_params, planned, already_stored, generated, run_id.

    Raises:
        InputError: bad prompts, seeds or sizes. ModelNotFoundError: the model is not available.
        PluginError: an unknown mitigation or parameter. FbmemError from a mitigation's prepare, or
        shards that failed (the others are written; run again to redo them).
    """
    import dataclasses

    import pyarrow as pa

    from fbmem_data.devices import resolve_device
    from fbmem_data.distribute import ExtractorJob, WithProgress, engine_config, open_engine
    from fbmem_data.generate.loading import resolve_dtype
    from fbmem_data.ids import params_hash

    req = dataclasses.replace(request or GenerateRequest(), **settings)
    seed_list = req.seed_list()
    prompts = select_prompts(ws, req.prompt_set, req.prompt_ids)
    names = req.mitigation_names()
    routed = split_mitigation_params(names, dict(req.mitigation_params or {}))
    built = [create_mitigation(m, **routed[m]) if isinstance(m, str) else m for m in req.mitigations]

    with open_engine(engine, engine_options) as distributor:
        lend = distributor.in_process
        if isinstance(model, LoadedPipeline):
            if not lend:
                raise InputError(f"the {distributor.name} engine loads the model on its workers", hint="pass the model by name or path")
            loaded = model
        elif lend:
            loaded = load_pipeline(model, device=req.device, dtype=req.dtype, scheduler=req.scheduler, model_id=req.model_id)
        else:
            # the driver needs the recorded model id, default size and sampler, not a GPU: load once on the CPU
            loaded = load_pipeline(model, device="cpu", dtype="fp32", scheduler=req.scheduler, model_id=req.model_id)
        pipe = loaded.pipe
        default_h, default_w = default_image_size(pipe)
        guidance = resolve_guidance(pipe, req.guidance)
        gen_settings = GenerationSettings(int(req.steps), guidance, int(req.height or default_h), int(req.width or default_w))
        scale = int(getattr(pipe, "vae_scale_factor", 8))
        if gen_settings.height % scale or gen_settings.width % scale or gen_settings.height <= 0 or gen_settings.width <= 0:
            raise InputError(f"height and width must be positive multiples of {scale} for this model")
        # the precision the workers load (not "auto"): part of generation_id
        dtype_name = loaded.dtype if lend else resolve_dtype(req.dtype, resolve_device(req.device))
        scheduler_name = type(pipe.scheduler).__name__
        config = {
            "model": model if isinstance(model, str) else loaded.model_id,
            "model_id": loaded.model_id,
            "prompt_set": req.prompt_set,
            "prompt_ids": list(req.prompt_ids) if req.prompt_ids else None,
            "n_prompts": len(prompts),
            "seeds": seed_list,
            "steps": gen_settings.steps,
            "guidance": gen_settings.guidance,
            "height": gen_settings.height,
            "width": gen_settings.width,
            "batch_size": req.batch_size,
            "device": loaded.device if lend else req.device,
            "dtype": dtype_name,
            "scheduler": scheduler_name,
            "eta": 0.0,
            "mitigations": {m.name: m.params() for m in built},  # rewritten after prepare()
            **engine_config(distributor),
        }
        summary: list[dict[str, Any]] = []
        with ws.run("generate", config) as run:
            run.models[loaded.model_id] = loaded.revision or ""
            stored = stored_generation_ids(ws, loaded.model_id)
            all_prompt_ids = tuple(dict.fromkeys(pid for pid, _ in prompts))
            plans = []
            for mitigation in built:
                # prepare() may resolve defaults (e.g. which localization); params() is read after it.
                mitigation.prepare(ws, loaded.model_id, list(all_prompt_ids))
                params = mitigation.params()
                run.config["mitigations"][mitigation.name] = params
                jobs = plan_jobs(
                    prompts, seed_list, model_id=loaded.model_id, steps=gen_settings.steps, guidance=gen_settings.guidance,
                    height=gen_settings.height, width=gen_settings.width, mitigation=mitigation.name, mitigation_params=params,
                    scheduler=scheduler_name, dtype=dtype_name,
                )
                pending = [j for j in jobs if j.generation_id not in stored]
                plans.append((mitigation, params, jobs, pending))
            bar = _progress_bar(sum(len(p[3]) for p in plans), progress and lend)
            given = {m.name for m in req.mitigations if not isinstance(m, str)}  # instances: lent or shipped as they are
            as_tuple = (gen_settings.steps, gen_settings.guidance, gen_settings.height, gen_settings.width)
            try:
                for mitigation, params, jobs, pending in plans:
                    model_factory: Any = GenerateModel(
                        model if isinstance(model, str) else loaded.model_id, loaded.model_id, req.device, dtype_name, req.scheduler,
                        mitigation.name, dict(routed[mitigation.name]), as_tuple, all_prompt_ids, run.run_id,
                        loaded if lend else None, mitigation if lend or mitigation.name in given else None,
                    )
                    if bar is not None:
                        model_factory = WithProgress(model_factory, bar.update)
                    job = ExtractorJob(
                        extractor="generate",
                        config_hash=params_hash({"model_id": loaded.model_id, "settings": list(as_tuple),
                                                 "mitigation": mitigation.name, "params": params}),
                        tables=("images", "generations"),
                        inputs=_job_inputs(jobs, pending),
                        key=("plan_index", "generation_id"),
                        model=model_factory,
                        shard_rows=req.shard_rows or req.batch_size,
                        batch_size=req.batch_size,
                    )
                    if pending:
                        distributor.run(ws, job)
                    summary.append(
                        {
                            "mitigation": mitigation.name,
                            "mitigation_params": canonical_json(params),
                            "planned": len(jobs),
                            "already_stored": len(jobs) - len(pending),
                            "generated": len(pending),
                            "run_id": run.run_id,
                        }
                    )
            finally:
                if bar is not None:
                    bar.close()
    return pa.Table.from_pylist(summary)


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc="generate")
