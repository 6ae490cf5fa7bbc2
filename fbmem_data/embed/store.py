"""Embedding images of a workspace into the `embeddings` table, and reading vectors back.

`embedding_rows` is the extractor: a batch of images in, a batch of table rows out. `embed_job` describes
the work as a job (pending images, `EmbedModel`'s batch function); `embed_images` runs it on an engine
("local" or "ray") with resume: images that already have a row for the same embedder and params_hash
are skipped.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from fbmem_data.errors import InputError
from fbmem_data.ids import params_hash

if TYPE_CHECKING:
    from PIL import Image

    from fbmem_data.distribute import Distributor, EngineOptions, ExtractorJob
    from fbmem_data.distribute.protocol import BatchFunction
    from fbmem_data.embed.base import Embedder
    from fbmem_data.workspace import Workspace

ROLES = ("train", "generated", "all")
_LOAD_THREADS = 4  # decoding releases the GIL in PIL's C code; a few threads keep the model fed


@dataclass(frozen=True)
class EmbedSummary:
    """What one `embed_images` call did."""

    embedder: str
    params_hash: str
    dim: int
    role: str
    already_stored: int
    embedded: int
    failed: int
    seconds: float

    def as_row(self) -> dict[str, Any]:
        return dict(self.__dict__)


def embedder_params_hash(embedder: Embedder) -> str:
    return params_hash({"embedder": embedder.name, **embedder.params()})


def _load_rgb(path: Path | None) -> Image.Image | str:
    """The decoded RGB image, or the reason it cannot be read (a string)."""
    from PIL import Image

    from fbmem_data.embed.base import as_rgb

    if path is None:
        return "the image bytes are not stored in the workspace (store_path is null)"
    try:
        with Image.open(path) as img:
            img.load()
            return as_rgb([img])[0]
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        return f"{type(exc).__name__}: {exc}"


def vectors_to_arrow(vectors: np.ndarray, valid: np.ndarray | None = None) -> pa.ListArray:
    """(n, dim) float32 -> list<float32> array without a Python loop; rows where valid is False are null."""
    n, dim = vectors.shape
    offsets = pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32))
    values = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    mask = None if valid is None else pa.array(~np.asarray(valid, dtype=bool))
    return pa.ListArray.from_arrays(offsets, values, mask=mask)


def arrow_to_vectors(column: pa.ChunkedArray | pa.ListArray, dim: int) -> np.ndarray:
    """list<float32> column (no nulls) -> (n, dim) float32."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    flat = array.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if flat.size != len(array) * dim:
        raise InputError(f"stored vectors do not all have length {dim}")
    return flat.reshape(len(array), dim)


def embedding_rows(
    embedder: Embedder,
    image_ids: Sequence[str],
    paths: Sequence[Path | None],
    *,
    run_id: str | None = None,
    embedder_hash: str | None = None,
) -> pa.Table:
    """Embed one batch of images and return its `embeddings` rows (one per input, in order).

    Args:
        embedder: the plug-in to run.
        image_ids: ids of the images.
        paths: file of each image (None when the bytes are not stored).
        run_id: recorded in every row.
        embedder_hash: params hash of the embedder (computed when not given).

    Returns:
        Table with the embeddings schema's columns; unreadable images get status 'error'.
    """
    ph = embedder_hash or embedder_params_hash(embedder)
    with ThreadPoolExecutor(max_workers=_LOAD_THREADS) as pool:
        loaded = list(pool.map(_load_rgb, paths))
    ok = np.array([not isinstance(item, str) for item in loaded], dtype=bool)
    vectors = np.zeros((len(loaded), embedder.dim), dtype=np.float32)
    if ok.any():
        got = embedder.embed([item for item in loaded if not isinstance(item, str)])
        if got.shape != (int(ok.sum()), embedder.dim):
            raise InputError(f"embedder {embedder.name} returned shape {got.shape}, expected ({int(ok.sum())}, {embedder.dim})")
        vectors[ok] = got
    n = len(loaded)
    return pa.table(
        {
            "image_id": pa.array(list(image_ids), pa.string()),
            "embedder": pa.array([embedder.name] * n, pa.string()),
            "params_hash": pa.array([ph] * n, pa.string()),
            "dim": pa.array([embedder.dim] * n, pa.int32()),
            "vector": vectors_to_arrow(vectors, ok),
            "status": pa.array(["ok" if good else "error" for good in ok], pa.string()),
            "error": pa.array([item if isinstance(item, str) else None for item in loaded], pa.string()),
            "run_id": pa.array([run_id] * n, pa.string()),
        }
    )


