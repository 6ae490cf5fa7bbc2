"""The shard protocol every engine follows: deterministic shards, one atomic part per shard and table.

- A job's pending inputs are sorted by their key and cut into runs of `shard_rows` rows. A shard's id
  is a hash of the keys it holds, so the same pending rows give the same shards on every engine.
- Each shard's rows go to `tables/<table>/part-<extractor>-<config hash>-<shard id>.parquet`, written
  by `Workspace.write` (temporary file + rename: a killed worker leaves no half part). The last table
  of the job is the commit mark: a shard whose part exists there is finished and is skipped.
- A retried shard (a worker restarted by Ray, a re-run after a crash) finds its parts and stored keys
  and writes nothing twice: existing parts are left alone and `on_conflict="skip"` drops stored keys.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from fbmem_data.errors import FbmemError, InputError, WorkspaceError

if TYPE_CHECKING:
    from fbmem_data.distribute.protocol import BatchFunction, ExtractorJob
    from fbmem_data.workspace import Workspace

IMAGE_BYTES = "image_bytes"
IMAGE_ERROR = "image_error"


@dataclass(frozen=True)
class Shard:
    shard_id: str
    rows: pa.Table


def _key_text(table: pa.Table, key: tuple[str, ...]) -> list[str]:
    columns = [table.column(k).to_pylist() for k in key]
    return ["\x1f".join("" if v is None else str(v) for v in values) for values in zip(*columns, strict=True)]


def plan_shards(inputs: pa.Table, key: tuple[str, ...], shard_rows: int) -> list[Shard]:
    """Cut the inputs, sorted by key, into shards of `shard_rows` rows with content-derived ids.

    Raises:
        InputError: shard_rows < 1, a key column is missing, or two rows share a key.
    """
    if shard_rows < 1:
        raise InputError(f"shard_rows must be at least 1, got {shard_rows}")
    missing = [k for k in key if k not in inputs.column_names]
    if missing:
        raise InputError(f"job inputs lack key column(s) {missing}")
    if inputs.num_rows == 0:
        return []
    ordered = inputs.sort_by([(k, "ascending") for k in key])
    keys = _key_text(ordered, key)
    if len(set(keys)) != len(keys):
        raise InputError(f"job inputs repeat a key {list(key)}: each unit of work must appear once")
    shards = []
    for start in range(0, ordered.num_rows, shard_rows):
        digest = hashlib.sha256("\x1e".join(keys[start : start + shard_rows]).encode()).hexdigest()[:16]
        shards.append(Shard(digest, ordered.slice(start, shard_rows)))
    return shards


def part_name(extractor: str, config_hash: str, shard_id: str) -> str:
    """File name of a shard's part (the same in every table the shard writes)."""
    return f"part-{extractor}-{config_hash[:16]}-{shard_id}.parquet"


def shard_done(ws_root: Path, job: ExtractorJob, shard_id: str) -> bool:
    """Whether the shard's commit part (in the job's last table) exists."""
    return (ws_root / "tables" / job.tables[-1] / part_name(job.extractor, job.config_hash, shard_id)).exists()


def attach_image_bytes(ws_root: Path, rows: pa.Table, path_column: str) -> pa.Table:
    """Add `image_bytes` (file content, null if unreadable) and `image_error` columns.

    Paths are relative to the workspace root (images.store_path); the reading happens where this
    runs, so on a cluster it runs in a reader task on a worker that mounts the workspace.
    """
    data: list[bytes | None] = []
    errors: list[str | None] = []
    for rel in rows.column(path_column).to_pylist():
        if rel is None:
            data.append(None)
            errors.append("the image bytes are not stored in the workspace (store_path is null)")
            continue
        try:
            data.append((ws_root / rel).read_bytes())
            errors.append(None)
        except OSError as exc:
            data.append(None)
            errors.append(f"{type(exc).__name__}: {exc}")
    return rows.append_column(IMAGE_BYTES, pa.array(data, pa.binary())).append_column(
        IMAGE_ERROR, pa.array(errors, pa.string())
    )


class _FileBytes(io.BytesIO):
    """A file's bytes that print as its path, so a decoder's error names the file as reading it would."""

    def __init__(self, data: bytes, path: Path) -> None:
        super().__init__(data)
        self.path = path

    def __repr__(self) -> str:
        return repr(str(self.path))


def file_bytes(data: bytes, path: Path) -> io.BytesIO:
    """A file object over `data` (read from `path` by the engine) for PIL and other decoders."""
    return _FileBytes(data, path)


