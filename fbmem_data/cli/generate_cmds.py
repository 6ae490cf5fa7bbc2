"""`fbmem generate`: a thin layer over fbmem_data.generate.generate (torch is imported inside)."""

from __future__ import annotations

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


def _mitigation_params(items: list[str] | None) -> dict[str, Any]:
    return parse_key_values(items, "--mitigation-param", example="wen.target_loss=3", dotted=True)


def _split_ids(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


@output_options
def generate(
    model: Annotated[str, typer.Option("--model", "-m", help="`lab`, a diffusers directory, or a hub id in the local cache.")],
    workspace: WorkspaceOption = None,
    prompts: Annotated[str | None, typer.Option("--prompts", help="Prompt set (prompts.prompt_set).")] = None,
    prompt_ids: Annotated[
        list[str] | None, typer.Option("--prompt-ids", help="Prompt ids (repeat or comma-separate).")
    ] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="Images per prompt (seeds seed-start .. seed-start+n-1).")] = 4,
    seeds: Annotated[str | None, typer.Option("--seeds", help="Explicit seeds: 0..3 or 0,5,9 (overrides --n).")] = None,
    seed_start: Annotated[int, typer.Option("--seed-start", min=0, help="First seed when --seeds is not given.")] = 0,
    steps: Annotated[int, typer.Option("--steps", min=1, help="DDIM steps.")] = 50,
    guidance: Annotated[float | None, typer.Option("--guidance", help="Classifier-free guidance scale (default: the model's own, e.g. lab-v2's 2.0; otherwise 7.0).")] = None,
    height: Annotated[int | None, typer.Option("--height", help="Image height (default: the model's).")] = None,
    width: Annotated[int | None, typer.Option("--width", help="Image width (default: the model's).")] = None,
    batch_size: BatchSizeOption = 4,
    device: DeviceOption = "auto",
    threads: ThreadsOption = None,
    dtype: Annotated[str, typer.Option("--dtype", help="auto (fp16 on CUDA, fp32 on CPU), fp16 or fp32.")] = "auto",
    scheduler: Annotated[str, typer.Option("--scheduler", help="ddim (reference) or keep the pipeline's.")] = "ddim",
    mitigation: Annotated[
        list[str] | None,
        typer.Option("--mitigation", help="none, rta, wen, nemo, nemo-c ... (repeat for several)."),
    ] = None,
    mitigation_param: Annotated[
        list[str] | None,
        typer.Option("--mitigation-param", help="KEY=VALUE for every mitigation taking KEY, NAME.KEY=VALUE for one."),
    ] = None,
    model_id: Annotated[str | None, typer.Option("--model-id", help="Record this model id instead of the default.")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar on stderr.")] = True,
    engine: EngineOption = Engine.local,
    ray_address: RayAddressOption = None,
    num_gpus: NumGpusOption = 0.0,
    concurrency: ConcurrencyOption = 1,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Write nothing: print the images each mitigation would generate and an estimated CPU time.")
    ] = False,
) -> pa.Table:
    """Generate N seeded images per prompt (under mitigations) into generations/images; resumes."""
    from fbmem_data.generate import GenerateRequest
    from fbmem_data.generate import generate as run_generate

    ws = open_workspace(workspace)
    request = GenerateRequest(
        prompt_set=prompts,
        prompt_ids=_split_ids(prompt_ids),
        n=n,
        seeds=seeds,
        seed_start=seed_start,
        steps=steps,
        guidance=guidance,
        height=height,
        width=width,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        scheduler=scheduler,
        mitigations=tuple(mitigation or ["none"]),
        mitigation_params=_mitigation_params(mitigation_param),
        model_id=model_id,
    )
    if dry_run:
        from fbmem_data.generate.dry_run import plan_generation

        return plan_generation(ws, model, request=request)
    return run_generate(
        ws, model, request=request, progress=progress,
        engine=engine.value, engine_options=engine_options(ray_address, num_gpus, concurrency),
    )


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
