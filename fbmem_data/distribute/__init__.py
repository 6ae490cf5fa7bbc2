"""Distributors (plug-in family "distributor"): where an extractor's shards run.

- `local`: in this process, one shard after the other (no extra dependency).
- `ray`: on Ray Data, stateful actors per model (`pip install 'fbmem[ray]'`); see docs/scale.md.

`run_job(ws, job, engine=...)` runs an ExtractorJob. Each stage module describes its own work as a job
(`fbmem.masks.segment_job`, `embed.store.embed_job`, `fbmem.scoring.score_job`, `generate.generator`'s
GenerateModel, `nemo.localize`'s LocalizeModel) and its one public function takes `engine=`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fbmem_data.distribute.protocol import (
    ENGINES,
    FAMILY,
    Distributor,
    EngineOptions,
    ExtractorJob,
    JobSummary,
    ModelFactory,
    WithProgress,
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
    "engine_config",
    "engine_fields",
    "engine_name",
    "make_distributor",
    "open_engine",
    "run_job",
    "run_with_progress",
    "status_counts",
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


@contextlib.contextmanager
def open_engine(engine: str | Distributor = "local", options: EngineOptions | None = None) -> Iterator[Distributor]:
    """A distributor for one or several jobs: built and closed here for a name, lent through otherwise."""
    if isinstance(engine, str):
        with make_distributor(engine, options) as built:
            yield built
    else:
        yield engine


def engine_name(engine: str | Distributor) -> str:
    return engine if isinstance(engine, str) else engine.name


def status_counts(ws: Workspace, table: str, run_id: str) -> dict[str, int]:
    """Rows per status that run `run_id` wrote to `table` (a stage's ok/error counts, whatever the engine)."""
    t = ws.sql(f"SELECT status, count(*) AS n FROM {table} WHERE run_id = $r GROUP BY 1", {"r": run_id})
    return dict(zip(t.column("status").to_pylist(), t.column("n").to_pylist(), strict=True))


def run_with_progress(
    distributor: Distributor, ws: Workspace, job: ExtractorJob, *, progress: bool = False, desc: str = "", unit: str = "it"
) -> JobSummary:
    """distributor.run(ws, job), with a progress bar on stderr over the job's input rows when asked and
    the distributor runs in this process (a Ray job reports no progress here)."""
    if not progress or not distributor.in_process or job.inputs.num_rows == 0:
        return distributor.run(ws, job)
    from tqdm import tqdm

    with tqdm(total=job.inputs.num_rows, desc=desc, unit=unit) as bar:
        return distributor.run(ws, dataclasses.replace(job, model=WithProgress(job.model, bar.update)))


def engine_config(distributor: Distributor) -> dict[str, Any]:
    """The engine entry of a stage's run config: none for the local engine (its run records stay as
    they were before engines existed), {"engine": name} otherwise."""
    return {} if distributor.name == "local" else {"engine": distributor.name}


def engine_fields(distributor: Distributor, done: JobSummary | None = None) -> dict[str, Any]:
    """What a stage adds to its summary on an engine other than local: engine, shards, shards_skipped."""
    if distributor.name == "local":
        return {}
    return {"engine": distributor.name, "shards": done.shards if done else 0, "shards_skipped": done.shards_skipped if done else 0}
