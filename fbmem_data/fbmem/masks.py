"""`segment_images`: fill the `masks` table with a segmenter plug-in (resumable, batched)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fbmem_data.errors import FbmemError, InputError
from fbmem_data.ids import canonical_json, params_hash

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

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
) -> dict[str, Any]:
    """Segment every ok image that has no mask yet for this segmenter and settings (dry_run: only count them).

    Args:
        ws: the workspace.
        segmenter: a plug-in name, or a built Segmenter (e.g. a lab segmenter or a tiny SAM).
        roles: only images of these roles (train, generated, reference); default all.
        image_ids: only these images.
        device: torch device for segmenters that use one.
        batch_size: images per segmenter call and per written Parquet part.
        options: keyword settings for the plug-in (e.g. model_path for birefnet).
        progress: show a progress bar.

    Returns:
        {"segmenter", "params_hash", "pending", "ok", "error"}: counts of this call.

    Raises:
        PluginError / ModelNotFoundError: the segmenter cannot be built.
    """
    from tqdm import tqdm

    from fbmem_data.fbmem.images import load_rgb

    seg = make_segmenter(segmenter, device, options) if isinstance(segmenter, str) else segmenter
    params = seg.params()
    mask_hash = params_hash(params)
    todo = pending_images(ws, seg.name, mask_hash, roles, image_ids)
    summary = {"segmenter": seg.name, "params_hash": mask_hash, "pending": todo.num_rows, "ok": 0, "error": 0}
    if dry_run:  # counts only: a segmenter's time per image depends on it and the device (docs/performance.md)
        return {"segmenter": seg.name, "params_hash": mask_hash, "pending": todo.num_rows, "dry_run": True}
    if todo.num_rows == 0:
        return summary
    ids = todo.column("image_id").to_pylist()
    paths = todo.column("store_path").to_pylist()
    config = {"segmenter": seg.name, "params": params, "batch_size": batch_size, "device": device}
    with ws.run("segment", config) as run, tqdm(total=len(ids), desc=f"segment[{seg.name}]", disable=not progress) as bar:
        for start in range(0, len(ids), batch_size):
            rows: list[dict[str, Any]] = []
            images: list[np.ndarray] = []
            good: list[str] = []
            for image_id, path in zip(ids[start : start + batch_size], paths[start : start + batch_size], strict=True):
                try:
                    images.append(load_rgb(ws, image_id, path))
                    good.append(image_id)
                except FbmemError as exc:
                    rows.append(_error_row(image_id, seg.name, mask_hash, params, str(exc), run.run_id))
            rows += mask_rows(seg, good, images, run.run_id)
            ws.write("masks", rows)
            summary["ok"] += sum(r["status"] == "ok" for r in rows)
            summary["error"] += sum(r["status"] == "error" for r in rows)
            bar.update(len(rows))
    return summary


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
            rows.append(_error_row(image_id, seg.name, mask_hash, params, mask, run_id))
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


def _error_row(image_id: str, seg: str, mask_hash: str, params: dict[str, Any], error: str, run_id: str | None) -> dict[str, Any]:
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
