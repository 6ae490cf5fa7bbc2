"""Evidence for tools outside fbmem: the `fbmem_evidence` view as CSV, as an HF `datasets` Parquet with the
images in it, and as a FiftyOne image-classification directory.

All three read the same view, so a label, its scores and its scoring id agree between them and with
`fbmem labels`. No optional package is needed to write them; `datasets` / `fiftyone` read them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fbmem_data.errors import InputError

if TYPE_CHECKING:
    import pyarrow as pa

    from fbmem_data.workspace import Workspace

LABELS = ("VM", "BM", "FM", "NM")
IMAGE_COLUMNS = {"generated_path": "generated_image", "matched_path": "matched_image"}


def evidence(ws: Workspace, tau: float = 0.8, scoring_id: str | None = None) -> pa.Table:
    """The `fbmem_evidence` view: one row per labelled generation, image paths absolute."""
    params: dict[str, object] = {"tau": tau}
    if scoring_id is not None:
        params["scoring_id"] = scoring_id
    return ws.sql("SELECT * FROM fbmem_evidence", params)


def _fresh_dir(out: Path) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} exists and is not an empty directory", hint="give a new directory with -o")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _require_rows(table: pa.Table) -> None:
    if table.num_rows == 0:
        raise InputError(
            "no labelled generations to export", hint="run fbmem score first (fbmem labels shows them)"
        )


def _hf_value(arrow_type: Any) -> dict[str, str]:
    import pyarrow as pa

    if pa.types.is_floating(arrow_type):
        dtype = "float64" if arrow_type.bit_width == 64 else "float32"
    elif pa.types.is_integer(arrow_type):
        dtype = str(arrow_type)  # int64, int32, ...
    elif pa.types.is_boolean(arrow_type):
        dtype = "bool"
    else:
        dtype = "string"
    return {"dtype": dtype, "_type": "Value"}


def export_hf(ws: Workspace, out: Path, tau: float = 0.8, scoring_id: str | None = None) -> dict[str, Any]:
    """Write `out/data/train-00000-of-00001.parquet`: the evidence columns plus `generated_image` and
    `matched_image` as HF Image features (the image bytes inside the file), so that
    `datasets.load_dataset("parquet", data_dir=out / "data")` or `load_dataset(str(out))` decodes them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = evidence(ws, tau, scoring_id)
    _require_rows(table)
    out = _fresh_dir(out)
    columns: dict[str, Any] = {}
    features: dict[str, Any] = {}
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_null(col.type) or pa.types.is_large_string(col.type):
            col = col.cast(pa.string())  # an all-NULL column still has a type datasets knows
        columns[name] = col
        features[name] = _hf_value(col.type)
    for path_col, image_col in IMAGE_COLUMNS.items():
        values = []
        for path in table.column(path_col).to_pylist():
            values.append(
                None if path is None else {"bytes": Path(path).read_bytes(), "path": Path(path).name}
            )
        columns[image_col] = pa.array(values, image_type)
        features[image_col] = {"_type": "Image"}
    result = pa.table(columns)
    # The schema metadata `datasets` writes and reads: it turns the two structs back into images.
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    result = result.replace_schema_metadata(meta)
    (out / "data").mkdir()
    target = out / "data" / "train-00000-of-00001.parquet"
    pq.write_table(result, target)
    return {"rows": result.num_rows, "file": str(target)}


#: Pixel value of the foreground in the exported segmentation masks (FiftyOne's mask target for it).
MASK_FOREGROUND = 255


def _binary_mask_png(mask_png: bytes) -> bytes:
    """A stored soft mask (PNG, 0..255) as a segmentation PNG: 255 where the mask is >= 128, else 0 (the
    threshold the report's outlines use); FiftyOne reads pixel values as classes, so soft values cannot stay."""
    import cv2
    import numpy as np

    from fbmem_data.fbmem.images import decode_mask

    binary = np.where(decode_mask(mask_png) >= 128, MASK_FOREGROUND, 0).astype(np.uint8)
    ok, buf = cv2.imencode(".png", binary)
    if not ok:  # pragma: no cover - encoding a uint8 2-D array does not fail
        raise InputError("could not encode a mask as PNG")
    return buf.tobytes()


