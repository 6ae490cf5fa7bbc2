"""The distributor protocol: how an extractor's batch function is run over many shards.

An extractor is described by an `ExtractorJob`: the pending input rows (one per unit of work: an
image to segment, a pair to score, a seed to generate), the tables it writes, and a picklable
*model factory*. Called once per worker with the workspace, the factory loads the model and returns
the *batch function*: a pyarrow Table of input rows in, {table name: rows} out. A `Distributor`
(plug-in family "distributor": `local`, `ray`) decides where the shards run; the shard protocol
(fbmem_data/distribute/shards.py) is the same for every engine, so every engine writes the same rows.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import pyarrow as pa

    from fbmem_data.workspace import Workspace

FAMILY = "fbmem.distributors"  # = fbmem_data.plugins.DISTRIBUTORS (kept literal: this module stays import-light)
ENGINES = ("local", "ray")

#: A batch of input rows in, rows per output table out (tables written in the job's order).
BatchFunction = Callable[["pa.Table"], Mapping[str, "pa.Table | list[dict[str, Any]]"]]


class ModelFactory(Protocol):
    """Loads an extractor's model once and returns its batch function.

    Implementations are small picklable objects (dataclasses of plug-in names and options, never a
    loaded model), because the Ray engine ships them to every actor, which calls them once.
    """

    def __call__(self, ws: Workspace) -> BatchFunction:
        """Build the batch function.

        Args:
            ws: the workspace, opened on the worker (some extractors read masks or store images).

        Returns:
            The batch function of the extractor.

        Raises:
            PluginError, ModelNotFoundError: the model cannot be built on this worker.
        """
        ...


@dataclass(frozen=True)
class ExtractorJob:
    """One extractor run to distribute.

    Attributes:
        extractor: short name, part of every part file name ("segment", "embed", "score", ...).
        config_hash: params_hash of everything that changes the rows (model, settings); part of the
            part file names, so runs under other settings never skip each other's shards.
        tables: tables the batch function writes, in write order; the last one's part marks a shard
            done (e.g. images before generations: a generations row is the commit mark).
        inputs: the pending input rows (the caller has already left out rows stored earlier).
        key: input columns that identify a row; shards are consecutive runs of rows sorted by key.
        model: the picklable model factory.
        image_path_column: when set, the engine reads the file at this workspace-relative path of
            every row and hands the batch function an `image_bytes` column (binary, null if unreadable)
            plus `image_error` (why it could not be read).
        shard_rows: input rows per shard (= per Parquet part written per table).
        batch_size: input rows per batch-function call inside a shard.
    """

    extractor: str
    config_hash: str
    tables: tuple[str, ...]
    inputs: pa.Table
    key: tuple[str, ...]
    model: ModelFactory
    image_path_column: str | None = None
    shard_rows: int = 64
    batch_size: int = 8


@dataclass(frozen=True)
class WithProgress:
    """A model factory whose batch function also calls `advance(rows in the batch)` after each batch.

    Only for in-process distributors (the callback, e.g. a tqdm bar, lives in the caller's process).
    """

    inner: ModelFactory
    advance: Callable[[int], Any]

    def __call__(self, ws: Workspace) -> BatchFunction:
        batch_fn = self.inner(ws)
        advance = self.advance

        def reporting(rows: pa.Table) -> Mapping[str, pa.Table | list[dict[str, Any]]]:
            out = batch_fn(rows)
            advance(rows.num_rows)
            return out

        return reporting


@dataclass(frozen=True)
class EngineOptions:
    """Where and how wide a distributor runs.

    Attributes:
        ray_address: an existing Ray cluster ("auto", "ray://head:10001", ...); None starts a local
            Ray instance for the run and shuts it down after (ray engine only).
        num_gpus: GPUs per model actor (fractions share a GPU); 0 for CPU work.
        concurrency: model actors (ray) running at once; local runs one.
        num_cpus: CPUs of a local Ray instance started by fbmem (None: Ray's default, all cores).
    """

    ray_address: str | None = None
    num_gpus: float = 0.0
    concurrency: int = 1
    num_cpus: int | None = None


@dataclass
class JobSummary:
    """What a distributor did with one job."""

    engine: str
    extractor: str
    shards: int = 0
    shards_skipped: int = 0
    shards_run: int = 0
    rows_in: int = 0
    rows_written: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def as_row(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "extractor": self.extractor,
            "shards": self.shards,
            "shards_skipped": self.shards_skipped,
            "shards_run": self.shards_run,
            "rows_in": self.rows_in,
            "rows_written": sum(self.rows_written.values()),
            "seconds": round(self.seconds, 3),
        }


@runtime_checkable
class Distributor(Protocol):
    """Runs an ExtractorJob's shards somewhere and writes one Parquet part per shard and table: a plug-in
    of family `fbmem.distributors`.

    Implementations set `name` and implement `run`; subclassing this Protocol also gives them the
    options constructor, `close` and the context manager (and makes a missing `run` an error at
    construction), as for the other plug-in families.

    Every engine must give the same rows (order aside) for the same job; a shard whose commit part
    exists is skipped, and a shard that fails leaves no part of its commit table, so re-running a
    failed job does exactly the missing work (tests/test_distributors_contract.py checks both).
    Engines load the model through the job's factory once per worker, and only when there is work.
    """

    name: str = ""
    #: True when run() calls the job's model factory in this process (the local engine): a stage may then
    #: lend the factory the model it already built and a progress callback, instead of shipping names.
    in_process: bool = False

    def __init__(self, options: EngineOptions | None = None) -> None:
        self.options = options or EngineOptions()

    @abc.abstractmethod
    def run(self, ws: Workspace, job: ExtractorJob) -> JobSummary:
        """Run every unfinished shard of `job` and write its rows into `ws`.

        Args:
            ws: the workspace (for the ray engine: a directory every worker can read and write).
            job: the extractor job.

        Returns:
            A JobSummary of the shards run and skipped and the rows written.

        Raises:
            FbmemError: the batch function failed on one or more shards (every other shard is run and
                written first; run the job again to redo the failed ones), or the engine itself failed
                (finished shards are kept); InputError for bad options.
        """

    def close(self) -> None:
        """Release what the engine holds (a Ray instance it started). Idempotent."""
        return None

    def __enter__(self) -> Distributor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
