"""Distributors (plug-in family "distributor"): where an extractor's shards run.

- `local`: in this process, one shard after the other (no extra dependency).
- `ray`: on Ray Data, stateful actors per model (`pip install 'fbmem[ray]'`); see docs/scale.md.

`run_job(ws, job, engine=...)` runs an ExtractorJob; fbmem_data/distribute/extractors.py builds the
jobs of segment, embed, pair, score, generate and NeMo localization.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fbmem_data.distribute.protocol import (
    ENGINES,
    FAMILY,
    Distributor,
    EngineOptions,
    ExtractorJob,
    JobSummary,
    ModelFactory,
)
from fbmem_data.plugins import create

if TYPE_CHECKING:
    from fbmem_data.workspace import Workspace

__all__ = [
    "ENGINES",
    "FAMILY",
    "Distributor",
    "EngineOptions",
    "ExtractorJob",
    "JobSummary",
    "ModelFactory",
    "make_distributor",
    "run_job",
]


def make_local(**options: Any) -> Distributor:
    from fbmem_data.distribute.local import LocalDistributor

    return LocalDistributor(EngineOptions(**options))


def make_ray(**options: Any) -> Distributor:
    from fbmem_data.distribute.ray_engine import RayDistributor

    return RayDistributor(EngineOptions(**options))


def make_distributor(engine: str = "local", options: EngineOptions | None = None) -> Distributor:
    """Build distributor `engine` ("local" or "ray").

    Raises:
        PluginError: unknown engine, or ray is not installed (at its first run).
        InputError: bad options (concurrency < 1, num_gpus < 0).
    """
    opts = options or EngineOptions()
    return create(FAMILY, engine, **{f: getattr(opts, f) for f in opts.__dataclass_fields__})


def run_job(ws: Workspace, job: ExtractorJob, engine: str | Distributor = "local", options: EngineOptions | None = None) -> JobSummary:
    """Run a job on an engine name (built and closed here) or on a Distributor the caller holds."""
    if not isinstance(engine, str):
        return engine.run(ws, job)
    with make_distributor(engine, options) as distributor:
        return distributor.run(ws, job)
