"""`fbmem generate --dry-run`: what a generate call would do, computed by its own resume rule, writing nothing.

The generation ids depend on the model id, the sampler class, the weights' precision and the default
image size, so the pipeline is loaded (on the CPU: nothing runs on it) and every mitigation prepared
(read-only: it resolves defaults such as which NeMo localization), exactly as `generate` does.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from fbmem_data.errors import InputError
from fbmem_data.generate.generator import GenerateRequest

if TYPE_CHECKING:
    import pyarrow as pa

    from fbmem_data.generate.loading import LoadedPipeline
    from fbmem_data.workspace import Workspace


def unet_evaluations(images: int, steps: int, guidance: float) -> int:
    """UNet evaluations of `images` images: one per step, two with classifier-free guidance (scale > 1)."""
    return images * steps * (2 if guidance > 1.0 else 1)


def plan_generation(
    ws: Workspace,
    model: str | LoadedPipeline,
    *,
    request: GenerateRequest | None = None,
    **settings: Any,
) -> pa.Table:
    """The images `generate` with the same arguments would generate, per mitigation; writes nothing.

    Args:
        ws, model: as for `generate`.
        request, **settings: the same GenerateRequest (or its fields as keywords) `generate` takes; it is
            checked by the same rules.

    Returns:
        One row per mitigation: mitigation, mitigation_params, model_id, planned, already_stored,
        pending (the images a run would generate now), unet_evaluations, estimated_cpu_s (for a model
        source that states a measured CPU rate, `cpu_cost`, as the lab model does; None for others), dry_run.

    Raises:
        The errors `generate` raises for the same arguments (bad prompts, seeds, sizes, models, mitigations).
    """
    import pyarrow as pa

    from fbmem_data.devices import resolve_device
    from fbmem_data.generate.generator import select_prompts, stored_generation_ids
    from fbmem_data.generate.loading import LoadedPipeline, load_pipeline, resolve_dtype, resolve_guidance
    from fbmem_data.generate.planning import plan_jobs
    from fbmem_data.ids import canonical_json
    from fbmem_data.mitigate import create_mitigation, split_mitigation_params
    from fbmem_data.noise import default_image_size

    req = dataclasses.replace(request or GenerateRequest(), **settings)
    seed_list = req.seed_list()
    prompts = select_prompts(ws, req.prompt_set, req.prompt_ids)
    names = req.mitigation_names()
    routed = split_mitigation_params(list(names), dict(req.mitigation_params or {}))
    built = [create_mitigation(m, **routed[m]) if isinstance(m, str) else m for m in req.mitigations]
    if isinstance(model, LoadedPipeline):
        loaded, dtype_name = model, model.dtype
    else:
        # The ids need the recorded model id, sampler and default size, not the device: load on the CPU
        # and take the precision the real run would load (fp16 on CUDA with dtype auto).
        loaded = load_pipeline(model, device="cpu", dtype="fp32", scheduler=req.scheduler, model_id=req.model_id)
        dtype_name = resolve_dtype(req.dtype, resolve_device(req.device))
    pipe = loaded.pipe
    default_h, default_w = default_image_size(pipe)
    h, w = int(req.height or default_h), int(req.width or default_w)
    guidance = resolve_guidance(pipe, req.guidance)  # as generate resolves it
    scale = int(getattr(pipe, "vae_scale_factor", 8))
    if h % scale or w % scale or h <= 0 or w <= 0:
        raise InputError(f"height and width must be positive multiples of {scale} for this model")
    scheduler_name = type(pipe.scheduler).__name__
    stored = stored_generation_ids(ws, loaded.model_id)
    all_prompt_ids = list(dict.fromkeys(pid for pid, _ in prompts))
    per_eval = _seconds_per_eval(model, h, w)
    rows = []
    for mitigation in built:
        mitigation.prepare(ws, loaded.model_id, all_prompt_ids)
        params = mitigation.params()
        jobs = plan_jobs(
            prompts,
            seed_list,
            model_id=loaded.model_id,
            steps=int(req.steps),
            guidance=guidance,
            height=h,
            width=w,
            mitigation=mitigation.name,
            mitigation_params=params,
            scheduler=scheduler_name,
            dtype=dtype_name,
        )
        pending = sum(1 for j in jobs if j.generation_id not in stored)  # generate's resume rule
        evals = unet_evaluations(pending, int(req.steps), guidance)
        rows.append(
            {
                "mitigation": mitigation.name,
                "mitigation_params": canonical_json(params),
                "model_id": loaded.model_id,
                "planned": len(jobs),
                "already_stored": len(jobs) - pending,
                "pending": pending,
                "unet_evaluations": evals,
                "estimated_cpu_s": None if per_eval is None else round(evals * per_eval, 1),
                "dry_run": True,
            }
        )
    schema = pa.schema(
        [
            ("mitigation", pa.string()),
            ("mitigation_params", pa.string()),
            ("model_id", pa.string()),
            ("planned", pa.int64()),
            ("already_stored", pa.int64()),
            ("pending", pa.int64()),
            ("unet_evaluations", pa.int64()),
            ("estimated_cpu_s", pa.float64()),
            ("dry_run", pa.bool_()),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def _seconds_per_eval(model: object, height: int, width: int) -> float | None:
    """CPU seconds per UNet evaluation of one image at height x width, from the model source's measured
    `cpu_cost` = (seconds, pixels) scaled by pixels (the UNet's work grows with the latent's area);
    None for directories, hub ids and sources that state no rate."""
    from fbmem_data import plugins
    from fbmem_data.generate.loading import model_source_names

    if not isinstance(model, str) or model not in model_source_names():
        return None
    cost = getattr(plugins.create(plugins.MODELS, model), "cpu_cost", None)
    if cost is None:
        return None
    seconds, pixels = cost
    return float(seconds) * (height * width) / float(pixels)
