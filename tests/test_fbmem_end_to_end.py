"""End to end through a workspace: planted images -> masks -> region_scores -> labels, library and CLI."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fbmem_data.cli.app import build_app
from fbmem_data.errors import InputError, ModelNotFoundError
from fbmem_data.fbmem import label_rows, score_pairs, segment_images
from fbmem_data.fbmem.scoring import DEFAULT_PRESET
from fbmem_data.testing.scenes import planted_pair, to_uint8
from fbmem_data.workspace import Workspace

SIZE = 192
CASES = [("VM", 0.12), ("FM", 0.12), ("BM", 0.35), ("NM", 0.12)]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _put(ws: Workspace, arr: np.ndarray | bytes, role: str) -> str:
    if isinstance(arr, bytes):
        data = arr
    else:
        buf = io.BytesIO()
        Image.fromarray(to_uint8(arr)).save(buf, format="PNG")
        data = buf.getvalue()
    image_id, path = ws.store_image(data, "png")
    now = dt.datetime.now(dt.timezone.utc)
    ws.write("images", [{"image_id": image_id, "role": role, "store_path": str(path.relative_to(ws.root)), "status": "ok", "ingested_at": now}])
    return image_id


@pytest.fixture(scope="module")
def planted_ws(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, dict[str, tuple[str, str]], str]:
    """4 generated x 4 training images (+ one undecodable training file), exhaustive candidates."""
    ws = Workspace.init(tmp_path_factory.mktemp("e2e") / "ws")
    truth: dict[str, tuple[str, str]] = {}
    for i, (label, area) in enumerate(CASES):
        p = planted_pair(20 + i, label, SIZE, area)
        truth[_put(ws, p.generated, "generated")] = (label, _put(ws, p.train, "train"))
    broken = _put(ws, b"\x89PNG\r\n\x1a\n not really a png", "train")
    trains = [t for _, t in truth.values()] + [broken]
    ws.write(
        "candidates",
        [{"pairing_id": "P", "generated_image_id": g, "train_image_id": t, "method": "exhaustive"} for g in truth for t in trains],
    )
    return ws, truth, broken


def test_default_preset_labels_planted_truth(planted_ws: tuple[Workspace, dict[str, tuple[str, str]], str]) -> None:
    ws, truth, broken = planted_ws
    summary = score_pairs(ws, size=SIZE, device="cpu", batch_size=3)
    assert summary["pending"] == 20 and summary["ok"] == 16 and summary["error"] == 4
    assert summary["config"]["metric"]["metric"] == DEFAULT_PRESET["metric"]
    rows = label_rows(ws).to_pylist()
    assert len(rows) == 4
    for r in rows:
        label, train = truth[r["generated_image_id"]]
        assert r["label"] == label, (label, r)
        assert r["train_image_id"] == train or label == "NM"
    # the undecodable training image: an error mask row and error score rows, never a crash
    mask = ws.sql("SELECT status, error FROM masks WHERE image_id = $i", {"i": broken}).to_pylist()
    assert mask[0]["status"] == "error" and "decode" in mask[0]["error"]
    errors = ws.sql("SELECT count(*) AS n FROM region_scores WHERE status = 'error' AND train_image_id = $i", {"i": broken})
    assert errors.column("n")[0].as_py() == 4
    # resume: nothing left to do, nothing duplicated
    again = score_pairs(ws, size=SIZE, device="cpu")
    assert again["pending"] == 0 and again["scoring_id"] == summary["scoring_id"]
    assert ws.count("region_scores") == 20
    assert segment_images(ws, "saliency", device="cpu")["pending"] == 0


def test_paper_preset_is_one_flag_away(planted_ws: tuple[Workspace, dict[str, tuple[str, str]], str]) -> None:
    ws, truth, _ = planted_ws
    with pytest.raises(ModelNotFoundError, match="BiRefNet"):
        score_pairs(ws, preset="paper", size=SIZE, device="cpu")  # the paper's segmenter needs weights
    summary = score_pairs(ws, preset="paper", segmenter="saliency", size=SIZE, device="cpu")
    assert summary["config"]["metric"]["metric"] == "msssim" and summary["config"]["metric"]["data_range"] is None
    rows = ws.sql("SELECT DISTINCT preset, metric FROM region_scores WHERE scoring_id = $s", {"s": summary["scoring_id"]}).to_pylist()
    assert rows == [{"preset": "custom", "metric": "msssim"}]  # size and segmenter differ from the paper's
    labels_paper = {r["generated_image_id"]: r["label"] for r in label_rows(ws, scoring_id=summary["scoring_id"]).to_pylist()}
    vm = next(g for g, (label, _) in truth.items() if label == "VM")
    assert labels_paper[vm] == "VM"


def test_no_candidates_is_a_clear_error(workspace: Workspace) -> None:
    with pytest.raises(InputError, match="fbmem pair"):
        score_pairs(workspace, size=SIZE, device="cpu")
    with pytest.raises(InputError, match="no candidates"):
        score_pairs(workspace, "missing-pairing", size=SIZE, device="cpu")


def test_cli_segment_score_labels(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    p = planted_pair(40, "VM", SIZE, 0.12)
    g, t = _put(ws, p.generated, "generated"), _put(ws, p.train, "train")
    ws.write("candidates", [{"pairing_id": "P", "generated_image_id": g, "train_image_id": t, "method": "exhaustive"}])
    runner = CliRunner()
    app = build_app()
    out = runner.invoke(app, ["segment", "-w", str(ws.root), "--role", "train", "--device", "cpu", "--batch-size", "2"])
    assert out.exit_code == 0, out.output
    assert "ok=1" in out.output
    out = runner.invoke(app, ["score", "-w", str(ws.root), "--size", str(SIZE), "--metric", "msssim", "-M", "data_range=1.0", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    assert "ok=1" in out.output
    stored = ws.sql("SELECT DISTINCT s.preset, r.config FROM region_scores s JOIN runs r USING (run_id)").to_pylist()
    assert stored[0]["preset"] == "custom" and json.loads(stored[0]["config"])["metric"]["data_range"] == 1.0
    out = runner.invoke(app, ["labels", "-w", str(ws.root), "--tau", "0.8", "-f", "json"])
    assert out.exit_code == 0, out.output
    rates = json.loads(out.output[out.output.index("[") :])
    assert rates[0]["n"] == 1 and rates[0]["vm"] == 1 and rates[0]["tau"] == 0.8
    out = runner.invoke(app, ["labels", "-w", str(ws.root), "--per-image", "-f", "jsonl"])
    assert json.loads(out.output.strip().splitlines()[-1])["label"] == "VM"


def test_score_can_create_exhaustive_candidates(workspace: Workspace) -> None:
    pairing = pytest.importorskip("fbmem_data.pairing")
    if not hasattr(pairing, "pair"):
        pytest.skip("the pairing module has no pair() API")
    p = planted_pair(41, "VM", SIZE, 0.12)
    g, t = _put(workspace, p.generated, "generated"), _put(workspace, p.train, "train")
    summary = score_pairs(workspace, size=SIZE, metric="ssim", device="cpu", create_exhaustive=True)
    assert summary["ok"] == 1
    cands = workspace.sql("SELECT generated_image_id, train_image_id, method FROM candidates").to_pylist()
    assert cands == [{"generated_image_id": g, "train_image_id": t, "method": "exhaustive"}]
