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


@pytest.mark.slow  # ~60 s on a 2-core CPU
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
    assert result.config["guidance"] == 7.0  # the scale the pipeline carries (a default LabModelConfig: 7.0)
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
    # the exact paper preset and the default are scored on the same generations and pairs and printed beside
    # the main scoring (paper-clean)
    for preset in ("paper", "default"):
        assert sum(r["n"] for r in result.extra_confusions[preset].to_pylist()) == 4
        assert result.scoring_ids[preset] in text
    assert "paper-clean (main)" in text and "main scoring: scoring" in text
    # re-running on the same workspace adds nothing
    again = run_demo(workspace, cfg, model=model, segmenter_options={"weights": str(seg_path)},
                     nemo_neurons=neurons, log=None)
    assert again.counts["generations"] == 4 + 2 * 4 and again.counts["region_scores"] == result.counts["region_scores"]


@pytest.mark.slow  # ~57 s a model on a 2-core CPU
@pytest.mark.skipif(not SHIPPED, reason="data/lab/ does not ship the trained lab model and segmenter")
@pytest.mark.parametrize("model", ["lab-v2", "lab"])
def test_quick_demo_with_shipped_weights(workspace, model: str) -> None:
    from fbmem_data.lab.pipeline import lab_weights_dir, read_weights_info

    result = run_demo(workspace, DemoConfig.quick(), model=model, log=None)
    # the demo generates at the model's own guidance scale (v2: 2.0, v1.3: the reference 7.0) and records it
    guidance = read_weights_info(lab_weights_dir(model)).model.guidance
    assert guidance == {"lab-v2": 2.0, "lab": 7.0}[model] and result.config["guidance"] == guidance
    used = workspace.sql("SELECT DISTINCT guidance FROM generations").column("guidance").to_pylist()
    assert used == [guidance]
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


def test_segmenter_training_uses_every_redraw_once_and_resumes_from_weights(tmp_path: Path) -> None:
    from fbmem_data.lab.segmenter import train_segmenter

    calls: list[tuple[str, int]] = []

    def invert(pixels: np.ndarray) -> np.ndarray:
        calls.append(("invert", len(pixels)))
        return 255 - pixels

    def darken(pixels: np.ndarray) -> np.ndarray:
        calls.append(("darken", len(pixels)))
        return pixels // 2

    first = tmp_path / "a.safetensors"
    train_segmenter(first, seed=0, n_random=6, steps=1, batch=2, widths=(8, 8, 8, 8), log=None)
    second = tmp_path / "b.safetensors"
    meta = train_segmenter(second, seed=0, n_random=6, steps=2, batch=2, widths=(8, 8, 8, 8), redraws=[invert, darken],
                           init_weights=first, log=None)
    # each redraw is applied once, to the whole pool, not per step
    assert calls == [("invert", 6), ("darken", 6)]
    assert meta["redraws"] == ["invert", "darken"] and meta["clean_share"] == 0.34 and meta["init_weights"] is True


def test_redraws_keep_shape_dtype_and_layout() -> None:
    from fbmem_data.lab.segmenter import autoencoder_roundtrip, diffusion_roundtrip, draw_random_images

    pipe = build_lab_pipeline(TINY)
    pipe.set_progress_bar_config(disable=True)
    pixels, _ = draw_random_images(0, 5)
    autoencoded = autoencoder_roundtrip(pipe.vae, latent_noise=0.1)(pixels)
    assert autoencoded.shape == pixels.shape and autoencoded.dtype == np.uint8
    # strength 0: no denoising step, so the diffusion redraw is exactly the autoencoder's (no latent noise)
    plain = autoencoder_roundtrip(pipe.vae, latent_noise=0.0)(pixels)
    assert np.array_equal(diffusion_roundtrip(pipe, strength=(0.0, 0.0))(pixels), plain)
    # some depth: the random UNet changes the images; same seed, same images
    deep = diffusion_roundtrip(pipe, strength=(0.2, 0.4), steps=10, seed=3)
    once, again = deep(pixels), deep(pixels)
    assert once.shape == pixels.shape and once.dtype == np.uint8
    assert np.array_equal(once, again) and not np.array_equal(once, plain)


def test_lab_segmenter_flip_averaging_turns_with_the_image(tmp_path: Path) -> None:
    import json

    from fbmem_data.lab.segmenter import LabSegmenter, draw_random_images, train_segmenter

    path = tmp_path / "segmenter.safetensors"
    train_segmenter(path, seed=0, n_random=4, steps=1, batch=2, widths=(8, 8, 8, 8), log=None)
    assert json.loads(path.with_name("segmenter.json").read_text())["test_time_flips"] is True
    averaged, single = LabSegmenter(path), LabSegmenter(path, flips=False)
    assert averaged.flips and averaged.params() != single.params()  # a different scoring configuration
    # weights are named by content, so retrained (or newly shipped) weights never reuse stored masks
    other = tmp_path / "other.safetensors"
    train_segmenter(other, seed=1, n_random=4, steps=1, batch=2, widths=(8, 8, 8, 8), log=None)
    assert LabSegmenter(other).params()["weights"] != averaged.params()["weights"]
    image = draw_random_images(3, 1)[0][0]
    turned = np.ascontiguousarray(np.rot90(image))
    a, b = averaged.segment([image, turned])
    # averaged over all 8 orientations, the mask of a turned image is the turned mask
    np.testing.assert_allclose(np.rot90(a), b, atol=1e-5)
    s, t = single.segment([image, turned])
    assert not np.allclose(np.rot90(s), t, atol=1e-5)  # a random network alone is not that symmetric


@pytest.mark.slow  # ~27 s on a 2-core CPU
def test_train_lab_segmenter_redraws_with_the_model_in_its_folder(tmp_path: Path) -> None:
    import json
    from dataclasses import asdict

    from fbmem_data.lab.dataset import LabConfig
    from fbmem_data.lab.pipeline import LabWeightsInfo, save_lab_weights
    from fbmem_data.lab.train import train_lab_segmenter

    pipe = build_lab_pipeline(TINY)
    save_lab_weights(tmp_path, pipe.unet, pipe.vae, LabWeightsInfo(model=TINY, dataset_seed=0))
    meta = train_lab_segmenter(tmp_path, steps=1, n_random=4, widths=(8, 8, 8, 8))
    assert meta["redraws"] == ["autoencoder", "diffusion"]
    for key in ("heldout_iou_mean", "heldout_autoencoder_iou_mean", "heldout_diffusion_iou_mean"):
        assert 0.0 <= meta[key] <= 1.0
    assert json.loads((tmp_path / "segmenter.json").read_text())["heldout_diffusion_iou_mean"] == meta["heldout_diffusion_iou_mean"]
    assert meta["lab_config"] == asdict(LabConfig())  # the folder's model was trained on v1's layout
    # a v2 model in the folder: the segmenter learns from v2's data set, the one that model drew from
    v2 = tmp_path / "v2"
    save_lab_weights(v2, pipe.unet, pipe.vae, LabWeightsInfo(model=TINY, dataset_seed=0,
                                                             training={"lab_config": asdict(LabConfig.v2())}))
    assert train_lab_segmenter(v2, steps=1, n_random=4, widths=(8, 8, 8, 8))["lab_config"] == asdict(LabConfig.v2())
    # without a model in the folder: clean drawings only
    alone = train_lab_segmenter(tmp_path / "alone", steps=1, n_random=4, widths=(8, 8, 8, 8))
    assert alone["redraws"] == [] and "heldout_diffusion_iou_mean" not in alone
