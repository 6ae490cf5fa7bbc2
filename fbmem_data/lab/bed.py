"""The `lab` test bed of `fbmem eval` (registered under the `fbmem.beds` entry points).

Generations of the shipped lab model for the planted groups (VM, FM, BM) and for unique and control
prompts (truth NM), with the demo's seeds and prompts and with seeds and prompts the demo never uses.
The generations are cached (they take about a second each on a CPU). The bed is scored with the lab
segmenter at the demo's size, under the demo's lenient rule (FM or VM counts for FM, BM or VM for BM).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from fbmem_data.evaluate.beds import Bed, Case

LAB_STEPS = 20  # the demo's DDIM steps
LAB_GUIDANCE = 7.0
LAB_DEMO_SEEDS = (0,)  # the demo generates seeds 0..3
LAB_NEW_SEEDS = (1000, 1001)  # seeds the demo never uses
LAB_SIZE = 256  # the demo compares lab parts at 256 (64-px images are upsampled either way)
LAB_TARGETS = {"VM": 0.8, "FM": 0.7, "BM": 0.7, "NM": 0.9}


def lab_prompt_plan(small: bool = False) -> list[tuple[str, str, int, bool]]:
    """(prompt key, truth, seed, demo-used) for every lab case: every VM/FM/BM prompt with one demo seed
    and two new seeds; unique and control prompts the demo uses (the first 8 of each) and ones it never
    uses, seed 0 and 1000 respectively."""
    from fbmem_data.lab.dataset import LabConfig

    cfg = LabConfig()
    plan: list[tuple[str, str, int, bool]] = []
    groups = [("vm", cfg.vm_groups, "VM"), ("fm", cfg.fm_groups, "FM"), ("bm", cfg.bm_groups, "BM")]
    for prefix, n, truth in groups:
        for g in range(1 if small else n):
            plan += [(f"{prefix}{g}", truth, s, True) for s in LAB_DEMO_SEEDS[:1]]
            plan += [(f"{prefix}{g}", truth, s, False) for s in LAB_NEW_SEEDS[: 1 if small else 2]]
    n_nm = 1 if small else 5
    plan += [(f"u{i:04d}", "NM", 0, True) for i in range(n_nm)]
    plan += [(f"u{i:04d}", "NM", 1000, False) for i in range(50, 50 + n_nm)]
    plan += [(f"c{i:02d}", "NM", 0, True) for i in range(n_nm)]
    plan += [(f"c{i:02d}", "NM", 1000, False) for i in range(16, 16 + n_nm)]
    return plan


def lab_bed(seed: int = 0, small: bool = False, cache_dir: Path | None = None, device: str = "cpu") -> Bed:
    """Lab generations (seed: offset added to every generation seed; 0 = the documented plan)."""
    from fbmem_data.lab.dataset import make_lab_dataset
    from fbmem_data.lab.pipeline import shipped_dataset_seed

    ds = make_lab_dataset(shipped_dataset_seed())
    prompts = {p.key: p for p in ds.prompts}
    plan = [(k, t, s + seed, d) for k, t, s, d in lab_prompt_plan(small)]
    images = _lab_generations(ds, plan, cache_dir, device)
    train = {key: img.pixels for key, img in ds.images.items()}
    cases = []
    for (key, truth, s, used), rgb in zip(plan, images, strict=True):
        sources = tuple(prompts[key].image_keys) if truth != "NM" else ()
        cases.append(
            Case(
                f"{key}-s{s}",
                rgb,
                truth,
                sources,
                f"{prompts[key].group} prompt, seed {s}" + (" (demo)" if used and seed == 0 else " (new)"),
            )
        )
    return Bed(
        "lab",
        seed,
        train,
        cases,
        segmenter="lab",
        size=LAB_SIZE,
        lenient=True,
        targets=dict(LAB_TARGETS),
        extra={"dataset": ds, "plan": plan},
    )


def _lab_generations(
    ds: Any, plan: list[tuple[str, str, int, bool]], cache_dir: Path | None, device: str
) -> list[np.ndarray]:
    """Generate (or read from the cache) one image per plan entry."""
    from fbmem_data.lab.pipeline import default_weights_dir
    from fbmem_data.lab.source import lab_weights_hash

    revision = lab_weights_hash(Path(default_weights_dir())) or "none"
    texts = {p.key: p.text for p in ds.prompts}
    digest = hashlib.sha256(
        repr((revision, LAB_STEPS, LAB_GUIDANCE, [(texts[k], s) for k, _, s, _ in plan])).encode()
    )
    path = (cache_dir / f"lab-{digest.hexdigest()[:16]}.npz") if cache_dir is not None else None
    if path is not None and path.is_file():
        with np.load(path) as data:
            return list(data["images"])
    from fbmem_data.generate.generator import generate_batch
    from fbmem_data.generate.loading import load_pipeline
    from fbmem_data.generate.planning import GenerationJob
    from fbmem_data.mitigate.none import NoMitigation
    from fbmem_data.mitigate.protocol import GenerationSettings

    loaded = load_pipeline("lab", device=device)
    settings = GenerationSettings(steps=LAB_STEPS, guidance=LAB_GUIDANCE, height=64, width=64)
    jobs = [GenerationJob(f"eval{i}", k, texts[k], s) for i, (k, _, s, _) in enumerate(plan)]
    out: list[np.ndarray] = []
    for start in range(0, len(jobs), 16):
        images, _ = generate_batch(loaded.pipe, NoMitigation(), jobs[start : start + 16], settings)
        out.extend(images)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, images=np.stack(out))
        tmp.replace(path)
    return out


def make_lab_bed(
    seed: int = 0, *, small: bool = False, cache_dir: Path | None = None, device: str = "cpu"
) -> Bed:
    """The `lab` bed's factory."""
    return lab_bed(seed, small=small, cache_dir=cache_dir, device=device)