def export_fiftyone(
    ws: Workspace, out: Path, tau: float = 0.8, scoring_id: str | None = None
) -> dict[str, Any]:
    """Write a directory FiftyOne reads two ways.

    - FiftyOne's image-classification layout (`fo.types.FiftyOneImageClassificationDataset`):
      `data/<generated_image_id>.<ext>` (copies) and `labels.json` ({"classes": [VM, BM, FM, NM],
      "labels": {image id: class index}});
    - everything else for `load_fiftyone(out)`: `matched/<train_image_id>.<ext>` (the best matches),
      `masks/<image_id>.png` (the foreground masks of the scoring's segmenter, generated and matched
      images, as 0/255 segmentations) and `evidence.csv`, the view with `generated_file`, `matched_file`,
      `generated_mask` and `matched_mask` (paths relative to `out`; empty where there is none).

    Returns:
        {"rows": generations, "images": generated images (samples), "masks": mask files, "dir": out}.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from fbmem_data.cli.output import csv_table

    table = evidence(ws, tau, scoring_id)
    _require_rows(table)
    params: dict[str, object] = {"tau": tau}
    if scoring_id is not None:
        params["scoring_id"] = scoring_id
    mask_rows = ws.sql("SELECT image_id, mask FROM report_masks", params).to_pydict()
    masks = dict(zip(mask_rows["image_id"], mask_rows["mask"], strict=True))
    out = _fresh_dir(out)
    for sub in ("data", "matched", "masks"):
        (out / sub).mkdir()
    labels: dict[str, int] = {}
    written: dict[str, str | None] = {}  # image id -> file relative to out (None: no bytes stored)
    mask_files: dict[str, str | None] = {}

    def copy(image_id: str | None, path: str | None, sub: str) -> str | None:
        if image_id is None or path is None:
            return None
        if image_id not in written:
            src = Path(path)
            written[image_id] = f"{sub}/{image_id}{src.suffix}"
            shutil.copyfile(src, out / written[image_id])
        return written[image_id]

    def mask_file(image_id: str | None) -> str | None:
        if image_id is None or image_id not in masks:
            return None  # whole-image scorings have no masks
        if image_id not in mask_files:
            mask_files[image_id] = f"masks/{image_id}.png"
            (out / mask_files[image_id]).write_bytes(_binary_mask_png(masks[image_id]))
        return mask_files[image_id]

    extra: dict[str, list[str | None]] = {
        "generated_file": [],
        "matched_file": [],
        "generated_mask": [],
        "matched_mask": [],
    }
    for row in table.select(
        ["generated_image_id", "generated_path", "matched_image_id", "matched_path", "label"]
    ).to_pylist():
        gen, match = row["generated_image_id"], row["matched_image_id"]
        extra["generated_file"].append(copy(gen, row["generated_path"], "data"))
        extra["matched_file"].append(copy(match, row["matched_path"], "matched"))
        extra["generated_mask"].append(mask_file(gen))
        extra["matched_mask"].append(mask_file(match))
        if extra["generated_file"][-1] is not None and gen not in labels:
            # one sample per image: several generations of the same bytes share its file and label
            labels[gen] = LABELS.index(row["label"])
    (out / "labels.json").write_text(json.dumps({"classes": list(LABELS), "labels": labels}, indent=1))
    for name, values in extra.items():
        table = table.append_column(name, pa.array(values, pa.string()))
    pacsv.write_csv(csv_table(table), out / "evidence.csv")
    return {"rows": table.num_rows, "images": len(labels), "masks": len(mask_files), "dir": str(out)}


#: evidence.csv columns load_fiftyone reads as numbers (the rest stay strings).
_FLOAT_FIELDS = ("fg_score", "bg_score", "pair_score", "tau", "guidance")
_INT_FIELDS = ("seed", "steps")
_STRING_FIELDS = (
    "generation_id",
    "prompt_id",
    "prompt_text",
    "prompt_set",
    "memorization_type",
    "model_id",
    "mitigation",
    "mitigation_params",
    "matched_image_id",
    "matched_source_uri",
    "degenerate_rule",
    "scoring_id",
)


def fiftyone_samples(directory: Path) -> list[Any]:
    """The `fo.Sample`s of an `export_fiftyone` directory (no database needed): one per generated image
    with `ground_truth` (Classification: VM/BM/FM/NM), `foreground` (Segmentation, 255 = foreground; absent
    for a whole-image scoring), the scores, prompt and settings as fields, and the best match as
    `matched_filepath` (+ `matched_mask_path`).

    Raises:
        InputError: fiftyone is not installed, or the directory is not an fbmem FiftyOne export.
    """
    import csv

    try:
        import fiftyone as fo
    except ImportError as exc:
        raise InputError("fiftyone is not installed", hint="pip install 'fbmem[fiftyone]'") from exc
    root = Path(directory).resolve()
    table = root / "evidence.csv"
    if not table.is_file() or not (root / "labels.json").is_file():
        raise InputError(
            f"{root} is not an `fbmem export fiftyone` directory (no evidence.csv / labels.json)"
        )
    samples = []
    seen: set[str] = set()
    with table.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if not row.get("generated_file") or row["generated_image_id"] in seen:
                continue  # the first generation of an image is its sample, as labels.json
            seen.add(row["generated_image_id"])
            sample = fo.Sample(filepath=str(root / row["generated_file"]))
            sample["ground_truth"] = fo.Classification(label=row["label"])
            if row.get("generated_mask"):
                sample["foreground"] = fo.Segmentation(mask_path=str(root / row["generated_mask"]))
            for key in _FLOAT_FIELDS:
                sample[key] = float(row[key]) if row.get(key) else None
            for key in _INT_FIELDS:
                sample[key] = int(row[key]) if row.get(key) else None
            for key in _STRING_FIELDS:
                sample[key] = row.get(key) or None
            sample["matched_filepath"] = str(root / row["matched_file"]) if row.get("matched_file") else None
            sample["matched_mask_path"] = str(root / row["matched_mask"]) if row.get("matched_mask") else None
            samples.append(sample)
    return samples


def load_fiftyone(directory: Path, name: str | None = None, *, overwrite: bool = False) -> Any:
    """A FiftyOne dataset of `fiftyone_samples(directory)`, with the mask target 255 = "foreground".
    Needs `fiftyone` (`pip install 'fbmem[fiftyone]'`) and its database (FiftyOne starts a bundled MongoDB).

    Args:
        directory: the export directory.
        name: the dataset name (default: FiftyOne picks one); overwrite: replace a dataset of that name.

    Raises:
        InputError: fiftyone is not installed, or the directory is not an fbmem FiftyOne export.
    """
    samples = fiftyone_samples(directory)
    import fiftyone as fo

    dataset = fo.Dataset(name, overwrite=overwrite)
    dataset.add_samples(samples)
    dataset.mask_targets = {"foreground": {MASK_FOREGROUND: "foreground"}}
    dataset.save()
    return dataset
