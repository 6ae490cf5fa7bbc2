"""Region scoring (FB-Mem step 3): candidates in, `region_scores` rows out.

The extractor is a batch function, `PairScorer.score_batch(pairs)`: a list of (generated, training)
image-id pairs in, one row per pair out. Inside a batch every image is decoded, resized, split and
prepared (per-image MS-SSIM statistics) once, however many pairs it is in; decoded images are also kept
in a bounded cache across batches, because the same training images recur for every generated image.
`score_pairs(ws, ...)` runs it as one job (`ScoreModel`, on engine "local" or "ray") over the `candidates`
of a pairing, resumably; its settings are a `ScoreRequest`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fbmem_data.errors import FbmemError, InputError
from fbmem_data.ids import params_hash

if TYPE_CHECKING:
    import pyarrow as pa

    from fbmem_data.distribute import Distributor, EngineOptions
    from fbmem_data.distribute.protocol import BatchFunction
    from fbmem_data.similarity.base import RegionMetric
    from fbmem_data.workspace import Workspace

#: The preset that reproduces the paper's released code: torchmetrics 1.3.2's MS-SSIM (defaults, last scale
#: cropped), 512, BiRefNet with rembg's processing, parts built, cached and substituted as the reference does.
PAPER_PRESET: dict[str, Any] = {
    "metric": "msssim",
    "metric_options": {"legacy_crop": True},
    "size": 512,
    "segmenter": "birefnet",
    "segmenter_options": {"processing": "rembg"},
    "composition": "reference",
}
#: The paper's metric on fbmem's cleaner parts (one alpha rule for every part, score-level degenerate rule,
#: current torchmetrics, BiRefNet's own processing): a documented deviation, kept reachable.
PAPER_CLEAN_PRESET: dict[str, Any] = {"metric": "msssim", "metric_options": {}, "size": 512, "segmenter": "birefnet", "composition": "fbmem"}
#: fbmem's default: the configuration `fbmem eval` measured best over its test beds (docs/fbmem.md, section 6).
DEFAULT_PRESET: dict[str, Any] = {
    "metric": "msssim-regions",
    "metric_options": {"align": 0.02, "zoom": 0.06, "smooth": 0.022},
    "size": 256,
    "segmenter": "saliency",
    "composition": "fbmem",
}
PRESETS = {"paper": PAPER_PRESET, "paper-clean": PAPER_CLEAN_PRESET, "default": DEFAULT_PRESET}
SCORING_VERSION = 1

ImageLoader = Callable[[str], tuple[np.ndarray, Any]]


def make_metric(name: str, options: dict[str, Any] | None = None) -> RegionMetric:
    """Build metric plug-in `name` (family `fbmem.metrics`) with keyword `options`.

    Raises:
        PluginError: no metric of that name, or it cannot be loaded.
    """
    from fbmem_data import plugins

    return plugins.create(plugins.METRICS, name, **(options or {}))


@dataclass
class ScoringConfig:
    """Everything that changes a score; scoring_id = params_hash(as_dict())."""

    metric: str
    size: int
    segmenter: str
    mask_params_hash: str | None
    preset: str = "custom"
    metric_options: dict[str, Any] = field(default_factory=dict)
    #: how parts are built: "fbmem", "reference", "reference-fresh" or "whole-image" (fbmem_data.fbmem.reference)
    composition: str = "fbmem"
    segmenter_options: dict[str, Any] = field(default_factory=dict)

    def as_dict(self, metric: RegionMetric) -> dict[str, Any]:
        d = {
            "version": SCORING_VERSION,
            "metric": metric.params(),
            "size": self.size,
            "segmenter": self.segmenter,
            "mask_params_hash": self.mask_params_hash,
        }
        if self.composition != "fbmem":
            # only when set: scoring ids of fbmem-composition configurations stay what they were
            d["composition"] = self.composition
        return d


def resolve_config(
    preset: str | None,
    metric: str | None,
    size: int | None,
    segmenter: str | None,
    metric_options: dict[str, Any] | None,
    *,
    whole_image: bool = False,
    segmenter_options: dict[str, Any] | None = None,
) -> ScoringConfig:
    """Fill unset options from a preset ('default' when none; 'paper' for a bare whole-image baseline).

    Naming an option overrides the preset, and the row is then labelled preset='custom' unless it
    equals the preset. The preset's segmenter options (e.g. rembg processing for the paper's BiRefNet)
    apply when its own segmenter is used; options given here win.

    Raises:
        InputError: unknown preset, or a whole-image baseline with a metric that needs masks.
    """
    name = preset or ("paper" if whole_image and metric is None else "default")
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}", hint=f"one of {sorted(PRESETS)}")
    base = PRESETS[name]
    chosen_metric = metric or base["metric"]
    if metric_options is None:
        # the preset's options belong to the preset's metric: another metric starts from its own defaults
        metric_options = base["metric_options"] if chosen_metric == base["metric"] else {}
    chosen = {
        "metric": chosen_metric,
        "size": int(size or base["size"]),
        "segmenter": segmenter or base["segmenter"],
        "metric_options": dict(metric_options),
        "composition": "whole-image" if whole_image else base["composition"],
    }
    if chosen["composition"] != "fbmem" and chosen["metric"] not in ("msssim", "ssim"):
        what = "the whole-image baseline" if whole_image else f"preset {name!r}"
        raise InputError(f"{what} compares parts with msssim or ssim, not {chosen['metric']!r}", hint="--metric msssim (or ssim)")
    seg_options = dict(base.get("segmenter_options", {})) if chosen["segmenter"] == base["segmenter"] else {}
    seg_options.update(segmenter_options or {})
    if whole_image:
        chosen["segmenter"] = "none"  # nothing is segmented
        seg_options = {}
    same = all(chosen[k] == base[k] for k in ("metric", "size", "metric_options", "composition"))
    return ScoringConfig(mask_params_hash=None, preset=name if same else "custom", segmenter_options=seg_options, **chosen)


class PairScorer:
    """Scores batches of (generated, training) pairs with a region metric.

    Args:
        metric: a RegionMetric plug-in.
        size: side of the square the parts are compared at.
        load: image_id -> (uint8 HxWx3 image, uint8 HxW mask, or None for the whole-image baseline);
            raises FbmemError for a bad image.
        device: torch device for the metric.
        cache_mb: memory for decoded, resized images kept across batches.
        train_chunk: training images prepared at once (bounds memory: about 35 MB each at 512).
        composition: how parts are built: "fbmem" (fbmem_data.fbmem.composition), "reference",
            "reference-fresh" or "whole-image" (fbmem_data.fbmem.reference).
    """

    def __init__(
        self,
        metric: RegionMetric,
        size: int,
        load: ImageLoader,
        device: str = "cpu",
        cache_mb: float = 1024,
        train_chunk: int = 32,
        composition: str = "fbmem",
    ) -> None:
        from fbmem_data.fbmem.reference import COMPOSITIONS

        if composition not in COMPOSITIONS:
            raise InputError(f"unknown composition {composition!r}", hint=f"one of {list(COMPOSITIONS)}")
        self.metric = metric
        self.size = int(size)
        self.load = load
        self.device = device
        self.train_chunk = max(1, int(train_chunk))
        self.composition = composition
        self._cache: OrderedDict[tuple[str, str], tuple[Any, ...] | str] = OrderedDict()
        # fbmem keeps RGB + mask (4 bytes a pixel), the other compositions two RGBA parts (8)
        per_image = self.size * self.size * (4 if composition == "fbmem" else 8)
        self._cache_max = max(8, int(cache_mb * 2**20 // per_image))

    def _build(self, image_id: str, role: str) -> tuple[Any, ...]:
        from fbmem_data.fbmem import reference
        from fbmem_data.fbmem.composition import resize_mask, resize_rgb

        rgb, mask = self.load(image_id)
        if self.composition == "fbmem":
            return resize_rgb(rgb, self.size), resize_mask(mask, self.size)
        if self.composition == "whole-image":
            whole = reference.whole_image(rgb, self.size)
            return whole, whole, "none"
        if mask.shape != rgb.shape[:2]:
            raise InputError(f"mask of {image_id} is {mask.shape}, image is {rgb.shape[:2]}")
        if role == "train":
            return (*reference.train_parts(rgb, mask, self.size), "none")
        return reference.generated_parts(rgb, mask, self.size, cached=self.composition == "reference")

    def _get(self, image_id: str, role: str = "generated") -> tuple[Any, ...] | str:
        """The cached inputs of an image in a role: (rgb, mask) resized for "fbmem", else (fg, bg, rule)
        uint8 RGBA parts before the degenerate substitution; or the error text. LRU."""
        key = (image_id, role if self.composition in ("reference", "reference-fresh") else "")
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        try:
            value: tuple[Any, ...] | str = self._build(image_id, role)
        except FbmemError as exc:
            value = str(exc)
        self._cache[key] = value
        if len(self._cache) > self._cache_max:
            self._cache.popitem(last=False)
        return value

    def _prepare(self, ids: list[str], role: str, substitute: bool = False) -> tuple[Any, Any, list[str]]:
        """(RegionBatch, metric state, degenerate rules) of images in a role; substitute applies the
        reference's part substitution (generated images of the part-building compositions)."""
        import torch

        from fbmem_data.fbmem import reference
        from fbmem_data.fbmem.composition import degenerate_rules, region_batch
        from fbmem_data.similarity.base import RegionBatch

        items = [self._get(i, role) for i in ids]
        if self.composition == "fbmem":
            batch = region_batch([it[0] for it in items], [it[1] for it in items], self.size, self.device)  # type: ignore[index]
            rules = degenerate_rules(batch.fg, batch.bg) if role == "generated" else ["none"] * len(ids)
            return batch, self.metric.prepare(batch), rules
        rules = [it[2] for it in items]  # type: ignore[index]
        parts = [reference.substitute(it[0], it[1], it[2]) if substitute else (it[0], it[1]) for it in items]  # type: ignore[index]

        def tensor(arrays: list[np.ndarray]) -> torch.Tensor:
            x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
            return x.contiguous().to(self.device)

        fg, bg = tensor([p[0] for p in parts]), tensor([p[1] for p in parts])
        batch = RegionBatch(fg=fg, bg=bg, mask=fg[:, 3:4])
        return batch, self.metric.prepare(batch), rules

    def score_batch(self, pairs: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        """Score pairs; returns one dict per pair, in input order, with keys generated_image_id,
        train_image_id, fg_score, bg_score, pair_score, raw_fg_score, raw_bg_score, degenerate_rule,
        status ('ok' | 'error') and error.

        The degenerate rule replaces scores ("fbmem": fg_both -> both scores are the fg score) or,
        for the reference compositions, the generated part before scoring (fg_both -> the generated
        background part is its foreground part); raw_* are the scores without the rule either way.
        """
        import torch

        from fbmem_data.fbmem.composition import apply_rules

        rows: dict[tuple[str, str], dict[str, Any]] = {}
        bad: dict[str, str] = {}
        for g, t in pairs:
            for image_id, role in ((g, "generated"), (t, "train")):
                got = self._get(image_id, role)
                if isinstance(got, str):
                    bad[image_id] = got
        good_pairs = []
        for g, t in pairs:
            if g in bad or t in bad:
                rows[(g, t)] = _error(g, t, bad.get(g) or bad.get(t) or "")
            else:
                good_pairs.append((g, t))
        gen_ids = sorted({g for g, _ in good_pairs})
        if gen_ids:
            part_rule = self.composition != "fbmem"
            _, gen_state, rules = self._prepare(gen_ids, "generated")
            sub_state = self._prepare(gen_ids, "generated", substitute=True)[1] if part_rule and any(r != "none" for r in rules) else None
            gen_pos = {g: i for i, g in enumerate(gen_ids)}
            train_ids = sorted({t for _, t in good_pairs})
            for start in range(0, len(train_ids), self.train_chunk):
                chunk = train_ids[start : start + self.train_chunk]
                train_pos = {t: i for i, t in enumerate(chunk)}
                sub = [(g, t) for g, t in good_pairs if t in train_pos]
                _, train_state, _ = self._prepare(chunk, "train")
                gi = torch.tensor([gen_pos[g] for g, _ in sub], dtype=torch.long, device=self.device)
                ti = torch.tensor([train_pos[t] for _, t in sub], dtype=torch.long, device=self.device)
                raw_fg, raw_bg = self.metric.score(gen_state, gi, train_state, ti)
                pair_rules = [rules[gen_pos[g]] for g, _ in sub]
                if not part_rule:
                    fg, bg = apply_rules(raw_fg, raw_bg, pair_rules)
                elif sub_state is None:
                    fg, bg = raw_fg, raw_bg
                else:
                    fg, bg = raw_fg.clone(), raw_bg.clone()
                    hit = torch.tensor([r != "none" for r in pair_rules], device=self.device)
                    if bool(hit.any()):
                        sub_fg, sub_bg = self.metric.score(sub_state, gi[hit], train_state, ti[hit])
                        fg[hit], bg[hit] = sub_fg, sub_bg
                # one device-to-host copy per chunk, not one per pair
                fg_l, bg_l, raw_fg_l, raw_bg_l = (v.double().cpu().tolist() for v in (fg, bg, raw_fg, raw_bg))
                for k, (g, t) in enumerate(sub):
                    f, b = fg_l[k], bg_l[k]
                    rows[(g, t)] = {
                        "generated_image_id": g,
                        "train_image_id": t,
                        "fg_score": f,
                        "bg_score": b,
                        "pair_score": 0.5 * f + 0.5 * b,
                        "raw_fg_score": raw_fg_l[k],
                        "raw_bg_score": raw_bg_l[k],
                        "degenerate_rule": pair_rules[k],
                        "status": "ok",
                        "error": None,
                    }
        return [rows[(g, t)] for g, t in pairs]


def _error(g: str, t: str, message: str) -> dict[str, Any]:
    return {
        "generated_image_id": g,
        "train_image_id": t,
        "fg_score": None,
        "bg_score": None,
        "pair_score": None,
        "raw_fg_score": None,
        "raw_bg_score": None,
        "degenerate_rule": None,
        "status": "error",
        "error": message,
    }


class WorkspaceImageLoader:
    """image_id -> (RGB, mask) from a workspace's image store and `masks` table (one segmenter+params);
    with segmenter None (the whole-image baseline) -> (RGB, None), no masks read."""

    def __init__(self, ws: Workspace, segmenter: str | None, mask_hash: str | None) -> None:
        self.ws = ws
        self.segmenter = segmenter
        self.mask_hash = mask_hash
        self._paths: dict[str, str | None] = {}
        self._masks: dict[str, bytes | str] = {}

    def preload(self, image_ids: Sequence[str]) -> None:
        """Fetch store paths and mask bytes of many images in two queries (instead of two per image)."""
        ids = [i for i in set(image_ids) if i not in self._masks]
        if not ids:
            return
        paths = self.ws.sql(
            "SELECT image_id, min(store_path) AS p FROM images WHERE status = 'ok' AND list_contains($ids::VARCHAR[], image_id) GROUP BY 1",
            {"ids": ids},
        )
        self._paths.update(zip(paths.column("image_id").to_pylist(), paths.column("p").to_pylist(), strict=True))
        if self.segmenter is None:
            self._masks.update(dict.fromkeys(ids, b""))  # marks them loaded; no mask is used
            return
        masks = self.ws.sql(
            "SELECT image_id, mask, status, error FROM masks WHERE segmenter = $seg AND params_hash = $h "
            "AND list_contains($ids::VARCHAR[], image_id)",
            {"ids": ids, "seg": self.segmenter, "h": self.mask_hash},
        )
        for row in masks.to_pylist():
            self._masks[row["image_id"]] = row["mask"] if row["status"] == "ok" else f"segmentation failed: {row['error']}"

    def forget(self, image_ids: Sequence[str]) -> None:
        for i in image_ids:
            self._masks.pop(i, None)

    def __call__(self, image_id: str) -> tuple[np.ndarray, np.ndarray | None]:
        from fbmem_data.fbmem.images import decode_mask, load_rgb

        if image_id not in self._masks:
            self.preload([image_id])
        if image_id not in self._paths:
            raise InputError(f"image {image_id} is not an ok image of this workspace")
        if self.segmenter is None:
            return load_rgb(self.ws, image_id, self._paths[image_id]), None
        mask = self._masks.get(image_id)
        if mask is None:
            raise InputError(f"image {image_id} has no {self.segmenter} mask", hint="run `fbmem segment`")
        if isinstance(mask, str):
            raise InputError(mask)
        rgb = load_rgb(self.ws, image_id, self._paths[image_id])
        m = decode_mask(mask)
        if m.shape != rgb.shape[:2]:
            raise InputError(f"mask of {image_id} is {m.shape}, image is {rgb.shape[:2]}")
        return rgb, m


#: The scorer's cost model (docs/performance.md, "Cost model"): measured on one CPU core at 512 px,
#: per image whose statistics are computed and per pair compared.
COST_S_PER_IMAGE_512 = 0.126
COST_S_PER_PAIR_512 = 0.0196


def _dry_run_estimate(ws: Workspace, seg: Any, needed: list[str], n_pairs: int, size: int) -> dict[str, Any]:
    """What a score run would do, and an estimate of its CPU time (pixels scale with size squared)."""
    from fbmem_data.fbmem.masks import pending_images

    without_masks = 0
    if seg is not None and needed:
        without_masks = pending_images(ws, seg.name, params_hash(seg.params()), image_ids=needed).num_rows
    scale = (size / 512) ** 2
    seconds = (len(needed) * COST_S_PER_IMAGE_512 + n_pairs * COST_S_PER_PAIR_512) * scale
    return {
        "dry_run": True,
        "images": len(needed),
        "images_without_masks": without_masks,
        "estimated_cpu_s": round(seconds, 1),
        "estimate": "one CPU core, scorer only (segmentation not included), from docs/performance.md; a GPU differs",
    }


def resolve_pairing(ws: Workspace, pairing_id: str | None, create_exhaustive: bool = False) -> str:
    """The pairing to score: the one named, else the most recently written one.

    Raises:
        InputError: the named pairing has no candidates, or there are none and none can be created.
    """
    if pairing_id is not None:
        n = ws.sql("SELECT count(*) AS n FROM candidates WHERE pairing_id = $p", {"p": pairing_id}).column("n")[0].as_py()
        if not n:
            raise InputError(f"pairing {pairing_id!r} has no candidates", hint="list pairings: fbmem sql 'SELECT DISTINCT pairing_id FROM candidates'")
        return pairing_id
    t = ws.sql(
        "SELECT c.pairing_id FROM candidates c LEFT JOIN runs r USING (run_id) GROUP BY 1 "
        "ORDER BY max(r.started_at) DESC NULLS LAST, c.pairing_id LIMIT 1"
    )
    if t.num_rows:
        return t.column("pairing_id")[0].as_py()
    if create_exhaustive:
        return _create_exhaustive(ws)
    raise InputError("the workspace has no candidate pairs to score", hint="run `fbmem pair` first (or `fbmem score --pairing exhaustive`)")


def _create_exhaustive(ws: Workspace) -> str:
    """Write exhaustive candidates (every generated x training image) and return their pairing_id."""
    from fbmem_data.pairing import pair

    return pair(ws, method="exhaustive")


@dataclass(frozen=True)
class ScoreRequest:
    """The settings of one score run (what `fbmem score` and `score_pairs` take), checked once here.

    Attributes:
        pairing_id: which candidates; default the most recently written pairing.
        preset: "paper" (the released code's computation: msssim as torchmetrics 1.3.2, 512, birefnet
            with rembg's processing, reference parts), "paper-clean" (the paper's metric on fbmem's
            parts) or "default" (msssim-regions with registration, 256, saliency). metric, size and
            segmenter override the preset's choice.
        metric_options: SSIMConfig fields for the metric (e.g. {"data_range": 1.0}).
        segmenter_options: options of the segmenter plug-in (e.g. {"model_path": ...}).
        whole_image: the reference's `--no_segment` baseline: whole images (RGBA, alpha 1) compared,
            fg = bg = that score; nothing is segmented. Without a preset or metric: the paper's metric.
        create_exhaustive: with no candidates at all, create exhaustive ones via the pairing module.
        device: torch device ("auto": resolved where the scoring runs).
        batch_size: generated images per batch (all their candidates are scored in that batch).
        shard_rows: pairs per shard (= per Parquet part written); default 4 batches.
    """

    pairing_id: str | None = None
    preset: str | None = None
    metric: str | None = None
    size: int | None = None
    segmenter: str | None = None
    metric_options: dict[str, Any] | None = None
    segmenter_options: dict[str, Any] | None = None
    whole_image: bool = False
    create_exhaustive: bool = False
    device: str = "auto"
    batch_size: int = 8
    shard_rows: int | None = None

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset not in PRESETS:
            raise InputError(f"unknown preset {self.preset!r}", hint=f"one of {sorted(PRESETS)}")
        if self.size is not None and int(self.size) < 16:
            raise InputError(f"size must be at least 16, got {self.size}")
        if self.batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {self.batch_size}")
        if self.shard_rows is not None and self.shard_rows < 1:
            raise InputError(f"shard_rows must be at least 1, got {self.shard_rows}")

    def scoring_config(self) -> ScoringConfig:
        """The preset resolved against the options (mask_params_hash still unset)."""
        return resolve_config(self.preset, self.metric, self.size, self.segmenter, self.metric_options,
                              whole_image=self.whole_image, segmenter_options=self.segmenter_options)


@dataclass(frozen=True)
class ScoreModel:
    """Model factory of `score`: the region metric and a PairScorer reading masks from the workspace.

    Scoring reads images and masks where it runs (from the workspace, through WorkspaceImageLoader's
    cache) instead of receiving bytes: a training image recurs in every generated image's candidates,
    and shipping it once per pair would multiply the traffic by k. segmenter None: the whole-image
    baseline (no masks). `built` lends the metric the caller built to an in-process engine.
    """

    metric: str
    metric_options: dict[str, Any]
    size: int
    segmenter: str | None
    mask_params_hash: str | None
    device: str
    row_fields: dict[str, Any]
    composition: str = "fbmem"
    built: RegionMetric | None = None

    def __call__(self, ws: Workspace) -> BatchFunction:
        from fbmem_data.devices import resolve_device

        loader = WorkspaceImageLoader(ws, self.segmenter, self.mask_params_hash)
        metric = self.built or make_metric(self.metric, self.metric_options)
        scorer = PairScorer(metric, self.size, loader, device=resolve_device(self.device), composition=self.composition)
        fields = dict(self.row_fields)

        def score_batch(rows: pa.Table) -> dict[str, list[dict[str, Any]]]:
            pairs = list(zip(rows.column("generated_image_id").to_pylist(), rows.column("train_image_id").to_pylist(), strict=True))
            loader.preload([i for p in pairs for i in p])
            scored = scorer.score_batch(pairs)
            for r in scored:
                r.update(fields)
            return {"region_scores": scored}

        return score_batch


def score_pairs(
    ws: Workspace,
    pairing_id: str | None = None,
    *,
    request: ScoreRequest | None = None,
    progress: bool = False,
    dry_run: bool = False,
    engine: str | Distributor = "local",
    engine_options: EngineOptions | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Score every candidate pair of a pairing that has no row under this scoring_id yet.

    Missing masks of the images involved are computed first (`segment_images`, resumable, on the same
    engine), then one `score` job runs `ScoreModel`'s batch function over the pending pairs.

    Args:
        ws: the workspace.
        pairing_id: which candidates (overrides request.pairing_id); default the latest pairing.
        request: the settings (a ScoreRequest); **settings: ScoreRequest fields given as keywords
            (preset=, metric=, size=, device=, batch_size= ...), applied over `request`.
        progress: a progress bar on stderr (in-process engines).
        dry_run: write nothing; return what would be done (pending pairs, images, images without masks)
            and `estimated_cpu_s`, an estimate from the cost model of docs/performance.md.
        engine: "local", "ray", or a Distributor the caller holds; engine_options: how a named one runs.

    Returns:
        {"scoring_id", "pairing_id", "pending", "ok", "error", "config"}; on an engine other than local
        also engine, shards and shards_skipped.

    Raises:
        InputError: no candidates, bad settings; PluginError / ModelNotFoundError: metric or segmenter
        unavailable; FbmemError: shards failed (the others are written; run again to redo them).
    """
    import dataclasses

    from fbmem_data.devices import resolve_device
    from fbmem_data.distribute import (
        ExtractorJob,
        engine_config,
        engine_fields,
        open_engine,
        run_with_progress,
        status_counts,
    )
    from fbmem_data.fbmem.masks import make_segmenter, segment_images

    if pairing_id is not None:
        settings["pairing_id"] = pairing_id
    req = dataclasses.replace(request or ScoreRequest(), **settings)
    cfg = req.scoring_config()
    with open_engine(engine, engine_options) as distributor:
        # an in-process engine scores here: resolve the device and lend it the metric and segmenter
        # built here; other engines get names and resolve "auto" on their workers
        lend = distributor.in_process
        device = resolve_device(req.device) if lend else req.device
        if dry_run and req.create_exhaustive and req.pairing_id is None and not ws.count("candidates"):
            raise InputError("--dry-run cannot show exhaustive candidates that do not exist yet", hint="run `fbmem pair --method exhaustive` first")
        pairing = resolve_pairing(ws, req.pairing_id, req.create_exhaustive and not dry_run)
        region_metric = make_metric(cfg.metric, cfg.metric_options)
        seg = None if req.whole_image else make_segmenter(cfg.segmenter, device if lend else "cpu", cfg.segmenter_options)
        cfg.mask_params_hash = params_hash(seg.params()) if seg is not None else None
        config = cfg.as_dict(region_metric)
        scoring_id = params_hash(config)
        pending = ws.sql(
            "SELECT c.generated_image_id, c.train_image_id FROM candidates c WHERE c.pairing_id = $p "
            "AND NOT EXISTS (SELECT 1 FROM region_scores s WHERE s.scoring_id = $sid "
            "AND s.generated_image_id = c.generated_image_id AND s.train_image_id = c.train_image_id) ORDER BY 1, 2",
            {"p": pairing, "sid": scoring_id},
        )
        summary: dict[str, Any] = {"scoring_id": scoring_id, "pairing_id": pairing, "pending": pending.num_rows, "ok": 0, "error": 0,
                                   "config": config}
        if pending.num_rows == 0 and not dry_run:
            return {**summary, **engine_fields(distributor)}
        gens = pending.column("generated_image_id").to_pylist()
        needed = sorted(set(gens) | set(pending.column("train_image_id").to_pylist()))
        if dry_run:
            base = {k: v for k, v in summary.items() if k not in ("ok", "error")}  # nothing ran
            return {**base, **_dry_run_estimate(ws, seg, needed, len(gens), cfg.size)}
        if seg is not None:
            segment_images(ws, seg if lend else cfg.segmenter, image_ids=needed, device=device, batch_size=req.batch_size,
                           options=cfg.segmenter_options, progress=progress, engine=distributor)
        # batch_size counts generated images: with the same number of candidates each (the usual case),
        # a batch is exactly batch_size generated images with all their pairs
        pairs_per_call = req.batch_size * math.ceil(len(gens) / len(set(gens)))
        run_config = {**config, "scoring_id": scoring_id, "pairing_id": pairing, "preset": cfg.preset, "device": device,
                      **engine_config(distributor)}
        with ws.run("score", run_config) as run:
            fields = {"scoring_id": scoring_id, "pairing_id": pairing, "segmenter": seg.name if seg is not None else "none",
                      "mask_params_hash": cfg.mask_params_hash, "metric": cfg.metric, "preset": cfg.preset, "size": cfg.size,
                      "run_id": run.run_id}
            job = ExtractorJob(
                extractor="score",
                config_hash=scoring_id,
                tables=("region_scores",),
                inputs=pending,
                key=("generated_image_id", "train_image_id"),
                model=ScoreModel(cfg.metric, dict(cfg.metric_options), cfg.size, seg.name if seg is not None else None,
                                 cfg.mask_params_hash, device, fields, cfg.composition, region_metric if lend else None),
                shard_rows=req.shard_rows or pairs_per_call * 4,
                batch_size=pairs_per_call,
            )
            done = run_with_progress(distributor, ws, job, progress=progress, desc=f"score[{cfg.metric}]", unit="pair")
        counts = status_counts(ws, "region_scores", run.run_id)
        return {**summary, "ok": counts.get("ok", 0), "error": counts.get("error", 0), **engine_fields(distributor, done)}


def latest_scoring(ws: Workspace) -> pa.Table:
    """The scoring configurations stored, most recent first (what the views choose from)."""
    return ws.sql(
        "SELECT s.scoring_id, any_value(s.metric) AS metric, any_value(s.preset) AS preset, any_value(s.size) AS size, "
        "any_value(s.segmenter) AS segmenter, count(*) AS pairs, max(r.started_at) AS last_run "
        "FROM region_scores s LEFT JOIN runs r USING (run_id) GROUP BY 1 ORDER BY last_run DESC NULLS LAST"
    )
