"""Distributed forms of the extractors: segment, embed, pair, score (generate and NeMo in extract_gpu.py).

Each `*_job` function builds an ExtractorJob from the same pending query the extractor's own loop uses,
with a picklable model factory around the extractor's batch function; each `*_distributed` function is
the library equivalent of the command with `--engine`. The rows equal those of the extractor's own
loop (tests/test_distributors_contract.py compares them); only the Parquet part layout differs.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from fbmem_data.distribute import EngineOptions, ExtractorJob, JobSummary, make_distributor
from fbmem_data.distribute.shards import IMAGE_BYTES, IMAGE_ERROR
from fbmem_data.errors import InputError
from fbmem_data.ids import params_hash

if TYPE_CHECKING:
    from fbmem_data.distribute import Distributor
    from fbmem_data.distribute.protocol import BatchFunction
    from fbmem_data.workspace import Workspace


@contextlib.contextmanager
def engine_scope(engine: str | Distributor, options: EngineOptions | None) -> Iterator[Distributor]:
    """A distributor for several jobs: built and closed here for a name, lent through otherwise."""
    if isinstance(engine, str):
        with make_distributor(engine, options) as built:
            yield built
    else:
        yield engine


def decode_rgb(data: bytes, image_id: str, name: str) -> np.ndarray:
    """Image bytes -> uint8 HxWx3 RGB (as fbmem_data.fbmem.images.load_rgb decodes files).

    Raises:
        InputError: the bytes do not decode.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"image {image_id} ({name}) does not decode: {exc}") from exc


# -- segment ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentModel:
    """Model factory of `segment`: builds the segmenter plug-in once per worker."""

    segmenter: str
    device: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None

    def __call__(self, ws: Workspace) -> BatchFunction:
        from fbmem_data.fbmem.masks import _error_row, make_segmenter, mask_rows

        seg = make_segmenter(self.segmenter, self.device, dict(self.options))
        params = seg.params()
        mask_hash = params_hash(params)
        run_id = self.run_id

        def segment_batch(rows: pa.Table) -> dict[str, list[dict[str, Any]]]:
            out: list[dict[str, Any]] = []
            images: list[np.ndarray] = []
            good: list[str] = []
            for image_id, path, data, error in zip(
                rows.column("image_id").to_pylist(),
                rows.column("store_path").to_pylist(),
                rows.column(IMAGE_BYTES).to_pylist(),
                rows.column(IMAGE_ERROR).to_pylist(),
                strict=True,
            ):
                try:
                    if data is None:
                        raise InputError(f"image {image_id} cannot be read: {error}")
                    images.append(decode_rgb(data, image_id, Path(path).name))
                    good.append(image_id)
                except InputError as exc:
                    out.append(_error_row(image_id, seg.name, mask_hash, params, str(exc), run_id))
            return {"masks": out + mask_rows(seg, good, images, run_id)}

        return segment_batch


def segment_job(
    ws: Workspace,
    segmenter: str = "saliency",
    *,
    roles: Sequence[str] | None = None,
    image_ids: Sequence[str] | None = None,
    device: str = "auto",
    options: dict[str, Any] | None = None,
    batch_size: int = 8,
    shard_rows: int | None = None,
    run_id: str | None = None,
) -> ExtractorJob:
    """The `segment` job: ok images without a mask for this segmenter and settings."""
    from fbmem_data.fbmem.masks import make_segmenter, pending_images

    seg = make_segmenter(segmenter, "cpu", options)  # for its name and params(); workers build their own
    mask_hash = params_hash(seg.params())
    todo = pending_images(ws, seg.name, mask_hash, roles, image_ids)
    return ExtractorJob(
        extractor="segment",
        config_hash=mask_hash,
        tables=("masks",),
        inputs=todo,
        key=("image_id",),
        model=SegmentModel(segmenter, device, dict(options or {}), run_id),
        image_path_column="store_path",
        shard_rows=shard_rows or batch_size * 8,
        batch_size=batch_size,
    )