def run_batches(batch_fn: BatchFunction, rows: pa.Table, batch_size: int, tables: tuple[str, ...]) -> dict[str, pa.Table]:
    """Call the batch function on `batch_size`-row slices of a shard; concatenate per table."""
    from fbmem_data.schemas import get_schema

    got: dict[str, list[pa.Table]] = {t: [] for t in tables}
    for start in range(0, rows.num_rows, max(1, batch_size)):
        out = batch_fn(rows.slice(start, batch_size))
        unknown = set(out) - set(tables)
        if unknown:
            raise InputError(f"batch function returned rows for undeclared table(s) {sorted(unknown)}")
        for table, table_rows in out.items():
            got[table].append(get_schema(table).conform(table_rows))
    return {t: pa.concat_tables(parts) if parts else get_schema(t).empty() for t, parts in got.items()}


def write_shard(ws: Workspace, job: ExtractorJob, shard_id: str, outputs: Mapping[str, pa.Table]) -> dict[str, int]:
    """Write a shard's rows, one part per table in the job's order (the last one commits the shard).

    Returns:
        Rows written per table (0 where the part already existed or every key was stored).
    """
    name = part_name(job.extractor, job.config_hash, shard_id)
    written: dict[str, int] = {}
    for table in job.tables:
        rows = outputs.get(table)
        if rows is None or rows.num_rows == 0 or (ws.table_dir(table) / name).exists():
            written[table] = 0
            continue
        try:
            written[table] = ws.write(table, rows, part_name=name, on_conflict="skip")
        except WorkspaceError:
            if not (ws.table_dir(table) / name).exists():
                raise
            written[table] = 0  # a concurrent attempt at the same shard committed first
    return written


def process_shard(ws: Workspace, job: ExtractorJob, batch_fn: BatchFunction, shard: Shard) -> dict[str, int]:
    """Read (if the job reads images), compute and write one shard; the whole shard protocol in one call."""
    rows = shard.rows
    if job.image_path_column and IMAGE_BYTES not in rows.column_names:
        rows = attach_image_bytes(ws.root, rows, job.image_path_column)
    outputs = run_batches(batch_fn, rows, job.batch_size, job.tables)
    return write_shard(ws, job, shard.shard_id, outputs)


@dataclass(frozen=True)
class ShardFailure:
    """Why a shard failed: the exception's class name, message and hint (small and picklable: it travels
    back from Ray workers). fbmem=True for an FbmemError, which the engine raises again as its own class."""

    kind: str
    message: str
    hint: str | None = None
    fbmem: bool = False

    @classmethod
    def of(cls, exc: BaseException) -> ShardFailure:
        if isinstance(exc, FbmemError):
            return cls(type(exc).__name__, exc.message, exc.hint, True)
        return cls(type(exc).__name__, str(exc))

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


def run_shard_reporting(
    ws: Workspace, job: ExtractorJob, batch_fn: BatchFunction, shard: Shard
) -> tuple[dict[str, int], ShardFailure | None]:
    """process_shard, turning an exception into (nothing written, why): one bad shard must not stop the
    others (engines report every failed shard at the end of the job)."""
    try:
        return process_shard(ws, job, batch_fn, shard), None
    except Exception as exc:
        return {t: 0 for t in job.tables}, ShardFailure.of(exc)


def raise_failed_shards(job: ExtractorJob, failed: Mapping[str, ShardFailure | str], n_run: int) -> None:
    """Raise one error naming the failed shards (nothing when none failed).

    When the first failure (by shard id) is an FbmemError (bad input or settings, which a re-run does not
    fix), it is raised again as its own class with its own hint, as the stage's own code raised it.
    """
    if not failed:
        return
    from fbmem_data import errors

    shard_id, first = next(iter(sorted(failed.items())))
    where = f"{len(failed)} of {n_run} {job.extractor} shard(s) failed"
    if isinstance(first, ShardFailure) and first.fbmem:
        cls = getattr(errors, first.kind, None)
        if not (isinstance(cls, type) and issubclass(cls, FbmemError)):
            cls = FbmemError
        # every shard failed (bad settings, as a rule): the stage's own error as it stands
        message = first.message if len(failed) == n_run else f"{first.message} ({where}; the others are written)"
        raise cls(message, hint=first.hint)
    raise FbmemError(
        f"{where}; shard {shard_id}: {first}",
        hint="the other shards are written; run the same command again to redo the failed ones",
    )


def table_to_ipc(table: pa.Table) -> bytes:
    """A table as Arrow IPC stream bytes (how a shard's rows travel inside a Ray dataset row)."""
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def ipc_to_table(data: bytes) -> pa.Table:
    with pa.ipc.open_stream(pa.BufferReader(data)) as reader:
        return reader.read_all()


def iter_pending(ws_root: Path, job: ExtractorJob) -> Iterator[tuple[Shard, bool]]:
    """(shard, already done) for every shard of the job."""
    for shard in plan_shards(job.inputs, job.key, job.shard_rows):
        yield shard, shard_done(ws_root, job, shard.shard_id)
