"""Pairs per second of the batched FB-Mem scorer against the reference way, and planted-truth quality.

Usage: nice -n 10 .venv/bin/python benchmarks/bench_scorer.py [--sizes 256 512] [--gen 8] [--train 16]
       [--ref-pairs 16] [--repeats 2] [--threads 1] [--metrics msssim msssim-masked] [--planted-seeds 10]
       [--device cpu] [--skip-planted]

Speed, on the same pairs (gen x train planted images stored as PNG files with PNG masks; every
generated image against every training image, as the paper scores each generation against all of
its training images):
- reference: one pair per call through torchmetrics' MultiScaleStructuralSimilarityIndexMeasure module
  (defaults), both images and masks reopened from disk and resized (LANCZOS) per pair, RGBA parts built
  per pair, fg and bg scored by two module calls (constructing the module costs 0.4 ms, nothing next to
  a pair's seconds). It caches nothing, so its time per pair does not depend on the set: it is timed
  on --ref-pairs pairs spread evenly over the same gen x train list (other generated and training
  images each), and its scores on them are checked against the batched scorer's for those pairs;
- batched `msssim` (the paper preset's metric) through `PairScorer.score_batch` on all gen x train pairs (files read once, per-image
  statistics once, only the cross term per pair), and the default `msssim-masked` the same way.
  Its per-image work is shared by the pairs of each image, so its rate grows with pairs per image:
  gen x train / (gen + train), 12.8 for 16 x 64; the paper's 9,460 x 500 setting has ~475.
Quality, on planted cases (VM/FM/BM/NM, objects of 12% and 35%, exact masks and saliency masks) at 512:
labels at tau 0.8 from the paper preset vs the masked variant; precision/recall per label.
Writes benchmarks/results/scorer_cpu.json (or scorer_<device>.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fbmem_data.fbmem.composition import region_batch
from fbmem_data.fbmem.labelling import LABELS, label_of
from fbmem_data.fbmem.scoring import PairScorer
from fbmem_data.similarity.msssim import MaskedMSSSIMMetric, MSSSIMMetric
from fbmem_data.testing.scenes import planted_pair, to_uint8

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def write_images(root: Path, n_gen: int, n_train: int, src_size: int) -> tuple[list[str], list[str]]:
    """Planted images (and exact masks) as PNG files: gen_i.png / gen_i.mask.png, train_j.png ..."""
    gens, trains = [], []
    for i in range(max(n_gen, n_train)):
        p = planted_pair(100 + i, "BM" if i % 2 else "FM", src_size, 0.12 + 0.2 * (i % 3) / 2)
        for role, img, mask, out in (("gen", p.generated, p.generated_mask, gens), ("train", p.train, p.train_mask, trains)):
            if (role == "gen" and i >= n_gen) or (role == "train" and i >= n_train):
                continue
            name = f"{role}_{i}"
            Image.fromarray(to_uint8(img)).save(root / f"{name}.png")
            Image.fromarray(to_uint8(mask)).save(root / f"{name}.mask.png")
            out.append(name)
    return gens, trains


def load_files(root: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    with Image.open(root / f"{name}.png") as im, Image.open(root / f"{name}.mask.png") as mk:
        return np.asarray(im.convert("RGB")), np.asarray(mk.convert("L"))


def reference_scores(root: Path, pairs: list[tuple[str, str]], size: int) -> list[tuple[float, float]]:
    """The reference loop: per pair, reopen + resize both images, build RGBA parts, two module calls."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchmetrics.image import MultiScaleStructuralSimilarityIndexMeasure

    out = []
    for g, t in pairs:
        parts = {}
        for key, name in (("gen", g), ("train", t)):
            rgb, mask = load_files(root, name)
            rgb = np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.LANCZOS)).astype(np.float32) / 255
            m = np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.LANCZOS)).astype(np.float32)[..., None] / 255
            fg = np.concatenate([rgb * m, m], -1)
            bg = np.concatenate([rgb * (1 - m) + m, np.ones_like(m)], -1)
            parts[key] = [torch.from_numpy(x).permute(2, 0, 1)[None].contiguous() for x in (fg, bg)]
        scores = []
        for k in range(2):
            metric = MultiScaleStructuralSimilarityIndexMeasure()  # a fresh module per call, as the reference
            scores.append(float(metric(parts["train"][k], parts["gen"][k])))
        out.append((scores[0], scores[1]))
    return out


def batched_scores(root: Path, pairs: list[tuple[str, str]], size: int, metric: Any, device: str) -> list[tuple[float, float]]:
    scorer = PairScorer(metric, size, lambda name: load_files(root, name), device=device)
    rows = scorer.score_batch(pairs)
    return [(r["raw_fg_score"], r["raw_bg_score"]) for r in rows]