def _status_counts(ws: Workspace, table: str, run_id: str) -> dict[str, int]:
    t = ws.sql(f"SELECT status, count(*) AS n FROM {table} WHERE run_id = $r GROUP BY 1", {"r": run_id})
    return dict(zip(t.column("status").to_pylist(), t.column("n").to_pylist(), strict=True))


def segment_distributed(
    ws: Workspace,
    segmenter: str = "saliency",
    *,
    engine: str | Distributor = "local",
    engine_options: EngineOptions | None = None,
    roles: Sequence[str] | None = None,
    image_ids: Sequence[str] | None = None,
    device: str = "auto",
    batch_size: int = 8,
    shard_rows: int | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`segment_images` on a distributor. Returns its summary keys plus engine, shards, shards_skipped."""
    config = {"segmenter": segmenter, "options": options or {}, "batch_size": batch_size, "device": device, "engine": _engine_name(engine)}
    with ws.run("segment", config) as run:
        job = segment_job(
            ws, segmenter, roles=roles, image_ids=image_ids, device=device, options=options,
            batch_size=batch_size, shard_rows=shard_rows, run_id=run.run_id,
        )
        with engine_scope(engine, engine_options) as distributor:
            done = distributor.run(ws, job)
    counts = _status_counts(ws, "masks", run.run_id)
    return {
        "segmenter": segmenter, "params_hash": job.config_hash, "pending": job.inputs.num_rows,
        "ok": counts.get("ok", 0), "error": counts.get("error", 0), **_engine_fields(done),
    }


def _engine_name(engine: str | Distributor) -> str:
    return engine if isinstance(engine, str) else engine.name


def _engine_fields(done: JobSummary) -> dict[str, Any]:
    return {"engine": done.engine, "shards": done.shards, "shards_skipped": done.shards_skipped}


# -- embed ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EmbedModel:
    """Model factory of `embed`: builds the embedder plug-in once per worker."""

    embedder: str
    device: str | None = "auto"
    options: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None

    def __call__(self, ws: Workspace) -> BatchFunction:
        from fbmem_data.embed import create_embedder
        from fbmem_data.embed.store import embedder_params_hash, embedding_rows

        embedder = create_embedder(self.embedder, device=self.device, **self.options)
        ph = embedder_params_hash(embedder)
        run_id = self.run_id

        def embed_batch(rows: pa.Table) -> dict[str, pa.Table]:
            data = rows.column(IMAGE_BYTES).to_pylist()
            # embedding_rows opens what it is given with PIL, which reads a file object as well as a path
            sources = [None if d is None else io.BytesIO(d) for d in data]
            out = embedding_rows(embedder, rows.column("image_id").to_pylist(), sources, run_id=run_id, embedder_hash=ph)  # type: ignore[arg-type]
            read_errors = rows.column(IMAGE_ERROR)
            if read_errors.null_count < len(read_errors):  # say why a file could not be read
                import pyarrow.compute as pc

                errors = pc.if_else(pc.is_null(read_errors), out.column("error"), read_errors)
                out = out.set_column(out.column_names.index("error"), "error", errors)
            return {"embeddings": out}

        return embed_batch


def embed_job(
    ws: Workspace,
    embedder: str = "thumbnail",
    *,
    role: str = "all",
    device: str | None = "auto",
    embedder_options: dict[str, Any] | None = None,
    batch_size: int = 64,
    shard_rows: int | None = None,
    run_id: str | None = None,
) -> ExtractorJob:
    """The `embed` job: usable images of `role` without a vector for this embedder and params."""
    from fbmem_data.embed import create_embedder
    from fbmem_data.embed.store import ROLES, _pending_images, embedder_params_hash

    if role not in ROLES:
        raise InputError(f"role must be one of {list(ROLES)}, got {role!r}")
    built = create_embedder(embedder, device="cpu", **(embedder_options or {}))  # params only
    ph = embedder_params_hash(built)
    pending, _ = _pending_images(ws, built.name, ph, role)
    return ExtractorJob(
        extractor="embed",
        config_hash=ph,
        tables=("embeddings",),
        inputs=pending,
        key=("image_id",),
        model=EmbedModel(embedder, device, dict(embedder_options or {}), run_id),
        image_path_column="store_path",
        shard_rows=shard_rows or max(batch_size * 4, 256),
        batch_size=batch_size,
    )


def embed_distributed(
    ws: Workspace,
    embedder: str = "thumbnail",
    *,
    engine: str | Distributor = "local",
    engine_options: EngineOptions | None = None,
    role: str = "all",
    device: str | None = "auto",
    batch_size: int = 64,
    shard_rows: int | None = None,
    embedder_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`embed_images` on a distributor. Returns embedder, params_hash, role, embedded, failed and engine fields."""
    config = {"embedder": embedder, "options": {k: str(v) for k, v in (embedder_options or {}).items()}, "role": role,
              "batch_size": batch_size, "engine": _engine_name(engine)}
    with ws.run("embed", config) as run:
        job = embed_job(ws, embedder, role=role, device=device, embedder_options=embedder_options,
                        batch_size=batch_size, shard_rows=shard_rows, run_id=run.run_id)
        with engine_scope(engine, engine_options) as distributor:
            done = distributor.run(ws, job)
    counts = _status_counts(ws, "embeddings", run.run_id)
    return {"embedder": embedder, "params_hash": job.config_hash, "role": role, "pending": job.inputs.num_rows,
            "embedded": counts.get("ok", 0), "failed": counts.get("error", 0), **_engine_fields(done)}


# -- pair -------------------------------------------------------------------------------------------
def pair_distributed(
    ws: Workspace,
    method: str = "exhaustive",
    embedder: str = "thumbnail",
    k: int = 20,
    *,
    engine: str | Distributor = "local",
    engine_options: EngineOptions | None = None,
    embedder_options: dict[str, Any] | None = None,
    device: str | None = "auto",
    batch_size: int = 64,
    **options: Any,
) -> Any:
    """`pair_with_summary` with its embedding stage on a distributor.

    The model work of pairing is embedding every image; it runs as an `embed` job on the engine. The
    nearest-neighbour search then runs here, on the driver, over the stored vectors (one index over
    the training set; a search of 10,000 queries is seconds). Exhaustive pairing has no model stage
    and is written by the driver whatever the engine.

    Returns:
        The PairingSummary of fbmem_data.pairing.
    """
    from fbmem_data.pairing import pair_with_summary

    if method == "ann":
        embed_distributed(ws, embedder, engine=engine, engine_options=engine_options, role="all", device=device,
                          batch_size=batch_size, embedder_options=embedder_options)
    return pair_with_summary(ws, method, embedder, k, embedder_options=embedder_options, device=device,
                             batch_size=batch_size, **options)


# -- score ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoreModel:
    """Model factory of `score`: the region metric and a PairScorer reading masks from the workspace.

    Scoring reads images and masks where it runs (from the workspace, through WorkspaceImageLoader's
    cache) instead of receiving bytes: a training image recurs in every generated image's candidates,
    and shipping it once per pair would multiply the traffic by k.
    """

    metric: str
    metric_options: dict[str, Any]
    size: int
    segmenter: str
    mask_params_hash: str
    device: str
    row_fields: dict[str, Any]
    composition: str = "fbmem"

    def __call__(self, ws: Workspace) -> BatchFunction:
        from fbmem_data.devices import resolve_device
        from fbmem_data.fbmem.scoring import PairScorer, WorkspaceImageLoader, make_metric

        loader = WorkspaceImageLoader(ws, self.segmenter, self.mask_params_hash)
        scorer = PairScorer(make_metric(self.metric, self.metric_options), self.size, loader, device=resolve_device(self.device),
                            composition=self.composition)
        fields = dict(self.row_fields)

        def score_batch(rows: pa.Table) -> dict[str, list[dict[str, Any]]]:
            pairs = list(zip(rows.column("generated_image_id").to_pylist(), rows.column("train_image_id").to_pylist(), strict=True))
            loader.preload([i for p in pairs for i in p])
            scored = scorer.score_batch(pairs)
            for r in scored:
                r.update(fields)
            return {"region_scores": scored}

        return score_batch


def score_distributed(
    ws: Workspace,
    pairing_id: str | None = None,
    *,
    engine: str | Distributor = "local",
    engine_options: EngineOptions | None = None,
    preset: str | None = None,
    metric: str | None = None,
    size: int | None = None,
    segmenter: str | None = None,
    metric_options: dict[str, Any] | None = None,
    segmenter_options: dict[str, Any] | None = None,
    create_exhaustive: bool = False,
    device: str = "auto",
    batch_size: int = 8,
    shard_rows: int | None = None,
) -> dict[str, Any]:
    """`score_pairs` on a distributor: missing masks first (a `segment` job), then a `score` job.

    batch_size counts generated images per batch, as in score_pairs: a call scores about
    batch_size x (candidates per generated image) pairs.

    Returns:
        score_pairs' summary keys (scoring_id, pairing_id, pending, ok, error, config) plus engine fields.
    """
    from fbmem_data.fbmem.masks import make_segmenter
    from fbmem_data.fbmem.scoring import make_metric, resolve_config, resolve_pairing

    cfg = resolve_config(preset, metric, size, segmenter, metric_options, segmenter_options=segmenter_options)
    segmenter_options = cfg.segmenter_options  # with the preset's (e.g. the paper's rembg processing)
    pairing_id = resolve_pairing(ws, pairing_id, create_exhaustive)
    region_metric = make_metric(cfg.metric, cfg.metric_options)
    seg = make_segmenter(cfg.segmenter, "cpu", segmenter_options)
    cfg.mask_params_hash = params_hash(seg.params())
    config = cfg.as_dict(region_metric)
    scoring_id = params_hash(config)
    pending = ws.sql(
        "SELECT c.generated_image_id, c.train_image_id FROM candidates c WHERE c.pairing_id = $p "
        "AND NOT EXISTS (SELECT 1 FROM region_scores s WHERE s.scoring_id = $sid "
        "AND s.generated_image_id = c.generated_image_id AND s.train_image_id = c.train_image_id)",
        {"p": pairing_id, "sid": scoring_id},
    )
    summary: dict[str, Any] = {"scoring_id": scoring_id, "pairing_id": pairing_id, "pending": pending.num_rows, "ok": 0, "error": 0,
                               "config": config, "engine": _engine_name(engine), "shards": 0, "shards_skipped": 0}
    if pending.num_rows == 0:
        return summary
    needed = sorted(set(pending.column("generated_image_id").to_pylist()) | set(pending.column("train_image_id").to_pylist()))
    n_gens = len(set(pending.column("generated_image_id").to_pylist()))
    pairs_per_call = max(1, batch_size) * math.ceil(pending.num_rows / n_gens)
    run_config = {**config, "scoring_id": scoring_id, "pairing_id": pairing_id, "preset": cfg.preset, "device": device,
                  "engine": _engine_name(engine)}
    with engine_scope(engine, engine_options) as distributor:
        segment_distributed(ws, cfg.segmenter, engine=distributor, image_ids=needed, device=device,
                            batch_size=max(1, batch_size), options=segmenter_options)
        with ws.run("score", run_config) as run:
            fields = {"scoring_id": scoring_id, "pairing_id": pairing_id, "segmenter": seg.name, "mask_params_hash": cfg.mask_params_hash,
                      "metric": cfg.metric, "preset": cfg.preset, "size": cfg.size, "run_id": run.run_id}
            job = ExtractorJob(
                extractor="score",
                config_hash=scoring_id,
                tables=("region_scores",),
                inputs=pending,
                key=("generated_image_id", "train_image_id"),
                model=ScoreModel(cfg.metric, dict(cfg.metric_options), cfg.size, cfg.segmenter, cfg.mask_params_hash, device, fields,
                                 cfg.composition),
                shard_rows=shard_rows or pairs_per_call * 4,
                batch_size=pairs_per_call,
            )
            done = distributor.run(ws, job)
    counts = _status_counts(ws, "region_scores", run.run_id)
    summary.update(ok=counts.get("ok", 0), error=counts.get("error", 0), **_engine_fields(done))
    return summary
