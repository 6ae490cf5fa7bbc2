"""`segment_images`: fill the `masks` table with a segmenter plug-in (resumable, batched, on any engine).

The work is one job (`segment_job`): pending images in, `masks` rows out through `SegmentModel`'s
batch function; `segment_images` runs it on `engine="local"` (this process) or `"ray"`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fbmem_data.errors import InputError
from fbmem_data.ids import canonical_json, params_hash

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from fbmem_data.distribute import Distributor, EngineOptions, ExtractorJob
    from fbmem_data.distribute.protocol import BatchFunction
    from fbmem_data.segment.base import Segmenter
    from fbmem_data.workspace import Workspace


def make_segmenter(name: str, device: str = "auto", options: dict[str, Any] | None = None) -> Segmenter:
    """Build segmenter plug-in `name` (family `fbmem.segmenters`: fbmem's own or an installed package's).

    Raises:
        PluginError: no segmenter of that name, or it cannot be loaded or built here.
    """
    from fbmem_data import plugins

    return plugins.create(plugins.SEGMENTERS, name, device=device, **(options or {}))


def pending_images(
    ws: Workspace, segmenter: str, mask_hash: str, roles: Sequence[str] | None = None, image_ids: Sequence[str] | None = None
) -> pa.Table:
    """ok images (image_id, store_path) with no mask row for this segmenter and params_hash."""
    where = ["i.status = 'ok'"]
    params: dict[str, Any] = {"seg": segmenter, "h": mask_hash}
    if roles:
        where.append("list_contains($roles::VARCHAR[], i.role)")
        params["roles"] = list(roles)
    if image_ids is not None:
        where.append("list_contains($ids::VARCHAR[], i.image_id)")
        params["ids"] = list(image_ids)
    query = f"""
        SELECT i.image_id, min(i.store_path) AS store_path FROM images i
        WHERE {" AND ".join(where)}
          AND i.image_id NOT IN (SELECT image_id FROM masks WHERE segmenter = $seg AND params_hash = $h)
        GROUP BY i.image_id ORDER BY i.image_id"""
    return ws.sql(query, params)


@dataclass(frozen=True)
class SegmentModel:
    """Model factory of `segment`: builds the segmenter plug-in once per worker (or lends `built`,
    the segmenter the caller already holds, to an in-process engine)."""

    segmenter: str
    device: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    built: Segmenter | None = None

    def __call__(self, ws: Workspace) -> BatchFunction:
        from fbmem_data.distribute.shards import IMAGE_BYTES, IMAGE_ERROR
        from fbmem_data.fbmem.images import decode_rgb

        seg = self.built or make_segmenter(self.segmenter, self.device, dict(self.options))
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
                    images.append(decode_rgb(data, image_id, ws.root / path))
                    good.append(image_id)
                except InputError as exc:
                    out.append(error_row(image_id, seg.name, mask_hash, params, str(exc), run_id))
            return {"masks": out + mask_rows(seg, good, images, run_id)}

        return segment_batch


def segment_job(
    ws: Workspace,
    segmenter: str | Segmenter = "saliency",
    *,
    roles: Sequence[str] | None = None,
    image_ids: Sequence[str] | None = None,
    device: str = "auto",
    options: dict[str, Any] | None = None,
    batch_size: int = 8,
    shard_rows: int | None = None,
    run_id: str | None = None,
    lend: bool = False,
) -> ExtractorJob:
    """The `segment` job: ok images without a mask for this segmenter and settings.

    A segmenter named here is built on the CPU for its name and params (workers build their own);
    with lend=True (an in-process engine) it is built once, on `device`, and lent to the model factory.
    """
    seg, model = _segmenter_and_model(segmenter, device, options, run_id, lend)
    return _segment_job(ws, seg, model, roles, image_ids, batch_size, shard_rows)


def _segmenter_and_model(
    segmenter: str | Segmenter, device: str, options: dict[str, Any] | None, run_id: str | None, lend: bool
) -> tuple[Segmenter, SegmentModel]:
    """The segmenter the driver reads name and params from, and the job's model factory."""
    if isinstance(segmenter, str):
        seg = make_segmenter(segmenter, device if lend else "cpu", options)
        return seg, SegmentModel(segmenter, device, dict(options or {}), run_id, seg if lend else None)
    return segmenter, SegmentModel(segmenter.name, device, dict(options or {}), run_id, segmenter)


def _segment_job(
    ws: Workspace, seg: Segmenter, model: SegmentModel, roles: Sequence[str] | None, image_ids: Sequence[str] | None,
    batch_size: int, shard_rows: int | None,
) -> ExtractorJob:
    from fbmem_data.distribute import ExtractorJob

    mask_hash = params_hash(seg.params())
    return ExtractorJob(
        extractor="segment",
        config_hash=mask_hash,
        tables=("masks",),
        inputs=pending_images(ws, seg.name, mask_hash, roles, image_ids),
        key=("image_id",),
        model=model,
        image_path_column="store_path",
        shard_rows=shard_rows or batch_size * 8,
        batch_size=batch_size,
    )


