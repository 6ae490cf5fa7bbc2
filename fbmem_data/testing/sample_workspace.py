"""A labelled sample workspace for the report's tests and benchmark, written in seconds.

It fills the tables the report reads (prompts, images, generations, masks, region_scores, runs) with
planted scenes from fbmem_data.testing.scenes and scores *drawn* to match each planted truth, so a
10,000-generation workspace is cheap to make. The scores are not computed by the metric: this tests the
report, not FB-Mem.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fbmem_data.ids import params_hash, prompt_id

if TYPE_CHECKING:
    from fbmem_data.workspace import Workspace

TRUTHS = ("VM", "BM", "FM", "NM")
SAMPLE_SEGMENTER = "exact"  # the planted masks themselves
SAMPLE_METRIC = "msssim"


@dataclass(frozen=True)
class SampleSpec:
    """Shape of a sample workspace: generations = prompts x seeds x mitigations."""

    n_prompts: int = 8
    seeds: int = 2
    mitigations: tuple[str, ...] = ("none", "nemo")
    size: int = 64
    k: int = 3
    template_group: int = 4  # prompts of the 'template' set share this many training images
    seed: int = 0
    #: Prompt sets the mitigations other than 'none' run on (None: every set), as the demo runs them on
    #: the memorized prompts only while 'none' covers the controls too.
    mitigated_sets: tuple[str, ...] | None = None
    #: Write a utility value per generation (utility_scores), lower for mitigated and memorized ones.
    utility: bool = False


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    from fbmem_data.testing.scenes import to_uint8

    buf = io.BytesIO()
    Image.fromarray(to_uint8(img)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _scores_for(truth: str, rng: np.random.Generator) -> tuple[float, float]:
    high = lambda: float(rng.uniform(0.82, 0.99))  # noqa: E731
    low = lambda: float(rng.uniform(0.25, 0.72))  # noqa: E731
    fg, bg = {"VM": (high(), high()), "BM": (low(), high()), "FM": (high(), low()), "NM": (low(), low())}[truth]
    return fg, bg


def _mitigated_truth(truth: str, mitigation: str, rng: np.random.Generator) -> str:
    if mitigation == "none" or rng.random() < 0.3:
        return truth
    return {"VM": str(rng.choice(["BM", "FM", "NM"])), "BM": "NM", "FM": "NM", "NM": "NM"}[truth]


def write_sample_workspace(ws: Workspace, spec: SampleSpec = SampleSpec()) -> dict[str, Any]:
    """Write a planted, scored sample into `ws`.

    Prompts cycle through the truths VM, BM, FM, NM; every fourth group of `template_group` prompts is a
    'template' set whose generations best-match different training images by seed (one-to-many).

    Returns:
        {"prompts", "generations", "train_images", "scoring_id"}.
    """
    from fbmem_data.fbmem.images import encode_mask
    from fbmem_data.testing.scenes import planted_pair

    rng = np.random.default_rng(spec.seed)
    now = dt.datetime.now(dt.timezone.utc)
    mask_hash = params_hash({"segmenter": SAMPLE_SEGMENTER, "size": spec.size})
    scoring = {"metric": SAMPLE_METRIC, "size": spec.size, "segmenter": SAMPLE_SEGMENTER, "mask": mask_hash}
    scoring_id = params_hash(scoring)
    prompts: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    masks: list[dict[str, Any]] = []
    generations: list[dict[str, Any]] = []
    scores: list[dict[str, Any]] = []
    train_ids: list[str] = []
    planted: list[tuple[str, int]] = []  # (truth, planted seed) per prompt
    utilities: list[dict[str, Any]] = []

    def add_image(img: np.ndarray, mask: np.ndarray, role: str, run_id: str) -> str:
        data = _png(img)
        image_id, path = ws.store_image(data, "png")
        images.append(
            {"image_id": image_id, "role": role, "source_uri": f"sample:{role}", "store_path": str(path.relative_to(ws.root)),
             "width": spec.size, "height": spec.size, "mode": "RGB", "format": "PNG", "n_bytes": len(data),
             "status": "ok", "ingested_at": now, "run_id": run_id}
        )
        masks.append(
            {"image_id": image_id, "segmenter": SAMPLE_SEGMENTER, "params_hash": mask_hash, "params": None,
             "mask": encode_mask(mask), "height": spec.size, "width": spec.size, "fg_fraction": float(mask.mean()),
             "status": "ok", "error": None, "run_id": run_id}
        )
        return image_id

    with ws.run("report-sample", {"spec": spec.__dict__ | {"mitigations": list(spec.mitigations)}}) as run:
        for i in range(spec.n_prompts):
            truth = TRUTHS[i % len(TRUTHS)]
            template = (i // len(TRUTHS)) % 4 == 3
            pset = "template" if template else ("control" if truth == "NM" else "memorized")
            text = f"sample {truth.lower()} prompt {i}: a textured object on a textured background"
            pid = prompt_id(pset, str(i), text)
            prompts.append({"prompt_id": pid, "prompt_set": pset, "text": text, "source_key": str(i), "ingested_at": now})
            pair = planted_pair(spec.seed * 100_003 + i, truth, size=spec.size)
            train_ids.append(add_image(pair.train, pair.train_mask, "train", run.run_id))
            planted.append((truth, spec.seed * 100_003 + i))
        for i, prompt in enumerate(prompts):
            truth = planted[i][0]
            group = list(range(i - i % spec.template_group, min(i - i % spec.template_group + spec.template_group, len(prompts))))
            for m_index, mitigation in enumerate(spec.mitigations):
                if mitigation != "none" and spec.mitigated_sets is not None and prompt["prompt_set"] not in spec.mitigated_sets:
                    continue
                for s in range(spec.seeds):
                    label = _mitigated_truth(truth, mitigation, rng)
                    # A template prompt's generations copy different training images of its group, by seed.
                    source = group[s % len(group)] if prompt["prompt_set"] == "template" else i
                    pair = planted_pair(planted[source][1], label, size=spec.size, noise=0.02 + 0.01 * s)
                    # Identical scenes would be identical bytes (one image_id): mark the corner pixel.
                    pixel = (i % 256, (i // 256) % 256, (m_index * 16 + s) % 256)
                    pair.generated[0, 0] = np.asarray(pixel, np.float32) / 255
                    gen_id = add_image(pair.generated, pair.generated_mask, "generated", run.run_id)
                    settings = {"prompt_id": prompt["prompt_id"], "model_id": "sample-model", "seed": s, "mitigation": mitigation}
                    generations.append(
                        {"generation_id": params_hash(settings), "image_id": gen_id, "prompt_id": prompt["prompt_id"],
                         "model_id": "sample-model", "seed": s, "steps": 10, "guidance": 7.0, "height": spec.size,
                         "width": spec.size, "mitigation": mitigation,
                         "mitigation_params": None if mitigation == "none" else '{"sample": true}', "run_id": run.run_id}
                    )
                    if spec.utility:
                        base = 0.95 if prompt["prompt_set"] == "control" else 0.7
                        value = base - (0.15 if mitigation != "none" else 0.0) - 0.01 * s - 0.001 * i
                        utilities.append(
                            {"utility_id": "sample-utility", "generated_image_id": gen_id, "prompt_id": prompt["prompt_id"],
                             "plugin": "sample", "metric": "sample utility", "params": "{}", "value": value,
                             "status": "ok", "run_id": run.run_id}
                        )
                    best = train_ids[source]
                    others = [t for t in train_ids if t != best]
                    picks = rng.choice(len(others), size=min(spec.k - 1, len(others)), replace=False)
                    fg, bg = _scores_for(label, rng)
                    ranked = [(best, fg, bg)] + [
                        (others[j], fg * float(rng.uniform(0.5, 0.95)), bg * float(rng.uniform(0.5, 0.95))) for j in picks
                    ]
                    for train_id, f, b in ranked:
                        scores.append(
                            {"scoring_id": scoring_id, "generated_image_id": gen_id, "train_image_id": train_id,
                             "segmenter": SAMPLE_SEGMENTER, "mask_params_hash": mask_hash, "metric": SAMPLE_METRIC,
                             "preset": "custom", "size": spec.size, "fg_score": f, "bg_score": b,
                             "pair_score": 0.5 * f + 0.5 * b, "raw_fg_score": f, "raw_bg_score": b,
                             "degenerate_rule": "none", "status": "ok", "run_id": run.run_id}
                        )
        ws.write("prompts", prompts)
        ws.write("images", images)
        ws.write("masks", masks)
        ws.write("generations", generations)
        ws.write("region_scores", scores)
        if utilities:
            ws.write("utility_scores", utilities)
    return {"prompts": len(prompts), "generations": len(generations), "train_images": len(set(train_ids)), "scoring_id": scoring_id}
