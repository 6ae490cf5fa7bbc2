"""fbmem_evidence and `fbmem export csv|hf|fiftyone` on a sample workspace."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fbmem_data.testing.sample_workspace import SampleSpec, write_sample_workspace
from fbmem_data.workspace import Workspace


def _fbmem(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fbmem_data", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = Workspace.init(tmp_path_factory.mktemp("export") / "ws")
    write_sample_workspace(ws, SampleSpec(n_prompts=8, seeds=2, size=32))
    return ws


def test_evidence_view_agrees_with_labels(sample: Workspace) -> None:
    ev = sample.sql("SELECT * FROM fbmem_evidence").to_pylist()
    labels = sample.sql(
        "SELECT generation_id, label, train_image_id, scoring_id FROM fbmem_labels"
    ).to_pylist()
    assert len(ev) == len(labels) == 32
    by_gen = {r["generation_id"]: r for r in labels}
    for row in ev:
        lab = by_gen[row["generation_id"]]
        assert (row["label"], row["matched_image_id"], row["scoring_id"]) == (
            lab["label"],
            lab["train_image_id"],
            lab["scoring_id"],
        )
        for key in ("generated_path", "matched_path"):
            path = Path(row[key])
            assert path.is_absolute() and path.is_file() and path.is_relative_to(sample.root)
        assert row["prompt_text"] and row["prompt_set"] and row["model_id"] and row["seed"] is not None
    # tau moves labels in the view as in fbmem_labels
    strict = sample.sql("SELECT count(*) FILTER (WHERE label = 'NM') AS nm FROM fbmem_evidence", {"tau": 1.0})
    assert strict.column("nm")[0].as_py() == 32


def test_export_csv(sample: Workspace) -> None:
    out = _fbmem("export", "csv", "-w", str(sample.root))
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(rows) == 32 and {r["label"] for r in rows} <= {"VM", "BM", "FM", "NM"}
    assert all(Path(r["generated_path"]).is_file() for r in rows)
    bad = _fbmem("export", "csv", "-w", str(sample.root), "--scoring-id", "nope")
    assert bad.returncode == 1 and bad.stderr.startswith("Error:") and "Traceback" not in bad.stderr


def test_export_fiftyone_layout(sample: Workspace, tmp_path: Path) -> None:
    out = tmp_path / "fo"
    done = _fbmem("export", "fiftyone", "-w", str(sample.root), "-o", str(out))
    assert done.returncode == 0, done.stderr
    spec = json.loads((out / "labels.json").read_text())
    assert spec["classes"] == ["VM", "BM", "FM", "NM"]
    rows = sample.sql("SELECT * FROM fbmem_evidence").to_pylist()
    ev = {r["generated_image_id"]: r["label"] for r in rows}
    assert {k: spec["classes"][v] for k, v in spec["labels"].items()} == ev
    files = sorted(p.stem for p in (out / "data").iterdir())
    assert files == sorted(ev)
    table = list(csv.DictReader((out / "evidence.csv").open()))
    assert len(table) == 32
    # the best match and both masks travel with the export (paths relative to it)
    stored = {
        r["image_id"]: r["mask"] for r in sample.sql("SELECT image_id, mask FROM report_masks").to_pylist()
    }
    for row, view in zip(table, rows, strict=True):
        assert row["generated_image_id"] == view["generated_image_id"]
        assert (out / row["matched_file"]).read_bytes() == Path(view["matched_path"]).read_bytes()
        for image_col, mask_col in (
            ("generated_image_id", "generated_mask"),
            ("matched_image_id", "matched_mask"),
        ):
            mask = np.asarray(Image.open(out / row[mask_col]))
            assert set(np.unique(mask)) <= {0, 255}
            soft = np.asarray(Image.open(io.BytesIO(stored[row[image_col]])))
            assert np.array_equal(mask == 255, soft >= 128)
    assert len(list((out / "masks").iterdir())) == len(
        {r["generated_image_id"] for r in rows} | {r["matched_image_id"] for r in rows}
    )
    again = _fbmem("export", "fiftyone", "-w", str(sample.root), "-o", str(out))
    assert again.returncode == 1 and "not an empty directory" in again.stderr


def _first_generation_per_image(ws: Workspace) -> dict[str, dict]:
    first: dict[str, dict] = {}
    for r in ws.sql("SELECT * FROM fbmem_evidence").to_pylist():
        first.setdefault(r["generated_image_id"], r)
    return first


# fiftyone is not in requirements-dev.txt: it needs opencv-python-headless < 5, which the project pins at 5,
# and its database (a MongoDB fetched from outside PyPI when fiftyone-db builds). These run where a user
# installed `fbmem[fiftyone]`.
NO_FIFTYONE = "fiftyone is not installed (pip install 'fbmem[fiftyone]')"


def test_export_fiftyone_reads_in_fiftyone(sample: Workspace, tmp_path: Path) -> None:
    """FiftyOne's importer and fbmem's samples (no database needed): count, labels, fields, masks."""
    pytest.importorskip("fiftyone", reason=NO_FIFTYONE)
    import fiftyone.utils.data as foud

    from fbmem_data.export import export_fiftyone, fiftyone_samples

    out = tmp_path / "fo"
    export_fiftyone(sample, out)
    first = _first_generation_per_image(sample)
    importer = foud.FiftyOneImageClassificationDatasetImporter(dataset_dir=str(out))
    with importer:
        imported = {Path(path).stem: label.label for path, _, label in importer}
    assert imported == {k: r["label"] for k, r in first.items()}
    samples = fiftyone_samples(out)
    assert len(samples) == len(first)
    for s in samples:
        r = first[Path(s.filepath).stem]
        assert (
            s.ground_truth.label == r["label"] and s.prompt_text == r["prompt_text"] and s.seed == r["seed"]
        )
        assert s.fg_score == pytest.approx(r["fg_score"]) and s.bg_score == pytest.approx(r["bg_score"])
        assert s.matched_image_id == r["matched_image_id"] and Path(s.matched_filepath).is_file()
        mask = s.foreground.get_mask()
        assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 255} and mask.any()


def test_export_fiftyone_loads_as_a_dataset(sample: Workspace, tmp_path: Path) -> None:
    """Where FiftyOne's database starts: `load_fiftyone` gives a dataset with the right samples and labels."""
    fo = pytest.importorskip("fiftyone", reason=NO_FIFTYONE)
    from fbmem_data.export import export_fiftyone, load_fiftyone

    try:
        fo.Dataset().delete()
    except Exception as exc:  # whatever stops FiftyOne's MongoDB, the skip shows why
        pytest.skip(f"FiftyOne's database does not start here: {type(exc).__name__}: {exc}"[:300])
    out = tmp_path / "fo"
    export_fiftyone(sample, out)
    first = _first_generation_per_image(sample)
    ds = load_fiftyone(out)
    try:
        assert len(ds) == len(first)
        assert sorted(ds.values("ground_truth.label")) == sorted(r["label"] for r in first.values())
        assert ds.mask_targets["foreground"] == {255: "foreground"}
        assert ds.count("foreground") == len(first)
    finally:
        ds.delete()


def test_export_hf_loads_in_datasets(sample: Workspace, tmp_path: Path) -> None:
    out = tmp_path / "hf"
    done = _fbmem("export", "hf", "-w", str(sample.root), "-o", str(out))
    assert done.returncode == 0, done.stderr
    import pyarrow.parquet as pq

    table = pq.read_table(out / "data" / "train-00000-of-00001.parquet")
    assert table.num_rows == 32 and b"huggingface" in table.schema.metadata
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_parquet(str(out / "data" / "train-00000-of-00001.parquet"))
    assert isinstance(ds.features["generated_image"], datasets.Image)
    first = ds[0]
    ev = sample.sql("SELECT * FROM fbmem_evidence").to_pylist()[0]
    assert first["generated_image"].size == (32, 32) and first["label"] == ev["label"]
    assert first["fg_score"] == pytest.approx(ev["fg_score"])
