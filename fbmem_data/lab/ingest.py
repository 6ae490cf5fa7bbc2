"""Write the lab data set into a workspace like any ingested data, plus its planted truth.

Rows: `images` (role train, status ok, bytes in the image store), `prompts` (sets lab-memorized,
lab-unique and lab-control), `train_links` (relation lab), `lab_truth` (planted group per prompt) and `lab_masks` (the
exact masks). Every id is derived from content or from (seed, key), so writing the same seed twice
adds nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from fbmem_data.ids import canonical_json, prompt_id
from fbmem_data.lab.dataset import IMAGE_SIZE, LabConfig, LabDataset
from fbmem_data.runs import recorded
from fbmem_data.workspace import Workspace


def lab_prompt_id(dataset: LabDataset, key: str, text: str, prompt_set: str) -> str:
    return prompt_id(prompt_set, f"lab-seed{dataset.config.seed}:{key}", text)


def _dataset_run_config(args: dict[str, Any]) -> dict[str, Any]:
    """{"seed": N} for v1's layout (the config runs have always recorded); the whole LabConfig otherwise."""
    config = args["dataset"].config
    if dataclasses.replace(config, seed=0) == LabConfig():
        return {"seed": config.seed}
    return {"seed": config.seed, "lab_config": dataclasses.asdict(config)}


@recorded("lab dataset", _dataset_run_config)
def write_lab_dataset(ws: Workspace, dataset: LabDataset, run_id: str | None = None) -> dict[str, Any]:
    """Store the images and write every lab row; returns counts of rows written (0 on a re-run)."""
    now = dt.datetime.now(dt.timezone.utc)
    seed = dataset.config.seed
    image_ids: dict[str, str] = {}
    image_rows, mask_rows = [], []
    for key, image in dataset.images.items():
        data = image.png_bytes()
        image_id, path = ws.store_image(data, "png")
        image_ids[key] = image_id
        image_rows.append({
            "image_id": image_id, "role": "train", "source_uri": f"fbmem-lab://seed{seed}/{key}",
            "store_path": str(path.relative_to(ws.root)), "width": IMAGE_SIZE, "height": IMAGE_SIZE,
            "mode": "RGB", "format": "PNG", "n_bytes": len(data), "status": "ok", "error": None,
            "ingested_at": now, "run_id": run_id,
        })
        mask_rows.append({
            "image_id": image_id, "image_key": key, "dataset_seed": seed, "mask": image.mask_png_bytes(),
            "fg_fraction": float(image.mask.mean()), "spec": canonical_json(image.spec), "run_id": run_id,
        })
    prompt_rows, link_rows, truth_rows = [], [], []
    for prompt in dataset.prompts:
        pid = lab_prompt_id(dataset, prompt.key, prompt.text, prompt.prompt_set)
        prompt_rows.append({
            "prompt_id": pid, "prompt_set": prompt.prompt_set, "text": prompt.text,
            "source_key": f"lab-seed{seed}:{prompt.key}", "source_index": None, "url": None,
            "memorization_type": {"VM": "VM", "template": "TM"}.get(prompt.group),
            "extra": canonical_json({"planted_group": prompt.group, "group_key": prompt.key}),
            "source_file": None, "ingested_at": now,
        })
        ids = [image_ids[k] for k in prompt.image_keys]
        link_rows.extend({"image_id": i, "prompt_id": pid, "relation": "lab", "run_id": run_id} for i in dict.fromkeys(ids))
        truth_rows.append({
            "prompt_id": pid, "planted_group": prompt.group, "group_key": prompt.key,
            "prompt_set": prompt.prompt_set, "dataset_seed": seed, "train_image_ids": ids,
            "repeats": prompt.repeats, "run_id": run_id,
        })
    # Duplicate image bytes (two keys drawing the same pixels) share one images row.
    image_rows = list({r["image_id"]: r for r in image_rows}.values())
    mask_rows = list({r["image_id"]: r for r in mask_rows}.values())
    return {
        "images": ws.write("images", image_rows),
        "lab_masks": ws.write("lab_masks", mask_rows),
        "prompts": ws.write("prompts", prompt_rows),
        "train_links": ws.write("train_links", link_rows),
        "lab_truth": ws.write("lab_truth", truth_rows),
    }
