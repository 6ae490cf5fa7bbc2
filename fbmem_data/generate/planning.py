"""Which images a run must generate: seeds, generation ids, batches, and what is already stored."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from fbmem_data.errors import InputError
from fbmem_data.ids import params_hash


def parse_seeds(spec: str | Sequence[int] | None, n: int, seed_start: int = 0) -> list[int]:
    """Seeds for the images of every prompt.

    Args:
        spec: "0..3" (inclusive range), "0,1,7", a list of ints, or None for seed_start .. seed_start+n-1.
        n: images per prompt, used when spec is None; with a spec, n must be its length or None-like.
        seed_start: first seed when spec is None.

    Raises:
        InputError: a malformed spec, a repeated seed, or a spec whose length disagrees with n.
    """
    if spec is None or spec == "":
        if n < 1:
            raise InputError(f"--n must be at least 1, got {n}")
        return list(range(seed_start, seed_start + n))
    if isinstance(spec, str):
        seeds: list[int] = []
        try:
            for part in spec.split(","):
                part = part.strip()
                if ".." in part:
                    lo, hi = (int(x) for x in part.split("..", 1))
                    if hi < lo:
                        raise InputError(f"seed range {part!r} is empty (end before start)")
                    seeds.extend(range(lo, hi + 1))
                elif part:
                    seeds.append(int(part))
        except ValueError as exc:
            raise InputError(f"cannot read seeds {spec!r}", hint="use e.g. 0..3 or 0,1,7") from exc
    else:
        seeds = [int(s) for s in spec]
    if not seeds:
        raise InputError(f"no seeds in {spec!r}")
    if len(set(seeds)) != len(seeds):
        raise InputError(f"seeds {spec!r} repeat a value")
    if any(s < 0 for s in seeds):
        raise InputError("seeds must be non-negative")
    return seeds


#: The sampler and precision every generation had before they were part of generation_id.
DEFAULT_SCHEDULER = "DDIMScheduler"
DEFAULT_DTYPE = "fp32"


def generation_id(
    *,
    prompt_id: str,
    model_id: str,
    seed: int,
    steps: int,
    guidance: float,
    height: int,
    width: int,
    mitigation: str,
    mitigation_params: dict[str, Any],
    scheduler: str | None = None,
    dtype: str | None = None,
) -> str:
    """params_hash of every setting that determines the image (the generations primary key).

    scheduler is the sampler's class name (DDIMScheduler ...), dtype the weights' precision (fp32, fp16).
    They enter the hash only when they differ from DDIMScheduler / fp32, so the ids of generations
    written before they were recorded (all DDIM; fp32 on CPU) stay the same and those runs still resume.
    """
    settings: dict[str, Any] = {
        "prompt_id": prompt_id,
        "model_id": model_id,
        "seed": int(seed),
        "steps": int(steps),
        "guidance": float(guidance),
        "height": int(height),
        "width": int(width),
        "mitigation": mitigation,
        "mitigation_params": mitigation_params,
    }
    if scheduler is not None and scheduler != DEFAULT_SCHEDULER:
        settings["scheduler"] = scheduler
    if dtype is not None and dtype != DEFAULT_DTYPE:
        settings["dtype"] = dtype
    return params_hash(settings)


@dataclass(frozen=True)
class GenerationJob:
    """One image to generate."""

    generation_id: str
    prompt_id: str
    prompt: str
    seed: int
    scheduler: str | None = None
    dtype: str | None = None


def plan_jobs(
    prompts: Sequence[tuple[str, str]],
    seeds: Sequence[int],
    *,
    model_id: str,
    steps: int,
    guidance: float,
    height: int,
    width: int,
    mitigation: str,
    mitigation_params: dict[str, Any],
    scheduler: str | None = None,
    dtype: str | None = None,
) -> list[GenerationJob]:
    """Every (prompt, seed) image of one mitigation, in prompt order then seed order."""
    return [
        GenerationJob(
            generation_id(
                prompt_id=pid,
                model_id=model_id,
                seed=seed,
                steps=steps,
                guidance=guidance,
                height=height,
                width=width,
                mitigation=mitigation,
                mitigation_params=mitigation_params,
                scheduler=scheduler,
                dtype=dtype,
            ),
            pid,
            text,
            seed,
            scheduler,
            dtype,
        )
        for pid, text in prompts
        for seed in seeds
    ]


def batches(jobs: Sequence[GenerationJob], batch_size: int) -> Iterator[list[GenerationJob]]:
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    for start in range(0, len(jobs), batch_size):
        yield list(jobs[start : start + batch_size])
