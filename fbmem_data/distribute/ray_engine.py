"""`ray`: the shard protocol on Ray Data (the optional extra `fbmem[ray]`).

The dataset has one row per unfinished shard (its id and its input rows as Arrow IPC bytes). Two
stages run over it with `map_batches`, one shard per call:

1. `read images` (plain tasks, no CPU reserved since they wait on I/O): reads each row's image file
   and adds the bytes, so the model stage receives images as bytes, never paths;
2. the model stage: a pool of stateful actors (`concurrency` of them, `num_gpus` each). An actor
   builds the job's model factory once in its constructor, then for each shard runs the batch function
   in `batch_size` slices and writes the shard's parts itself (atomic, deterministic names).

Workers read and write the workspace directory, so on a cluster it must be on a filesystem every node
mounts at the same path (NFS, Lustre, a FUSE-mounted bucket); with a local Ray instance it is simply
the local directory. The driver only plans shards and collects the small per-shard summaries.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from fbmem_data.distribute.protocol import Distributor, EngineOptions, ExtractorJob, JobSummary
from fbmem_data.distribute.shards import (
    Shard,
    ShardFailure,
    attach_image_bytes,
    ipc_to_table,
    iter_pending,
    raise_failed_shards,
    run_shard_reporting,
    shard_done,
    table_to_ipc,
)
from fbmem_data.errors import FbmemError, InputError, PluginError

if TYPE_CHECKING:
    from fbmem_data.workspace import Workspace


def import_ray() -> Any:
    """The ray module, or a PluginError saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise PluginError(
            "the ray engine needs Ray Data, which is not installed", hint="pip install 'fbmem[ray]' (ray[data])"
        ) from exc
    return ray


def _read_images(batch: pa.Table, *, ws_root: str, path_column: str) -> pa.Table:
    """Reader stage: replace each shard's input rows by the same rows plus their image bytes."""
    out = [
        table_to_ipc(attach_image_bytes(Path(ws_root), ipc_to_table(data), path_column))
        for data in batch.column("rows").to_pylist()
    ]
    return batch.set_column(batch.column_names.index("rows"), "rows", pa.array(out, pa.binary()))


class ShardWorker:
    """A Ray Data actor: loads the job's model once, then computes and writes whole shards."""

    def __init__(self, ws_root: str, job: ExtractorJob) -> None:
        from fbmem_data.workspace import Workspace

        self.ws = Workspace.open(ws_root)
        self.job = job
        self.batch_fn = job.model(self.ws)

    def __call__(self, batch: pa.Table) -> pa.Table:
        shard_ids, tables, counts, errors = [], [], [], []
        for shard_id, data in zip(batch.column("shard_id").to_pylist(), batch.column("rows").to_pylist(), strict=True):
            # A retried task may find its shard finished by the attempt that died after writing.
            if shard_done(self.ws.root, self.job, shard_id):
                written, error = {t: 0 for t in self.job.tables}, None
            else:
                written, error = run_shard_reporting(self.ws, self.job, self.batch_fn, Shard(shard_id, ipc_to_table(data)))
            for table, n in written.items():
                shard_ids.append(shard_id)
                tables.append(table)
                counts.append(n)
                errors.append(None if error is None else json.dumps(dataclasses.asdict(error)))  # a ShardFailure
        return pa.table(
            {"shard_id": shard_ids, "table": tables, "written": pa.array(counts, pa.int64()), "error": pa.array(errors, pa.string())}
        )


class RayDistributor(Distributor):
    """Runs shards on Ray Data: an existing cluster (`ray_address`) or a local instance it starts."""

    name = "ray"

    def __init__(self, options: EngineOptions | None = None) -> None:
        super().__init__(options)
        if self.options.concurrency < 1:
            raise InputError(f"concurrency must be at least 1, got {self.options.concurrency}")
        if self.options.num_gpus < 0:
            raise InputError(f"num_gpus must be >= 0, got {self.options.num_gpus}")
        self._started_ray = False

    def _connect(self) -> Any:
        ray = import_ray()
        if ray.is_initialized():  # a caller's session (a notebook, a test fixture): use it, leave it up
            return ray
        quiet = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if self.options.ray_address:
            ray.init(address=self.options.ray_address, **quiet)
        else:
            ray.init(num_cpus=self.options.num_cpus, **quiet)
        self._started_ray = True
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        return ray

    def run(self, ws: Workspace, job: ExtractorJob) -> JobSummary:
        started = time.perf_counter()
        summary = JobSummary(engine=self.name, extractor=job.extractor, rows_in=job.inputs.num_rows)
        todo: list[dict[str, Any]] = []
        for shard, done in iter_pending(ws.root, job):
            summary.shards += 1
            if done:
                summary.shards_skipped += 1
            else:
                todo.append({"shard_id": shard.shard_id, "rows": table_to_ipc(shard.rows)})
        if todo:
            ray = self._connect()
            shipped = dataclasses.replace(job, inputs=job.inputs.schema.empty_table())  # actors need no inputs
            ds = ray.data.from_items(todo, override_num_blocks=len(todo))
            if job.image_path_column:
                reader = functools.partial(_read_images, ws_root=str(ws.root), path_column=job.image_path_column)
                ds = ds.map_batches(reader, batch_size=1, batch_format="pyarrow", num_cpus=0)
            ds = ds.map_batches(
                ShardWorker,
                fn_constructor_kwargs={"ws_root": str(ws.root), "job": shipped},
                batch_size=1,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=self.options.concurrency),
                num_gpus=self.options.num_gpus or None,
            )
            try:
                tables = ray.get(ds.to_arrow_refs())
            except ray.exceptions.RayError as exc:  # an actor that cannot start, a lost node after retries
                raise FbmemError(
                    f"the ray engine failed on a {job.extractor} job: {_root_cause(exc)}",
                    hint="finished shards are kept; run the same command again to do the rest",
                ) from exc
            failed: dict[str, ShardFailure] = {}
            for table in tables:
                for row in table.to_pylist():
                    summary.rows_written[row["table"]] = summary.rows_written.get(row["table"], 0) + row["written"]
                    if row["error"]:
                        failed[row["shard_id"]] = ShardFailure(**json.loads(row["error"]))
            summary.shards_run = len(todo)
            raise_failed_shards(job, failed, len(todo))
        summary.seconds = time.perf_counter() - started
        return summary

    def close(self) -> None:
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False


def _root_cause(exc: BaseException) -> str:
    """The innermost message of a Ray error chain (Ray wraps user errors several times)."""
    cause: BaseException = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    text = str(cause).strip().splitlines()
    return text[-1] if text else type(cause).__name__