def timed(fn: Any, *args: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    result = fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - t0


def speed(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        gens, trains = write_images(root, args.gen, args.train, args.src_size)
        pairs = [(g, t) for g in gens for t in trains]
        for size in args.sizes:
            # warm-up outside the clock: imports, allocator, kernels
            reference_scores(root, pairs[:1], size)
            batched_scores(root, pairs[:1], size, MSSSIMMetric(), args.device)
            # the reference is slow: time it on --ref-pairs of the same pairs, spread over the list (a per-pair rate).
            # Runs alternate reference / batched and the best of --repeats counts (a shared, busy CPU).
            ref_at = np.unique(np.linspace(0, len(pairs) - 1, min(args.ref_pairs, len(pairs))).round().astype(int))
            ref_pairs = [pairs[i] for i in ref_at]
            metrics = [m for m in (MSSSIMMetric(), MaskedMSSSIMMetric()) if m.name in args.metrics]
            best: dict[str, float] = {}
            got: dict[str, Any] = {}
            for _ in range(args.repeats):
                ref, t_ref = timed(reference_scores, root, ref_pairs, size)
                best["reference"] = min(best.get("reference", float("inf")), t_ref)
                for metric in metrics:
                    got[metric.name], t = timed(batched_scores, root, pairs, size, metric, args.device)
                    best[metric.name] = min(best.get(metric.name, float("inf")), t)
            ref_rate = len(ref_pairs) / best["reference"]
            row: dict[str, Any] = {
                "size": size,
                "pairs": len(pairs),
                "gen": len(gens),
                "train": len(trains),
                "pairs_per_image": round(len(pairs) / (len(gens) + len(trains)), 2),
                "reference_pairs": len(ref_pairs),
                "reference_pair_index": ref_at.tolist(),
                "repeats": args.repeats,
                "reference_s": round(best["reference"], 3),
                "reference_pairs_per_s": round(ref_rate, 3),
            }
            for metric in metrics:
                t = best[metric.name]
                row[f"{metric.name}_s"] = round(t, 3)
                row[f"{metric.name}_pairs_per_s"] = round(len(pairs) / t, 3)
                row[f"{metric.name}_speedup"] = round(len(pairs) / t / ref_rate, 2)
            if "msssim" in got:  # the paper preset's scores on the reference's pairs
                diff = np.abs(np.array([got["msssim"][i] for i in ref_at]) - np.array(ref))
                row["max_abs_diff_vs_reference"] = float(diff.max())
            print(json.dumps(row))
            out.append(row)
    return out


def planted_quality(args: argparse.Namespace) -> dict[str, Any]:
    from fbmem_data.segment.saliency import SaliencySegmenter

    size = args.planted_size
    seg = SaliencySegmenter()
    metrics = {"paper (msssim)": MSSSIMMetric(), "msssim-masked": MaskedMSSSIMMetric()}
    records: dict[str, dict[str, list[tuple[str, str]]]] = {m: {"exact": [], "saliency": []} for m in metrics}
    for seed in range(args.planted_seeds):
        for truth in LABELS:
            for area in (0.12, 0.35):
                p = planted_pair(1000 + seed, truth, size, area, noise=0.02 if truth == "VM" else 0.0)
                imgs = [to_uint8(p.generated), to_uint8(p.train)]
                sal = seg.segment(imgs)
                for source, masks in (("exact", [p.generated_mask, p.train_mask]), ("saliency", sal)):
                    batch = region_batch(imgs, [to_uint8(m) for m in masks], size, args.device)
                    from fbmem_data.fbmem.composition import apply_rules, degenerate_rules

                    rules = degenerate_rules(batch.fg[:1], batch.bg[:1])
                    for name, metric in metrics.items():
                        state = metric.prepare(batch)
                        f, b = metric.score(state, torch.tensor([0], device=args.device), state, torch.tensor([1], device=args.device))
                        f, b = apply_rules(f, b, rules)
                        records[name][source].append((truth, label_of(float(f[0]), float(b[0]))))
    summary: dict[str, Any] = {"size": size, "cases_per_label": 2 * args.planted_seeds, "tau": 0.8}
    for name, by_source in records.items():
        for source, rec in by_source.items():
            summary[f"{name} / {source} masks"] = precision_recall(rec)
    return summary


def precision_recall(records: list[tuple[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {"accuracy": round(sum(t == p for t, p in records) / len(records), 3)}
    for label in LABELS:
        tp = sum(t == label and p == label for t, p in records)
        n_pred = sum(p == label for _, p in records)
        n_true = sum(t == label for t, _ in records)
        out[label] = {"precision": round(tp / n_pred, 3) if n_pred else None, "recall": round(tp / n_true, 3) if n_true else None}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--gen", type=int, default=8)
    parser.add_argument("--train", type=int, default=16)
    parser.add_argument("--ref-pairs", type=int, default=16, help="pairs the reference loop is timed on")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs; the best time of each side counts")
    parser.add_argument("--src-size", type=int, default=600, help="side of the stored planted images (resized per run)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, for both sides")
    parser.add_argument("--metrics", nargs="+", choices=["msssim", "msssim-masked"], default=["msssim", "msssim-masked"],
                        help="batched metrics timed (msssim: the paper preset, the one compared with the reference)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--planted-seeds", type=int, default=10)
    parser.add_argument("--planted-size", type=int, default=512)
    parser.add_argument("--skip-planted", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__, "threads": args.threads, "device": args.device},
        "speed": speed(args),
    }
    if not args.skip_planted:
        result["planted"] = planted_quality(args)
        print(json.dumps(result["planted"], indent=1))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    name = "scorer_cpu.json" if args.device == "cpu" else f"scorer_{args.device.split(':')[0]}.json"
    path = RESULTS_DIR / name
    if args.skip_planted and path.exists():  # keep the last planted-truth section (it does not depend on speed)
        previous = json.loads(path.read_text())
        if "planted" in previous:
            result["planted"] = previous["planted"]
    path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
