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


def export_fiftyone(
    ws: Workspace, out: Path, tau: float = 0.8, scoring_id: str | None = None
) -> dict[str, Any]:
    """Write FiftyOne's image-classification directory layout (`fo.types.FiftyOneImageClassificationDataset`):
    `data/<generated_image_id>.<ext>` (copies) and `labels.json` ({"classes": [VM, BM, FM, NM], "labels":
    {image id: class index}}), plus `evidence.csv` with every other field per image (prompt, scores, best
    match path) to add as sample fields."""
    import pyarrow.csv as pacsv

    from fbmem_data.cli.output import csv_table

    table = evidence(ws, tau, scoring_id)
    _require_rows(table)
    out = _fresh_dir(out)
    data = out / "data"
    data.mkdir()
    labels: dict[str, int] = {}
    for row in table.select(["generated_image_id", "generated_path", "label"]).to_pylist():
        stem = row["generated_image_id"]
        if stem in labels or row["generated_path"] is None:
            continue  # one file per image: several generations of the same bytes share its label
        src = Path(row["generated_path"])
        shutil.copyfile(src, data / f"{stem}{src.suffix}")
        labels[stem] = LABELS.index(row["label"])
    (out / "labels.json").write_text(json.dumps({"classes": list(LABELS), "labels": labels}, indent=1))
    pacsv.write_csv(csv_table(table), out / "evidence.csv")
    return {"rows": table.num_rows, "images": len(labels), "dir": str(out)}
