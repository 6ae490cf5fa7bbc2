"""`fbmem demo`'s code path end to end on a reduced configuration.

With random-initialised tiny weights (always) and with the shipped weights (when data/lab/ has them).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fbmem_data.lab.demo import DemoConfig, format_result, run_demo
from fbmem_data.lab.pipeline import CONFIG_FILE, LabModelConfig, build_lab_pipeline, default_weights_dir

TINY = LabModelConfig(vae_channels=(16, 16, 16), unet_channels=(16, 32, 32), unet_layers_per_block=1)
SHIPPED = (default_weights_dir() / CONFIG_FILE).is_file() and (default_weights_dir() / "segmenter.safetensors").is_file()


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _neurons_csv(path: Path) -> Path:
    """NeMo-format neuron lists for every planted caption, valid for the TINY UNet's widths."""
    from fbmem_data.lab.dataset import make_lab_dataset

    lines = ["Caption;URL;Initial Neurons;Initial SSIM;Refined Neurons;Refined SSIM"]
    planted = [p for p in make_lab_dataset(0).prompts if p.group in ("VM", "FM", "BM", "template")]
    for i, prompt in enumerate(planted):
        refined = [[i % 16], [], [(3 * i) % 32], [], [], [], []]
        lines.append(f"{prompt.text};;{refined};0.5;{refined};0.3")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_demo_path_with_random_weights(workspace, tmp_path: Path) -> None:
    from fbmem_data.generate.loading import wrap_pipeline
    from fbmem_data.lab.segmenter import train_segmenter

    seg_path = tmp_path / "segmenter.safetensors"
    train_segmenter(seg_path, seed=0, n_random=8, steps=1, batch=4, widths=(8, 8, 8, 8), log=None)
    model = wrap_pipeline(build_lab_pipeline(TINY), "lab-tiny-random")
    cfg = replace(DemoConfig.quick(), planted_prompts=2, unique_prompts=1, control_prompts=1, steps=2)
    neurons = _neurons_csv(tmp_path / "nemo_neurons.csv")
    result = run_demo(workspace, cfg, model=model, segmenter_options={"weights": str(seg_path)},
                      nemo_neurons=neurons, log=None)
    # 4 prompts x 1 seed, plus the 2 planted prompts under each of the 4 mitigations
    assert result.counts["generations"] == 4 + 2 * 4
    # the comparison covers the same 2 planted generations for every method
    comparison = {r["method"]: r for r in result.comparison.to_pylist()}
    assert set(comparison) == {"none", "nemo", "nemo-c", "wen", "rta"}
    assert all(r["n"] == 2 for r in comparison.values()), comparison
    assert all(abs(r["vm_rate"] + r["fm_rate"] + r["bm_rate"] + r["nm_rate"] - 1) < 1e-9 for r in comparison.values())
    assert comparison["none"]["mitigation_score"] == 0 and comparison["nemo"]["mean_neurons"] == 2
    assert comparison["nemo-c"]["mean_neurons"] >= 2  # a cluster's union holds at least its prompt's neurons
    assert all(r["utility"] is not None and 0 <= r["utility"] <= 1 for r in comparison.values())
    assert "Mitigations on the planted prompts" in format_result(result)
    assert result.report is not None and result.report.exists()
    assert str(result.report) in format_result(result)
    assert "evidence" in result.report.read_text(encoding="utf-8").lower()
    rows = result.confusion.to_pylist()
    assert sum(r["n"] for r in rows) == 4
    assert {r["planted_group"] for r in rows} <= {"VM", "FM", "BM", "template", "unique", "control"}
    assert all(r["vm"] + r["fm"] + r["bm"] + r["nm"] == r["n"] for r in rows)
    text = format_result(result)
    assert "planted" in text and str(workspace.root) in text
    # re-running on the same workspace adds nothing
    again = run_demo(workspace, cfg, model=model, segmenter_options={"weights": str(seg_path)},
                     nemo_neurons=neurons, log=None)
    assert again.counts["generations"] == 4 + 2 * 4 and again.counts["region_scores"] == result.counts["region_scores"]