@dataclass(frozen=True)
class EmbedModel:
    """Model factory of `embed`: builds the embedder plug-in once per worker (or lends `built`, the
    embedder the caller already holds, to an in-process engine)."""

    embedder: str
    device: str | None = "auto"
    options: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    built: Embedder | None = None

    def __call__(self, ws: Workspace) -> BatchFunction:
        from fbmem_data.distribute.shards import IMAGE_BYTES, IMAGE_ERROR, file_bytes
        from fbmem_data.embed import create_embedder

        embedder = self.built or create_embedder(self.embedder, device=self.device, **self.options)
        ph = embedder_params_hash(embedder)
        run_id = self.run_id

        def embed_batch(rows: pa.Table) -> dict[str, pa.Table]:
            paths = rows.column("store_path").to_pylist()
            # the engine read the files; PIL reads a file object as it reads a path (and names the path)
            sources = [None if d is None else file_bytes(d, ws.root / p) for d, p in zip(rows.column(IMAGE_BYTES).to_pylist(), paths, strict=True)]
            out = embedding_rows(embedder, rows.column("image_id").to_pylist(), sources, run_id=run_id, embedder_hash=ph)  # type: ignore[arg-type]
            read_errors = rows.column(IMAGE_ERROR)
            if read_errors.null_count < len(read_errors):  # say why a file could not be read
                import pyarrow.compute as pc

                errors = pc.if_else(pc.is_null(read_errors), out.column("error"), read_errors)
                out = out.set_column(out.column_names.index("error"), "error", errors)
            return {"embeddings": out}

        return embed_batch


def pending_embeddings(ws: Workspace, embedder_name: str, ph: str, role: str) -> tuple[pa.Table, int]:
    """(image_id, store_path) of usable images of `role` with no row for this embedder+params,
    and how many usable images already have one."""
    query = """
        WITH wanted AS (
            SELECT image_id, min(store_path) AS store_path
            FROM images
            WHERE status = 'ok' AND ($role = 'all' OR role = $role)
            GROUP BY image_id
        ), stored AS (
            SELECT DISTINCT image_id FROM embeddings WHERE embedder = $embedder AND params_hash = $ph
        )
        SELECT w.image_id, w.store_path, s.image_id IS NOT NULL AS stored
        FROM wanted w LEFT JOIN stored s USING (image_id)
        ORDER BY w.image_id
    """
    table = ws.sql(query, {"role": role, "embedder": embedder_name, "ph": ph})
    stored = table.column("stored").to_numpy(zero_copy_only=False)
    return table.filter(pa.array(~stored)).select(["image_id", "store_path"]), int(stored.sum())


def _embedder_and_model(
    embedder: str | Embedder, device: str | None, options: dict[str, Any] | None, run_id: str | None, lend: bool
) -> tuple[Embedder, EmbedModel]:
    """The embedder the driver reads name and params from, and the job's model factory."""
    from fbmem_data.embed import create_embedder

    if isinstance(embedder, str):
        built = create_embedder(embedder, device=device if lend else "cpu", **(options or {}))
        return built, EmbedModel(embedder, device, dict(options or {}), run_id, built if lend else None)
    return embedder, EmbedModel(embedder.name, device, dict(options or {}), run_id, embedder)


def embed_job(
    ws: Workspace,
    embedder: str | Embedder = "thumbnail",
    *,
    role: str = "all",
    device: str | None = "auto",
    embedder_options: dict[str, Any] | None = None,
    batch_size: int = 64,
    shard_rows: int | None = None,
    run_id: str | None = None,
    lend: bool = False,
) -> ExtractorJob:
    """The `embed` job: usable images of `role` without a vector for this embedder and params.

    An embedder named here is built on the CPU for its params (workers build their own); with
    lend=True (an in-process engine) it is built once, on `device`, and lent to the model factory.
    """
    built, model = _embedder_and_model(embedder, device, embedder_options, run_id, lend)
    return _embed_job(ws, built, model, role, batch_size, shard_rows)[0]


def _embed_job(
    ws: Workspace, built: Embedder, model: EmbedModel, role: str, batch_size: int, shard_rows: int | None
) -> tuple[ExtractorJob, int]:
    from fbmem_data.distribute import ExtractorJob

    if role not in ROLES:
        raise InputError(f"role must be one of {list(ROLES)}, got {role!r}")
    if batch_size < 1:
        raise InputError(f"batch size must be positive, got {batch_size}")
    ph = embedder_params_hash(built)
    pending, already = pending_embeddings(ws, built.name, ph, role)
    job = ExtractorJob(
        extractor="embed",
        config_hash=ph,
        tables=("embeddings",),
        inputs=pending,
        key=("image_id",),
        model=model,
        image_path_column="store_path",
        shard_rows=shard_rows or max(batch_size * 16, 1024),  # vectors are small: few, larger parts
        batch_size=batch_size,
    )
    return job, already


