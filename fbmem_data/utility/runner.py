"""Score generated images with a utility plug-in into `utility_scores` (resumable, batch by batch)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fbmem_data import plugins
from fbmem_data.errors import FbmemError
from fbmem_data.ids import canonical_json, params_hash
from fbmem_data.utility.base import UtilityInput, UtilityMetric
from fbmem_data.workspace import Workspace


def load_plugins() -> list[str]:
    """The installed utility plug-ins' names (family `fbmem.utilities`; reads entry points, builds nothing)."""
    return plugins.names(plugins.UTILITIES)


def make_utility_metric(name: str, device: str = "auto", options: dict[str, Any] | None = None) -> UtilityMetric:
    """Build utility plug-in `name` with keyword `options`.

    Raises:
        PluginError: no such plug-in, or it cannot be built; ModelNotFoundError: its weights are missing.
    """
    return plugins.create(plugins.UTILITIES, name, device=device, **(options or {}))


def utility_id(metric: UtilityMetric) -> str:
    return params_hash({"plugin": metric.name, **metric.params()})


def pending_generations(ws: Workspace, uid: str, *, mitigations: Sequence[str] | None = None,
                        model_id: str | None = None) -> list[dict[str, Any]]:
    """Distinct (generated image, prompt) pairs of `generations` not yet scored under `uid`."""
    where, params = ["s.generated_image_id IS NULL"], {"uid": uid}
    if mitigations:
        where.append("list_contains(string_split($mitigations, '\x1f'), g.mitigation)")
        params["mitigations"] = "\x1f".join(mitigations)
    if model_id:
        where.append("g.model_id = $model_id")
        params["model_id"] = model_id
    query = f"""
        SELECT DISTINCT g.image_id AS generated_image_id, g.prompt_id, p.text
        FROM generations g
        JOIN prompts p USING (prompt_id)
        LEFT JOIN utility_scores s
          ON s.utility_id = $uid AND s.generated_image_id = g.image_id AND s.prompt_id = g.prompt_id
        WHERE {' AND '.join(where)}
        ORDER BY g.prompt_id, g.image_id"""
    return ws.sql(query, params).to_pylist()


def score_utility(
    ws: Workspace,
    metric: str | UtilityMetric,
    *,
    options: dict[str, Any] | None = None,
    mitigations: Sequence[str] | None = None,
    model_id: str | None = None,
    batch_size: int = 32,
    device: str = "auto",
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Score every generation (optionally only some mitigations / one model) not scored yet.

    Args:
        metric: a plug-in name ("lab-colours", "clip") or a built UtilityMetric.
        options: plug-in options when metric is a name (e.g. {"pretrained": path} for clip).

    Returns:
        {"utility_id", "metric", "pending", "scored", "errors"}: pending = pairs not stored before
        this call (a re-run after a complete one has pending 0 and writes nothing).

    Raises:
        PluginError / ModelNotFoundError: the plug-in cannot be built (missing weights ...).
    """
    from fbmem_data.fbmem.images import load_rgb

    util = make_utility_metric(metric, device, options) if isinstance(metric, str) else metric
    uid = utility_id(util)
    params_json = canonical_json(util.params())
    todo = pending_generations(ws, uid, mitigations=mitigations, model_id=model_id)
    scored = errors = 0
    with ws.run("utility score", {"plugin": util.name, "utility_id": uid, "n": len(todo)}) as run:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            rows, items, where = [], [], []
            for row in chunk:
                try:
                    items.append(UtilityInput(load_rgb(ws, row["generated_image_id"]), row["text"], row["prompt_id"]))
                    where.append(row)
                except FbmemError as exc:
                    rows.append(_row(uid, util, params_json, row, None, {}, str(exc), run.run_id))
            values = util.score(items) if items else []
            for row, val in zip(where, values, strict=True):
                rows.append(_row(uid, util, params_json, row, val.value, val.detail, val.error, run.run_id))
            errors += sum(r["status"] == "error" for r in rows)
            scored += ws.write("utility_scores", rows)
            if log:
                log(f"utility {util.name}: {min(start + batch_size, len(todo))}/{len(todo)}")
    return {"utility_id": uid, "metric": util.metric, "pending": len(todo), "scored": scored, "errors": errors}


def _row(uid: str, util: UtilityMetric, params_json: str, gen: dict[str, Any], value: float | None,
         detail: dict[str, Any], error: str | None, run_id: str | None) -> dict[str, Any]:
    ok = error is None and value is not None
    return {
        "utility_id": uid, "generated_image_id": gen["generated_image_id"], "prompt_id": gen["prompt_id"],
        "plugin": util.name, "metric": util.metric, "params": params_json,
        "value": float(value) if ok else None, "detail": canonical_json(detail) if detail else None,
        "status": "ok" if ok else "error", "error": None if ok else (error or "no value"), "run_id": run_id,
    }