def segment_images(
    ws: Workspace,
    segmenter: str | Segmenter = "saliency",
    *,
    roles: Sequence[str] | None = None,
    image_ids: Sequence[str] | None = None,
    device: str = "auto",
    batch_size: int = 8,
    options: dict[str, Any] | None = None,
    progress: bool = False,
    dry_run: bool = False,
    engine: str | Distributor = "local",
    engine_options: EngineOptions | None = None,
    shard_rows: int | None = None,
) -> dict[str, Any]:
    """Segment every ok image that has no mask yet for this segmenter and settings (dry_run: only count them).

    Args:
        ws: the workspace.
        segmenter: a plug-in name, or a built Segmenter (e.g. a lab segmenter or a tiny SAM).
        roles: only images of these roles (train, generated, reference); default all.
        image_ids: only these images.
        device: torch device for segmenters that use one.
        batch_size: images per segmenter call.
        options: keyword settings for the plug-in (e.g. model_path for birefnet).
        progress: show a progress bar (in-process engines).
        engine: "local", "ray", or a Distributor the caller holds; engine_options: how a named one runs.
        shard_rows: images per shard (= per Parquet part written); default 8 batches.

    Returns:
        {"segmenter", "params_hash", "pending", "ok", "error"}: counts of this call; on an engine other
        than local also engine, shards and shards_skipped.

    Raises:
        PluginError / ModelNotFoundError: the segmenter cannot be built. FbmemError: shards failed
        (the others are written; run again to redo them).
    """
    from fbmem_data.distribute import (
        engine_config,
        engine_fields,
        open_engine,
        run_with_progress,
        status_counts,
    )

    with open_engine(engine, engine_options) as distributor:
        seg, model = _segmenter_and_model(segmenter, device, options, None, distributor.in_process)
        job = _segment_job(ws, seg, model, roles, image_ids, batch_size, shard_rows)
        params = seg.params()
        summary = {"segmenter": seg.name, "params_hash": job.config_hash, "pending": job.inputs.num_rows, "ok": 0, "error": 0}
        if dry_run:  # counts only: a segmenter's time per image depends on it and the device (docs/performance.md)
            return {"segmenter": seg.name, "params_hash": job.config_hash, "pending": job.inputs.num_rows, "dry_run": True}
        if job.inputs.num_rows == 0:
            return {**summary, **engine_fields(distributor)}
        config = {"segmenter": seg.name, "params": params, "batch_size": batch_size, "device": device, **engine_config(distributor)}
        with ws.run("segment", config) as run:
            job = dataclasses.replace(job, model=dataclasses.replace(model, run_id=run.run_id))
            done = run_with_progress(distributor, ws, job, progress=progress, desc=f"segment[{seg.name}]")
        counts = status_counts(ws, "masks", run.run_id)
        return {**summary, "ok": counts.get("ok", 0), "error": counts.get("error", 0), **engine_fields(distributor, done)}


def mask_rows(seg: Segmenter, image_ids: Sequence[str], images: Sequence[np.ndarray], run_id: str | None) -> list[dict[str, Any]]:
    """The batch function of segmenting: decoded images in, one `masks` row each out (in order).

    An image the segmenter rejects gets an error row; the batch goes on.
    """
    from fbmem_data.fbmem.images import encode_mask

    params = seg.params()
    mask_hash = params_hash(params)
    rows: list[dict[str, Any]] = []
    for image_id, mask in zip(image_ids, _segment_guarded(seg, list(images), list(image_ids)), strict=True):
        if isinstance(mask, str):
            rows.append(error_row(image_id, seg.name, mask_hash, params, mask, run_id))
            continue
        rows.append(
            {
                "image_id": image_id,
                "segmenter": seg.name,
                "params_hash": mask_hash,
                "params": canonical_json(params),
                "mask": encode_mask(mask),
                "height": int(mask.shape[0]),
                "width": int(mask.shape[1]),
                "fg_fraction": float(mask.mean()),
                "status": "ok",
                "error": None,
                "run_id": run_id,
            }
        )
    return rows


def _segment_guarded(seg: Segmenter, images: list[np.ndarray], ids: list[str]) -> list[Any]:
    """Masks for a batch; if the batch fails on bad input, retry one by one and record the failures."""
    if not images:
        return []
    try:
        return list(seg.segment(images))
    except InputError:
        out: list[Any] = []
        for img, image_id in zip(images, ids, strict=True):
            try:
                out.append(seg.segment([img])[0])
            except InputError as exc:
                out.append(f"segmenter rejected image {image_id}: {exc}")
        return out


def error_row(image_id: str, seg: str, mask_hash: str, params: dict[str, Any], error: str, run_id: str | None) -> dict[str, Any]:
    return {
        "image_id": image_id,
        "segmenter": seg,
        "params_hash": mask_hash,
        "params": canonical_json(params),
        "mask": None,
        "status": "error",
        "error": error,
        "run_id": run_id,
    }


def latest_mask_hash(ws: Workspace, segmenter: str) -> str | None:
    """params_hash of the most recently written masks of a segmenter (None if it has none)."""
    t = ws.sql(
        "SELECT m.params_hash FROM masks m LEFT JOIN runs r USING (run_id) WHERE m.segmenter = $seg "
        "GROUP BY m.params_hash ORDER BY max(r.started_at) DESC NULLS LAST, m.params_hash LIMIT 1",
        {"seg": segmenter},
    )
    return t.column("params_hash")[0].as_py() if t.num_rows else None
