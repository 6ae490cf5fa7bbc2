"""NeMo localization cost: batched hypotheses vs the sequential reference, on the same prompts.

For each model and prompt both algorithms run with the same constants (the paper's, with the threshold
described below); the report gives per prompt the UNet calls (batches), latent samples, hypotheses and
wall time, and whether the two neuron sets are identical.

Models:
- tiny-sd: a random-initialised SD-v1.4-shaped pipeline (fbmem_data.testing, 16x16 latents), with the
  cross-attention output projections scaled x30 so that blocking text neurons moves the noise;
- lab: the trained lab model when its weights are installed, else the lab architecture with random
  weights (scaled the same way).

Threshold: on random weights no prompt is memorized, so tau is set per prompt half-way between the
8th and 9th of the 16 initial-selection scores (both stages then do real work). With the trained lab,
tau = mean + 1 std of NeMo's detection score over the lab's control prompts (the paper's calibration).

Run: nice -n 10 .venv/bin/python benchmarks/bench_nemo.py [--prompts 4] [--models tiny-sd,lab] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from fbmem_data.nemo.activations import encode_prompts, layer_activations
from fbmem_data.nemo.detect import NoiseDiffSettings
from fbmem_data.nemo.layers import discover_nemo_layers
from fbmem_data.nemo.localize import (
    LocalizationConfig,
    NoiseDiffEvaluator,
    localize_prompt,
    select_candidates,
)

CONTROL = [f"a {c} {s} on a {b} background" for c in ("red", "blue", "green", "yellow") for s in ("cube", "ball") for b in ("plain", "striped")]
TARGETS = ["a photo of a cat on a sofa", "the no limits business woman podcast", "a watercolor of a lighthouse at dusk",
           "full body zip opening on the front of a bag", "a plate of pasta with basil", "an old map of a harbour"]


def amplify(pipe: Any, factor: float = 30.0) -> None:
    with torch.no_grad():
        for layer in discover_nemo_layers(pipe.unet):
            pipe.unet.get_submodule(layer.name).to_out[0].weight.mul_(factor)


def reference_stats(pipe: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    layers = discover_nemo_layers(pipe.unet)
    acts = layer_activations(layers, encode_prompts(pipe, CONTROL))
    return [a.mean(0) for a in acts], [a.std(0) for a in acts]


def midpoint_tau(pipe: Any, embeds: torch.Tensor, acts: list[torch.Tensor], means: list[torch.Tensor], stds: list[torch.Tensor], config: LocalizationConfig) -> float:
    ev = NoiseDiffEvaluator(pipe.unet, pipe.scheduler, embeds, config.noise)
    sels = [select_candidates(acts, means, stds, t, k) for t, k in config.schedule()]
    scores = sorted(ev.blocked_scores(sels, range(config.noise.n_seeds)))
    return (scores[7] + scores[8]) / 2


def summarise(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "model": name,
        "prompts": rows,
        "median_batch_ratio": statistics.median(r["batch_ratio"] for r in rows),
        "median_wall_ratio": statistics.median(r["wall_ratio"] for r in rows),
        "all_same_neurons": all(r["same_neurons"] for r in rows),
        "per_prompt_mean": {
            alg: {k: statistics.mean(r[alg][k] for r in rows) for k in ("unet_batches", "unet_samples", "hypotheses", "wall_s")}
            for alg in ("sequential", "batched")
        },
    }


def bench_model(name: str, pipe: Any, prompts: list[str], calibrated_tau: float | None, width: int, max_batch: int) -> dict[str, Any]:
    layers = discover_nemo_layers(pipe.unet)
    means, stds = reference_stats(pipe)
    rows = []
    for text in prompts:
        embeds = encode_prompts(pipe, [text])
        acts = [a[0] for a in layer_activations(layers, embeds)]
        config = LocalizationConfig(noise=NoiseDiffSettings(), skip_not_memorized=calibrated_tau is not None)
        tau = calibrated_tau if calibrated_tau is not None else midpoint_tau(pipe, embeds, acts, means, stds, config)
        config = dataclasses.replace(config, tau=tau, seed_filter=config.seed_filter if calibrated_tau is not None else "all")
        result: dict[str, Any] = {"prompt": text, "tau": tau}
        sets = {}
        for algorithm in ("sequential", "batched"):
            started = time.perf_counter()
            res = localize_prompt(pipe.unet, pipe.scheduler, embeds, acts, means, stds, config,
                                  algorithm=algorithm, width=width, max_batch=max_batch)
            result[algorithm] = {
                "status": res.status, "unet_batches": res.counter.batches, "unet_samples": res.counter.samples,
                "hypotheses": res.counter.hypotheses, "wall_s": round(time.perf_counter() - started, 3),
                "n_initial": sum(map(len, res.initial.values())), "n_refined": sum(map(len, res.refined.values())),
            }
            sets[algorithm] = res.refined
        result["same_neurons"] = sets["sequential"] == sets["batched"]
        result["batch_ratio"] = result["sequential"]["unet_batches"] / result["batched"]["unet_batches"]
        result["wall_ratio"] = result["sequential"]["wall_s"] / result["batched"]["wall_s"]
        print(name, json.dumps(result), flush=True)
        rows.append(result)
    return summarise(name, rows)


def rows_from_log(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Per model, the per-prompt lines an earlier (interrupted) run printed: `MODEL {json}`."""
    out: dict[str, list[dict[str, Any]]] = {}
    for line in path.read_text().splitlines():
        name, _, payload = line.partition(" ")
        if payload.startswith("{"):
            out.setdefault(name, []).append(json.loads(payload))
    return out


def lab_pipeline() -> tuple[str, Any, float | None]:
    """(name, pipeline, calibrated tau or None) for the lab model."""
    from fbmem_data.errors import FbmemError
    from fbmem_data.nemo.detect import nemo_detection_scores

    try:
        from fbmem_data.lab.pipeline import load_lab_pipeline

        pipe = load_lab_pipeline()
        scores = torch.tensor(nemo_detection_scores(pipe, CONTROL))
        return "lab", pipe, float(scores.mean() + scores.std())
    except (ImportError, FbmemError):
        from fbmem_data.lab.pipeline import build_lab_pipeline

        pipe = build_lab_pipeline(seed=0)
        amplify(pipe)
        return "lab-random", pipe, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=4, help="prompts per model")
    parser.add_argument("--models", default="tiny-sd,lab", help="comma-separated: tiny-sd, lab")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=160)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--from-log", type=Path, help="also keep the per-prompt lines an earlier run printed")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/nemo.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from fbmem_data.testing.pipelines import tiny_sd_pipeline

    prompts = TARGETS[: args.prompts]
    results = [summarise(name, rows) for name, rows in (rows_from_log(args.from_log) if args.from_log else {}).items()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    report = {
        "benchmark": "nemo localization: batched vs sequential reference",
        "settings": {"n_seeds": 10, "width": args.width, "max_batch": args.max_batch, "threads": args.threads,
                     "device": "cpu (2 cores shared with other jobs)", "torch": torch.__version__, "machine": platform.machine()},
        "results": results,
    }
    for model in models:
        if model == "tiny-sd":
            pipe = tiny_sd_pipeline(seed=0, sample_size=16)
            amplify(pipe)
            name, tau = "tiny-sd", None
        elif model == "lab":
            name, pipe, tau = lab_pipeline()
        else:
            raise SystemExit(f"unknown model {model!r}")
        results.append(bench_model(name, pipe, prompts, tau, args.width, args.max_batch))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")  # after each model: partial runs keep results
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
