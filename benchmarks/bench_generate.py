"""Images per second of `fbmem generate` against the bare diffusers pipeline, and per-mitigation cost.

Usage: nice -n 10 .venv/bin/python benchmarks/bench_generate.py [--images 16] [--steps 10] [--batch 1 8]
       [--width 32] [--mitigations none rta wen] [--threads 1] [--model tiny|lab]

Runs in one process on the tiny random SD-v1.4-shaped pipeline (fbmem_data.testing; `--width 320` gives
SD v1.4's UNet widths at the same 64x64 size), same prompts and seeds everywhere:
- baseline: the bare pipeline called on batches of `max(--batch)` images (no recording, no PNG);
- `generate()` into a fresh workspace for each --batch value (x_T per image, PNG, Parquet rows per batch);
- `generate()` with each mitigation at the largest batch, as a ratio to `none`.
`--model lab` measures the lab model instead (fbmem_data.lab: the shipped weights when installed, else the
same architecture random-initialised: the speed does not depend on the weights).
Prints images/s and ratios; writes benchmarks/results/generate.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from fbmem_data.generate import generate, wrap_pipeline
from fbmem_data.ids import prompt_id
from fbmem_data.testing import tiny_sd_pipeline
from fbmem_data.workspace import Workspace

RESULTS = Path(__file__).resolve().parent / "results" / "generate.json"
WORDS = ["red", "blue", "green", "cat", "dog", "house", "tree", "lake", "snow", "mat", "car", "bird"]


def prompt_rows(n: int) -> list[dict[str, str]]:
    texts = [f"a {WORDS[i % 12]} {WORDS[(i * 5 + 3) % 12]} by the {WORDS[(i * 7 + 1) % 12]}" for i in range(n)]
    return [{"prompt_id": prompt_id("bench", str(i), t), "prompt_set": "bench", "text": t, "source_key": str(i)} for i, t in enumerate(texts)]


def lab_pipeline() -> tuple[object, str]:
    """(pipeline, weights) of the lab model: shipped weights if installed, else random-initialised."""
    from fbmem_data.errors import ModelNotFoundError
    from fbmem_data.lab.pipeline import build_lab_pipeline, load_lab_pipeline

    try:
        return load_lab_pipeline(), "shipped"
    except ModelNotFoundError:
        return build_lab_pipeline(seed=0), "random-init"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--width", type=int, default=32, help="UNet base width (SD v1.4: 320)")
    parser.add_argument("--mitigations", nargs="+", default=["none", "rta", "wen"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", choices=["tiny", "lab"], default="tiny")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.model == "lab":
        pipe, weights = lab_pipeline()
        loaded = wrap_pipeline(pipe, f"bench-lab-{weights}")
    else:
        pipe, weights = tiny_sd_pipeline(seed=0, width=args.width), "random-init"
        loaded = wrap_pipeline(pipe, f"bench-tiny-w{args.width}")
    settings = {"steps": args.steps, "guidance": 7.0, "height": 64, "width": 64}
    rows = prompt_rows(args.images)
    big = max(args.batch)
    results: dict[str, object] = {
        "machine": platform.machine(), "threads": args.threads, "images": args.images, "steps": args.steps,
        "model": args.model, "weights": weights,
        "unet_width": args.width if args.model == "tiny" else None, "unet_params": sum(p.numel() for p in pipe.unet.parameters()),
    }

    # Baseline: the bare pipeline, same seeds (x_T from per-image CPU generators), no recording.
    from fbmem_data.generate.generator import initial_latents

    start = time.perf_counter()
    for i in range(0, args.images, big):
        chunk = rows[i : i + big]
        pipe(
            prompt=[r["text"] for r in chunk], latents=initial_latents(pipe, list(range(i, i + len(chunk))), 64, 64),
            num_inference_steps=args.steps, guidance_scale=7.0, height=64, width=64, output_type="np",
        )
    base_s = time.perf_counter() - start
    results["baseline_images_per_s"] = args.images / base_s
    print(f"bare pipeline, batch {big}: {args.images / base_s:.2f} img/s")

    for batch in args.batch:
        with tempfile.TemporaryDirectory() as tmp:
            ws = Workspace.init(Path(tmp) / "ws")
            ws.write("prompts", rows)
            start = time.perf_counter()
            generate(ws, loaded, prompt_set="bench", seeds=[0], batch_size=batch, **settings)
            took = time.perf_counter() - start
        results[f"generate_batch{batch}_images_per_s"] = args.images / took
        results[f"generate_batch{batch}_ratio_to_baseline"] = base_s / took
        print(f"generate, batch {batch}: {args.images / took:.2f} img/s ({base_s / took:.2f}x the bare pipeline)")

    per_mitigation: dict[str, float] = {}
    for name in args.mitigations:
        with tempfile.TemporaryDirectory() as tmp:
            ws = Workspace.init(Path(tmp) / "ws")
            ws.write("prompts", rows)
            params = {"wen.target_loss": 0.0} if name == "wen" else {}  # the tiny model's norm is << 3
            start = time.perf_counter()
            generate(ws, loaded, prompt_set="bench", seeds=[0], batch_size=big, mitigations=[name],
                     mitigation_params=params, **settings)
            per_mitigation[name] = time.perf_counter() - start
    for name, took in per_mitigation.items():
        ratio = took / per_mitigation.get("none", took)
        results[f"mitigation_{name}_seconds_per_image"] = took / args.images
        results[f"mitigation_{name}_time_ratio_to_none"] = ratio
        print(f"mitigation {name}: {took / args.images:.3f} s/img ({ratio:.2f}x none)")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
