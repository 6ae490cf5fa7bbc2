"""Cost per pair of the default preset against the paper metric, on the same pairs.

Usage: nice -n 10 .venv/bin/python benchmarks/bench_default_cost.py [--gen 4] [--train 8] [--repeats 2]

Both presets score every gen x train pair of planted 600-px images (with their exact masks) through
`PairScorer.score_batch`, as `fbmem score` does: the paper preset's `msssim` at 512, the default preset's
metric at the default size. Alternating runs, best of `--repeats` per side, one torch thread. Prints
pairs/s of each and the ratio (default seconds per pair / paper seconds per pair).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from fbmem_data.fbmem.scoring import DEFAULT_PRESET, PAPER_PRESET, PairScorer, make_metric
from fbmem_data.testing.scenes import planted_pair, to_uint8


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gen", type=int, default=4)
    parser.add_argument("--train", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    images: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for i in range(max(args.gen, args.train)):
        p = planted_pair(300 + i, "BM" if i % 2 else "FM", 600, 0.12 + 0.1 * (i % 3))
        images[f"g{i}"] = (to_uint8(p.generated), to_uint8(p.generated_mask))
        images[f"t{i}"] = (to_uint8(p.train), to_uint8(p.train_mask))
    pairs = [(f"g{i}", f"t{j}") for i in range(args.gen) for j in range(args.train)]
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, preset in (("paper", PAPER_PRESET), ("default", DEFAULT_PRESET)):
            # a fresh scorer per run: decoding, resizing and per-image work are part of the cost
            scorer = PairScorer(
                make_metric(preset["metric"], preset["metric_options"]), preset["size"], images.__getitem__
            )
            started = time.perf_counter()
            scorer.score_batch(pairs)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - started)
    out = {
        "pairs": len(pairs),
        "paper": {
            "metric": PAPER_PRESET["metric"],
            "size": PAPER_PRESET["size"],
            "pairs_per_s": round(len(pairs) / best["paper"], 3),
        },
        "default": {
            "metric": DEFAULT_PRESET["metric"],
            "options": DEFAULT_PRESET["metric_options"],
            "size": DEFAULT_PRESET["size"],
            "pairs_per_s": round(len(pairs) / best["default"], 3),
        },
        "cost_ratio_default_over_paper": round(best["default"] / best["paper"], 2),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