@pytest.mark.skipif(not SHIPPED, reason="data/lab/ does not ship the trained lab model and segmenter")
def test_quick_demo_with_shipped_weights(workspace) -> None:
    result = run_demo(workspace, DemoConfig.quick(), log=None)
    rows = {r["planted_group"]: r for r in result.confusion.to_pylist()}
    baseline = workspace.sql("SELECT count(*) AS n FROM generations WHERE mitigation = 'none'").column("n")[0].as_py()
    assert sum(r["n"] for r in rows.values()) == baseline > 0
    assert {"VM", "FM", "BM"} <= set(rows)
    # the mitigation comparison runs with the shipped NeMo neurons: every method on the 3 planted prompts
    comparison = {r["method"]: r for r in result.comparison.to_pylist()}
    assert set(comparison) == {"none", "nemo", "nemo-c", "wen", "rta"} and not result.notes
    assert all(r["n"] == 3 for r in comparison.values())
    assert comparison["nemo"]["mean_neurons"] > 0
    assert comparison["nemo-c"]["mean_neurons"] >= comparison["nemo"]["mean_neurons"]
    # the shipped model memorizes its planted prompts: each generation's best match is one of the
    # prompt's own training images (labels at tau 0.8 are the benchmark's business, docs/lab.md)
    own = workspace.sql("SELECT planted_group, bool_and(matches_own_group) AS own FROM lab_truth_match "
                        "WHERE planted_group IN ('VM', 'FM', 'BM') AND mitigation = 'none' GROUP BY 1", output="polars")
    assert own["own"].to_list() == [True] * 3


def test_segmenter_plugin_contract_shapes(tmp_path: Path) -> None:
    from fbmem_data import plugins
    from fbmem_data.lab.segmenter import train_segmenter
    from fbmem_data.segment import register_builtin_segmenters

    path = tmp_path / "segmenter.safetensors"
    train_segmenter(path, seed=0, n_random=4, steps=1, batch=2, widths=(8, 8, 8, 8), log=None)
    register_builtin_segmenters()
    seg = plugins.create("segmenter", "lab", weights=str(path))
    masks = seg.segment([np.zeros((64, 64, 3), np.uint8), np.full((100, 80, 3), 0.5, np.float32)])
    assert [m.shape for m in masks] == [(64, 64), (100, 80)]
    assert all(m.dtype == np.float32 and m.min() >= 0 and m.max() <= 1 for m in masks)


def test_cli_lab_dataset_writes_the_lab(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fbmem_data.cli.app import build_app
    from fbmem_data.workspace import Workspace

    ws_dir = tmp_path / "ws"
    result = CliRunner().invoke(build_app(), ["lab", "dataset", "-w", str(ws_dir), "--seed", "5"])
    assert result.exit_code == 0, result.output
    assert "lab_truth +" in result.output
    ws = Workspace.open(ws_dir)
    groups = ws.sql("SELECT DISTINCT planted_group FROM lab_truth ORDER BY 1").column(0).to_pylist()
    assert groups == ["BM", "FM", "VM", "control", "template", "unique"]


def test_segmenter_training_uses_the_roundtrip_copies_and_resumes_from_weights(tmp_path: Path) -> None:
    from fbmem_data.lab.segmenter import autoencoder_roundtrip, train_segmenter

    calls: list[int] = []

    def roundtrip(pixels: np.ndarray) -> np.ndarray:
        calls.append(len(pixels))
        return 255 - pixels

    first = tmp_path / "a.safetensors"
    train_segmenter(first, seed=0, n_random=6, steps=1, batch=2, widths=(8, 8, 8, 8), log=None)
    second = tmp_path / "b.safetensors"
    meta = train_segmenter(second, seed=0, n_random=6, steps=2, batch=2, widths=(8, 8, 8, 8), roundtrip=roundtrip,
                           init_weights=first, log=None)
    assert calls == [6] and meta["roundtrip_share"] == 0.5 and meta["init_weights"] is True
    # the lab autoencoder's round trip keeps shape and dtype (tiny random VAE)
    vae = build_lab_pipeline(TINY).vae
    out = autoencoder_roundtrip(vae, latent_noise=0.1)(np.zeros((3, 64, 64, 3), np.uint8))
    assert out.shape == (3, 64, 64, 3) and out.dtype == np.uint8
