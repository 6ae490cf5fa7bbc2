"""Generation: load a text-to-image pipeline, generate N seeded images per prompt under mitigations,
record them in `generations` / `images` / `runs`, resume what a killed run left (see docs/generate.md)."""

from __future__ import annotations

from fbmem_data.generate.generator import (
    GenerateRequest,
    generate,
    generate_batch,
    initial_latents,
    run_pipeline,
    select_prompts,
)
from fbmem_data.generate.loading import LoadedPipeline, load_pipeline, wrap_pipeline
from fbmem_data.generate.planning import GenerationJob, generation_id, parse_seeds, plan_jobs

__all__ = [
    "GenerateRequest",
    "GenerationJob",
    "LoadedPipeline",
    "generate",
    "generate_batch",
    "generation_id",
    "initial_latents",
    "load_pipeline",
    "parse_seeds",
    "plan_jobs",
    "run_pipeline",
    "select_prompts",
    "wrap_pipeline",
]
