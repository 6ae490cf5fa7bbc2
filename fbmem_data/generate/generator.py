"""Generate images for prompts under mitigations, batched and resumable, into the workspace tables.

`generate()` is the library form of `fbmem generate`. `generate_batch()` is the pure part (no
workspace): initial noise from per-image seeds, the mitigation's context, one pipeline call.
"""

from __future__ import annotations

import datetime as dt
import io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from fbmem_data.errors import InputError
from fbmem_data.generate.loading import LoadedPipeline, load_pipeline
from fbmem_data.generate.planning import GenerationJob, batches, parse_seeds, plan_jobs
from fbmem_data.ids import canonical_json
from fbmem_data.mitigate import create_mitigation, split_mitigation_params
from fbmem_data.mitigate.protocol import GenerationBatch, GenerationSettings, Mitigation
from fbmem_data.noise import default_image_size, initial_latents, shape_noise  # noqa: F401  (also imported from here)

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

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


def _stored_generation_ids(ws: Workspace, model_id: str) -> set[str]:
    table = ws.sql("SELECT generation_id FROM generations WHERE model_id = $model_id", {"model_id": model_id})
    return set(table.column("generation_id").to_pylist())


def _write_batch(
    ws: Workspace,
    run_id: str,
    model_id: str,
    jobs: Sequence[GenerationJob],
    images: np.ndarray,
    applied: GenerationBatch,
    settings: GenerationSettings,
    mitigation: Mitigation,
    params_json: str,
) -> None:
    image_rows, generation_rows = batch_rows(ws, run_id, model_id, jobs, images, applied, settings, mitigation, params_json)
    # Images first: a generations row is the commit mark of an image (resume keys on it).
    ws.write("images", image_rows, on_conflict="skip")
    ws.write("generations", generation_rows, on_conflict="skip")


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


def generate(
    ws: Workspace,
    model: str | LoadedPipeline,
    *,
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
    device: str = "auto",
    dtype: str = "auto",
    scheduler: str = "ddim",
    mitigations: Sequence[str | Mitigation] = ("none",),
    mitigation_params: Mapping[str, Any] | None = None,
    model_id: str | None = None,
    progress: bool = False,
) -> pa.Table:
    """Generate N images per prompt under each mitigation; record them in generations/images/runs.

    Args:
        ws: the workspace (prompts are read from it, images and rows written to it).
        model: a model source name (`lab` ...), a diffusers directory, a cached hub id, or an already loaded pipeline
            (`load_pipeline(...)` / `wrap_pipeline(pipe, model_id)`).
        prompt_set: prompts.prompt_set to generate for.
        prompt_ids: specific prompt ids (within prompt_set when both are given).
        n: images per prompt when `seeds` is not given (seeds seed_start .. seed_start+n-1).
        seeds: explicit seeds for every prompt: "0..3", "0,5,9" or a list.
        steps, guidance, height, width: sampler settings (height/width default to the model's size).
        batch_size: images per pipeline call (does not change any image).
        device, dtype, scheduler, model_id: see `load_pipeline`.
        mitigations: names (or built instances) to generate under, one after the other.
        mitigation_params: "key" -> value for every mitigation taking `key`, "name.key" -> value for one.
        progress: show a progress bar on stderr.

    Returns:
        One row per mitigation: mitigation, mitigation_params, planned, already_stored, generated, run_id.

    Raises:
        InputError: bad prompts, seeds or sizes. ModelNotFoundError: the model is not available.
        PluginError: an unknown mitigation or parameter. FbmemError from a mitigation's prepare.
    """
    import pyarrow as pa

    seed_list = parse_seeds(seeds, n, seed_start)
    if not math.isfinite(float(guidance)):
        raise InputError(f"guidance must be a finite number, got {guidance!r}", hint="--guidance 7.0")
    prompts = select_prompts(ws, prompt_set, prompt_ids)
    names = [m if isinstance(m, str) else m.name for m in mitigations]
    if len(set(names)) != len(names):
        raise InputError(f"mitigation listed twice: {names}")
    routed = split_mitigation_params([m for m in names], dict(mitigation_params or {}))
    built = [create_mitigation(m, **routed[m]) if isinstance(m, str) else m for m in mitigations]

    loaded = model if isinstance(model, LoadedPipeline) else load_pipeline(
        model, device=device, dtype=dtype, scheduler=scheduler, model_id=model_id
    )
    pipe = loaded.pipe
    default_h, default_w = default_image_size(pipe)
    settings = GenerationSettings(int(steps), float(guidance), int(height or default_h), int(width or default_w))
    scale = int(getattr(pipe, "vae_scale_factor", 8))
    if settings.height % scale or settings.width % scale or settings.height <= 0 or settings.width <= 0:
        raise InputError(f"height and width must be positive multiples of {scale} for this model")
    if settings.steps < 1:
        raise InputError("--steps must be at least 1")

    config = {
        "model": model if isinstance(model, str) else loaded.model_id,
        "model_id": loaded.model_id,
        "prompt_set": prompt_set,
        "prompt_ids": list(prompt_ids) if prompt_ids else None,
        "n_prompts": len(prompts),
        "seeds": seed_list,
        "steps": settings.steps,
        "guidance": settings.guidance,
        "height": settings.height,
        "width": settings.width,
        "batch_size": batch_size,
        "device": loaded.device,
        "dtype": loaded.dtype,
        "scheduler": type(pipe.scheduler).__name__,
        "eta": 0.0,
        "mitigations": {m.name: m.params() for m in built},  # rewritten after prepare()
    }
    summary: list[dict[str, Any]] = []
    with ws.run("generate", config) as run:
        run.models[loaded.model_id] = loaded.revision or ""
        stored = _stored_generation_ids(ws, loaded.model_id)
        all_prompt_ids = list(dict.fromkeys(pid for pid, _ in prompts))
        plans = []
        for mitigation in built:
            # prepare() may resolve defaults (e.g. which localization); params() is read after it.
            mitigation.prepare(ws, loaded.model_id, all_prompt_ids)
            params = mitigation.params()
            run.config["mitigations"][mitigation.name] = params
            jobs = plan_jobs(
                prompts, seed_list, model_id=loaded.model_id, steps=settings.steps, guidance=settings.guidance,
                height=settings.height, width=settings.width, mitigation=mitigation.name, mitigation_params=params,
                scheduler=config["scheduler"], dtype=loaded.dtype,
            )
            pending = [j for j in jobs if j.generation_id not in stored]
            plans.append((mitigation, params, jobs, pending))
        bar = _progress_bar(sum(len(p[3]) for p in plans), progress)
        try:
            for mitigation, params, jobs, pending in plans:
                params_json = canonical_json(params)
                for chunk in batches(pending, batch_size):
                    images, applied = generate_batch(pipe, mitigation, chunk, settings)
                    _write_batch(ws, run.run_id, loaded.model_id, chunk, images, applied, settings, mitigation, params_json)
                    if bar is not None:
                        bar.update(len(chunk))
                summary.append(
                    {
                        "mitigation": mitigation.name,
                        "mitigation_params": params_json,
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
