"""`fbmem eval`: score a scoring configuration on the built-in test beds and tabulate it against truth.

Per bed: segment every image (the bed's segmenter: `lab` on the lab, else the configuration's, default
`saliency`), pick each generated image's candidates (the `k` nearest training images by the weights-free
`thumbnail` embedding, plus the image its truth refers to, so that the metric, not the pairing, is
measured), score the pairs with `PairScorer` exactly as `fbmem score` does, and label with tau.

- accuracy of a case: the label of the pair (generated, its truth image) equals the truth; for NM (and on
  the lab, as the demo counts) the label of the best match is used. The lab counts like the demo's
  `lab_confusion`: FM or VM is right for FM, BM or VM for BM.
- best-match right: the best-scoring candidate is a truth image and its label is right (NM: the best
  match's label is NM).
- macro = the mean over truth labels (labels weigh the same whatever their counts).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fbmem_data.evaluate.beds import Bed, bed_names, check_bed_names, make_bed
from fbmem_data.fbmem.labelling import DEFAULT_TAU, label_of

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from fbmem_data.workspace import Workspace

EVAL_VERSION = 1
TRUTHS = ("VM", "FM", "BM", "NM")
DEFAULT_SEGMENTER = "saliency"  # beds are compared on the same weights-free masks whatever the preset names
_MASK_CACHE: dict[tuple[str, int, int, str, str], dict[str, np.ndarray]] = {}
_BED_CACHE: dict[tuple[str, int, bool], Bed] = {}


@dataclass
class CaseResult:
    bed: str
    key: str
    truth: str
    label: str  # the label counted for accuracy
    correct: bool
    best_train: str
    best_label: str
    best_correct: bool
    fg: float
    bg: float
    best_fg: float
    best_bg: float
    note: str


@dataclass
class EvalResult:
    config: dict[str, Any]
    cases: list[CaseResult]
    rows: list[dict[str, Any]]  # one per bed and truth label, plus one per bed with truth 'all'
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # bed -> why it was left out (skip_unavailable)


def _hit(truth: str, label: str, lenient: bool) -> bool:
    if lenient and truth in ("FM", "BM"):
        return label in (truth, "VM")
    return label == truth


def bed_cached(name: str, seed: int, small: bool, cache_dir: Path | None, device: str) -> Bed:
    key = (name, seed, small)
    if key not in _BED_CACHE:
        _BED_CACHE[key] = make_bed(name, seed, small=small, cache_dir=cache_dir, device=device)
    return _BED_CACHE[key]


def _masks(bed: Bed, seg: Any, seg_hash: str) -> dict[str, np.ndarray]:
    """uint8 masks of every image of the bed (as `masks` stores them), cached per bed and segmenter."""
    key = (bed.name, bed.seed, len(bed.cases), seg.name, seg_hash)  # case count tells small from full
    if key not in _MASK_CACHE:
        images = [("t:" + k, v) for k, v in bed.train.items()] + [("g:" + c.key, c.rgb) for c in bed.cases]
        out: dict[str, np.ndarray] = {}
        for start in range(0, len(images), 16):
            chunk = images[start : start + 16]
            for (k, _), m in zip(chunk, seg.segment([v for _, v in chunk]), strict=True):
                out[k] = np.round(np.clip(m, 0.0, 1.0) * 255).astype(np.uint8)
        _MASK_CACHE[key] = out
    return _MASK_CACHE[key]


def _candidates(bed: Bed, k: int) -> list[list[str]]:
    """Per case: the k nearest training images by thumbnail (cosine), plus its truth images (not on the lab)."""
    from PIL import Image

    from fbmem_data.embed.thumbnail import ThumbnailEmbedder

    emb = ThumbnailEmbedder()
    keys = list(bed.train)
    t = emb.embed([Image.fromarray(bed.train[x]) for x in keys])
    g = emb.embed([Image.fromarray(c.rgb) for c in bed.cases])
    sims = g @ t.T
    out = []
    for i, case in enumerate(bed.cases):
        order = np.argsort(-sims[i], kind="stable")[:k]
        chosen = [keys[j] for j in order]
        if not bed.lenient:
            chosen += [s for s in case.sources[:1] if s not in chosen]
        out.append(chosen)
    return out


def evaluate(
    ws: Workspace | None = None,
    *,
    preset: str | None = None,
    metric: str | None = None,
    size: int | None = None,
    segmenter: str | None = None,
    metric_options: dict[str, Any] | None = None,
    segmenter_options: dict[str, Any] | None = None,
    beds: Sequence[str] | None = None,
    seed: int = 0,
    small: bool = False,
    tau: float = DEFAULT_TAU,
    k: int = 3,
    device: str = "cpu",
    cache_dir: Path | None = None,
    log: Callable[[str], None] | None = None,
    skip_unavailable: bool = False,
) -> EvalResult:
    """Score a configuration on the test beds; write `eval_results` rows into `ws` when given.

    Args:
        preset: "default" or "paper" (as `fbmem score`); metric/size/metric_options override it.
        segmenter: segmenter of the photo and planted beds (default `saliency`; the lab always uses `lab`).
        beds: which beds (default: every `fbmem.beds` plug-in: lab, planted, real-photos). small: 2-3
            cases per label (tests).
        k: thumbnail candidates per generated image (the lab uses k + 2, as the demo keeps 5).
        cache_dir: where lab generations are cached (default: `<workspace>/eval_cache`).
        skip_unavailable: leave out (and report in `skipped`) a bed whose data is missing, e.g. the
            real-photos bed without scikit-image, instead of raising.

    Raises:
        InputError: unknown bed/preset/metric, or a bed's data is unavailable (scikit-image, lab weights).
    """
    from fbmem_data.errors import FbmemError, InputError
    from fbmem_data.fbmem.masks import make_segmenter
    from fbmem_data.fbmem.scoring import PairScorer, make_metric, resolve_config
    from fbmem_data.ids import params_hash

    beds = bed_names() if beds is None else list(beds)
    check_bed_names(beds)
    if not 0 < tau <= 1:
        raise InputError(f"tau must be in (0, 1], got {tau}")
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    cfg = resolve_config(preset, metric, size, None, metric_options)
    region_metric = make_metric(cfg.metric, cfg.metric_options)
    photo_segmenter = segmenter or DEFAULT_SEGMENTER
    if cache_dir is None and ws is not None:
        cache_dir = ws.root / "eval_cache"
    config = {
        "preset": cfg.preset,
        "metric": cfg.metric,
        "metric_params": region_metric.params(),
        "size": cfg.size,
        "composition": cfg.composition,
        "segmenter": photo_segmenter,
        "tau": float(tau),
        "k": int(k),
        "seed": int(seed),
        "small": bool(small),
        "version": EVAL_VERSION,
    }
    results: list[CaseResult] = []
    rows: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for bed_name in beds:
        started = time.perf_counter()
        if log:
            log(f"[{bed_name}] building the bed ...")
        try:
            bed = bed_cached(bed_name, seed, small, cache_dir, device)
        except FbmemError as exc:
            if not skip_unavailable:
                raise
            skipped[bed_name] = exc.message + (f"; {exc.hint}" if exc.hint else "")
            continue
        seg_name = bed.segmenter or photo_segmenter
        seg = make_segmenter(seg_name, device, segmenter_options if seg_name == photo_segmenter else None)
        seg_hash = params_hash(seg.params())
        masks = _masks(bed, seg, seg_hash)
        bed_size = int(size) if size is not None else (bed.size or cfg.size)
        scorer = PairScorer(
            region_metric,
            bed_size,
            lambda i, bed=bed, masks=masks: _load(bed, masks, i),
            device=device,
            composition=cfg.composition,
        )
        cands = _candidates(bed, k + 2 if bed.lenient else k)
        if log:
            log(f"[{bed_name}] scoring {sum(map(len, cands))} pairs at {bed_size} ...")
        bed_cases: list[CaseResult] = []
        for start in range(0, len(bed.cases), 8):
            chunk = list(range(start, min(len(bed.cases), start + 8)))
            pairs = [("g:" + bed.cases[i].key, "t:" + t) for i in chunk for t in cands[i]]
            scored = scorer.score_batch(pairs)
            by_case: dict[str, list[dict[str, Any]]] = {}
            for r in scored:
                if r["status"] != "ok":
                    raise InputError(f"scoring failed on the {bed_name} bed: {r['error']}")
                by_case.setdefault(r["generated_image_id"][2:], []).append(r)
            for i in chunk:
                bed_cases.append(_judge(bed, bed.cases[i], by_case[bed.cases[i].key], tau))
        results += bed_cases
        eval_id = params_hash(
            {
                **config,
                "bed": bed_name,
                "bed_size": bed_size,
                "bed_segmenter": seg_name,
                "mask_params_hash": seg_hash,
            }
        )
        rows += _summary_rows(bed, bed_cases, eval_id, config, bed_size, seg_name, seg_hash)
        seconds[bed_name] = round(time.perf_counter() - started, 1)
    if ws is not None:
        with ws.run("eval", config) as run:
            for r in rows:
                r["run_id"] = run.run_id
            ws.write("eval_results", rows)
    return EvalResult(config, results, rows, seconds, skipped)


def _load(bed: Bed, masks: dict[str, np.ndarray], image_id: str) -> tuple[np.ndarray, np.ndarray]:
    kind, key = image_id[:2], image_id[2:]
    rgb = bed.train[key] if kind == "t:" else next(c.rgb for c in bed.cases if c.key == key)
    return rgb, masks[image_id]


def _judge(bed: Bed, case: Any, rows: list[dict[str, Any]], tau: float) -> CaseResult:
    best = sorted(rows, key=lambda r: (-r["pair_score"], r["train_image_id"]))[0]
    best_label = label_of(best["fg_score"], best["bg_score"], tau)
    best_train = best["train_image_id"][2:]
    if case.truth == "NM" or bed.lenient:
        ref, label = best, best_label
    else:
        ref = next(r for r in rows if r["train_image_id"] == "t:" + case.sources[0])
        label = label_of(ref["fg_score"], ref["bg_score"], tau)
    correct = _hit(case.truth, label, bed.lenient)
    if case.truth == "NM":
        best_ok = best_label == "NM"
    else:
        best_ok = best_train in case.sources and _hit(case.truth, best_label, bed.lenient)
    return CaseResult(
        bed.name,
        case.key,
        case.truth,
        label,
        correct,
        best_train,
        best_label,
        best_ok,
        ref["fg_score"],
        ref["bg_score"],
        best["fg_score"],
        best["bg_score"],
        case.note,
    )


def _summary_rows(
    bed: Bed,
    cases: list[CaseResult],
    eval_id: str,
    config: dict[str, Any],
    size: int,
    seg: str,
    seg_hash: str,
) -> list[dict[str, Any]]:
    base = {
        "eval_id": eval_id,
        "bed": bed.name,
        "bed_seed": bed.seed,
        "preset": config["preset"],
        "metric": config["metric"],
        "metric_params": json.dumps(config["metric_params"], sort_keys=True),
        "size": size,
        "segmenter": seg,
        "mask_params_hash": seg_hash,
        "tau": config["tau"],
        "k": config["k"],
        "small": config["small"],
    }
    rows = []
    accs, bests = [], []
    for truth in TRUTHS:
        sub = [c for c in cases if c.truth == truth]
        if not sub:
            continue
        acc = sum(c.correct for c in sub) / len(sub)
        bm = sum(c.best_correct for c in sub) / len(sub)
        accs.append(acc)
        bests.append(bm)
        wrong = sorted(
            (c for c in sub if not c.correct or not c.best_correct), key=lambda c: (c.correct, c.fg + c.bg)
        )
        rows.append(
            {
                **base,
                "truth": truth,
                "n": len(sub),
                "correct": sum(c.correct for c in sub),
                "accuracy": acc,
                "best_match_correct": sum(c.best_correct for c in sub),
                "best_match_accuracy": bm,
                "target": bed.targets.get(truth),
                "worst": [_case_text(c) for c in wrong[:3]],
            }
        )
    rows.append(
        {
            **base,
            "truth": "all",
            "n": len(cases),
            "correct": sum(c.correct for c in cases),
            "accuracy": float(np.mean(accs)),
            "best_match_correct": sum(c.best_correct for c in cases),
            "best_match_accuracy": float(np.mean(bests)),
            "target": None,
            "worst": [],
        }
    )
    return rows


def _case_text(c: CaseResult) -> str:
    best = (
        ""
        if c.best_correct
        else f"; best match {c.best_train} {c.best_label} fg {c.best_fg:.3f} bg {c.best_bg:.3f}"
    )
    return f"{c.key} ({c.note}): {c.label} fg {c.fg:.3f} bg {c.bg:.3f}{best}"


def format_table(result: EvalResult) -> str:
    """The printed table: per bed and truth label, then macro rows, then the worst cases."""
    cfg = result.config
    opts = {k: v for k, v in cfg["metric_params"].items() if k != "metric"}
    lines = [
        f"fbmem eval: preset {cfg['preset']}, metric {cfg['metric']}, size {cfg['size']}, "
        f"segmenter {cfg['segmenter']} (lab bed: lab), tau {cfg['tau']}, k {cfg['k']}, seed {cfg['seed']}",
        f"metric params: {json.dumps(opts, sort_keys=True)}",
        "",
        f"| {'bed':<11} | {'truth':<5} | {'n':>3} | {'accuracy':>8} | {'best match':>10} | {'target':>6} |",
        f"|{'-' * 13}|{'-' * 7}|{'-' * 5}|{'-' * 10}|{'-' * 12}|{'-' * 8}|",
    ]
    for r in result.rows:
        truth = "macro" if r["truth"] == "all" else r["truth"]
        target = f"{r['target']:.2f}" if r.get("target") is not None else "-"
        acc, bm = f"{r['accuracy']:.2f}", f"{r['best_match_accuracy']:.2f}"
        if r["truth"] == "all":
            acc, bm = f"**{acc}**", f"**{bm}**"
        lines.append(f"| {r['bed']:<11} | {truth:<5} | {r['n']:>3} | {acc:>8} | {bm:>10} | {target:>6} |")
    lines += [f"| {bed:<11} | (left out: {why})" for bed, why in result.skipped.items()]
    worst = [(r["bed"], w) for r in result.rows for w in r["worst"]]
    if worst:
        lines += ["", "worst cases (label counted, fg/bg of the truth pair; best match when it is wrong):"]
        lines += [f"  {bed}: {w}" for bed, w in worst]
    return "\n".join(lines)