def embed_images(
    ws: Workspace,
    embedder: str | Embedder = "thumbnail",
    *,
    role: str = "all",
    device: str | None = "auto",
    batch_size: int = 64,
    embedder_options: dict[str, Any] | None = None,
    run_id: str | None = None,
    shard_rows: int | None = None,
    progress: bool = False,
    engine: str | Distributor = "local",
    engine_options: EngineOptions | None = None,
) -> EmbedSummary:
    """Embed every usable image of `role` that has no vector yet for this embedder and params.

    Args:
        ws: the workspace.
        embedder: a plug-in name or an Embedder already built.
        role: "train", "generated" or "all".
        device: for a plug-in built here (auto, cpu, cuda, cuda:N).
        batch_size: images per forward pass.
        embedder_options: keyword options for a plug-in built here (weights=..., size=...).
        run_id: record the rows under this run (a caller's run); None opens an `embed` run.
        shard_rows: images per shard (= per Parquet part; a killed run loses at most one shard's work);
            default max(16 batches, 1024).
        progress: show a progress bar on stderr (in-process engines).
        engine: "local", "ray", or a Distributor the caller holds; engine_options: how a named one runs.

    Returns:
        An EmbedSummary.

    Raises:
        InputError: unknown role or non-positive batch size.
        PluginError, ModelNotFoundError: the embedder cannot be built. FbmemError: shards failed.
    """
    from fbmem_data.distribute import engine_config, open_engine

    if role not in ROLES:
        raise InputError(f"role must be one of {list(ROLES)}, got {role!r}")
    if batch_size < 1:
        raise InputError(f"batch size must be positive, got {batch_size}")
    with open_engine(engine, engine_options) as distributor:
        built, model = _embedder_and_model(embedder, device, embedder_options, run_id, distributor.in_process)
        if run_id is None:
            config = {"embedder": built.name, "params": built.params(), "role": role, "batch_size": batch_size, **engine_config(distributor)}
            with ws.run("embed", config) as run:
                return _embed_pending(ws, distributor, built, dataclasses.replace(model, run_id=run.run_id), role, batch_size, shard_rows, progress)
        return _embed_pending(ws, distributor, built, model, role, batch_size, shard_rows, progress)


def _embed_pending(
    ws: Workspace, distributor: Distributor, built: Embedder, model: EmbedModel, role: str, batch_size: int,
    shard_rows: int | None, progress: bool,
) -> EmbedSummary:
    from fbmem_data.distribute import run_with_progress

    started = time.perf_counter()
    job, already = _embed_job(ws, built, model, role, batch_size, shard_rows)
    if job.inputs.num_rows:
        run_with_progress(distributor, ws, job, progress=progress, desc=f"embed {built.name}", unit="img")
    counts = ws.sql(
        "SELECT status, count(*) AS n FROM embeddings WHERE embedder = $e AND params_hash = $ph AND run_id IS NOT DISTINCT FROM $r "
        "AND list_contains($ids::VARCHAR[], image_id) GROUP BY 1",
        {"e": built.name, "ph": job.config_hash, "r": model.run_id, "ids": job.inputs.column("image_id").to_pylist()},
    ).to_pylist()
    by_status = {r["status"]: r["n"] for r in counts}
    return EmbedSummary(
        embedder=built.name,
        params_hash=job.config_hash,
        dim=built.dim,
        role=role,
        already_stored=already,
        embedded=by_status.get("ok", 0),
        failed=by_status.get("error", 0),
        seconds=round(time.perf_counter() - started, 3),
    )


def load_vectors(
    ws: Workspace, embedder: str, params_hash_: str, *, role: str = "all"
) -> tuple[list[str], np.ndarray]:
    """The stored ok vectors of usable images of `role`, sorted by image_id.

    Returns:
        (image_ids, float32 array of shape (len(image_ids), dim)); dim 0 when there are none.

    Raises:
        InputError: unknown role, or stored vectors of one configuration disagree on dim.
    """
    if role not in ROLES:
        raise InputError(f"role must be one of {list(ROLES)}, got {role!r}")
    query = """
        SELECT DISTINCT ON (e.image_id) e.image_id, e.dim, e.vector
        FROM embeddings e
        WHERE e.embedder = $embedder AND e.params_hash = $ph AND e.status = 'ok'
          AND e.image_id IN (SELECT image_id FROM images WHERE status = 'ok' AND ($role = 'all' OR role = $role))
        ORDER BY e.image_id
    """
    table = ws.sql(query, {"embedder": embedder, "ph": params_hash_, "role": role})
    if table.num_rows == 0:
        return [], np.zeros((0, 0), dtype=np.float32)
    dims = set(table.column("dim").to_pylist())
    if len(dims) != 1:
        raise InputError(f"embeddings of {embedder}/{params_hash_} have several dims {sorted(dims)}")
    return table.column("image_id").to_pylist(), arrow_to_vectors(table.column("vector"), dims.pop())
