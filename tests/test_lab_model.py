"""The lab model: an SD-shaped pipeline that runs offline, trains, saves and loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fbmem_data.errors import ModelNotFoundError
from fbmem_data.lab.dataset import LabConfig, make_lab_dataset
from fbmem_data.lab.pipeline import (
    LabModelConfig,
    LabWeightsInfo,
    build_lab_pipeline,
    load_lab_pipeline,
    read_weights_info,
    save_lab_weights,
)
from fbmem_data.lab.train import TrainConfig, encode_captions, train_autoencoder, train_unet

TINY = LabModelConfig(vae_channels=(16, 16, 16), unet_channels=(16, 32, 32), unet_layers_per_block=1)
TINY_LAB = LabConfig(vm_groups=2, fm_groups=1, fm_images=2, bm_groups=1, bm_images=2, template_groups=0,
                     unique_images=4, control_prompts=1, heldout_images=1)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_pipeline_generates_64px_images_offline() -> None:
    pipe = build_lab_pipeline(TINY)
    out = pipe(["the zorvex painting", "a red circle"], num_inference_steps=2, guidance_scale=5.0,
               generator=torch.Generator().manual_seed(0)).images
    assert [im.size for im in out] == [(64, 64), (64, 64)]
    assert np.asarray(out[0]).std() > 0  # random weights still draw something


def test_pipeline_has_seven_down_and_mid_value_layers() -> None:
    pipe = build_lab_pipeline()
    names = [n for n, _ in pipe.unet.named_modules() if n.endswith("attn2.to_v") and not n.startswith("up_blocks")]
    assert len(names) == 7 and names[-1].startswith("mid_block")


def test_training_embeddings_match_the_pipeline() -> None:
    pipe = build_lab_pipeline(TINY)
    texts = ["the zorvex painting", ""]
    ours = encode_captions(texts, pipe.tokenizer, pipe.text_encoder)
    theirs, _ = pipe.encode_prompt(texts, "cpu", 1, False)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.slow  # ~22 s on a 2-core CPU
def test_tiny_training_lowers_the_loss_and_resumes(tmp_path: Path) -> None:
    ds = make_lab_dataset(0, TINY_LAB)
    cfg = TrainConfig(ae_steps=2, ae_batch=4, unet_steps=40, unet_batch=8, unet_lr=2e-3, warmup_steps=5,
                      checkpoint_every=20, log_every=100)
    vae, model_cfg = train_autoencoder(ds, TINY, cfg, tmp_path / "ckpt", log=None)
    _, _, losses = train_unet(ds, vae, model_cfg, cfg, tmp_path / "ckpt", log=None)
    assert len(losses) == 40
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:5])
    # a longer run resumes at the last checkpoint instead of starting over
    _, _, more = train_unet(ds, vae, model_cfg, TrainConfig(**{**cfg.__dict__, "unet_steps": 45}),
                            tmp_path / "ckpt", log=None)
    assert len(more) == 5


def test_saved_weights_load_back(tmp_path: Path) -> None:
    pipe = build_lab_pipeline(TINY)
    save_lab_weights(tmp_path, pipe.unet, pipe.vae, LabWeightsInfo(model=TINY, dataset_seed=3))
    loaded = load_lab_pipeline(tmp_path)
    key = "conv_in.weight"
    torch.testing.assert_close(loaded.unet.state_dict()[key], pipe.unet.state_dict()[key].half().float())


def test_missing_weights_raise_model_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"unet\.safetensors"):
        load_lab_pipeline(tmp_path)


def test_zero_terminal_snr_scheduler_leaves_no_signal_in_x_t() -> None:
    from dataclasses import replace

    from fbmem_data.lab.pipeline import build_scheduler

    plain = build_scheduler(TINY)
    zero = build_scheduler(replace(TINY, prediction_type="v_prediction", zero_terminal_snr=True))
    assert float(plain.alphas_cumprod[-1]) > 1e-3  # SD's schedule: sqrt(alpha_T) = 0.068
    assert float(zero.alphas_cumprod[-1]) < 1e-6
    zero.set_timesteps(10)
    assert int(zero.timesteps[0]) == 999  # "trailing": sampling starts at the pure-noise step


@pytest.mark.slow  # ~25 s on a 2-core CPU
def test_v_prediction_fine_tune_starts_from_the_given_weights_and_learns(tmp_path: Path) -> None:
    from dataclasses import replace

    from fbmem_data.lab.train import train_lab

    ds_cfg = TrainConfig(ae_steps=2, ae_batch=4, unet_steps=1, unet_batch=4, warmup_steps=1, log_every=100)
    base = tmp_path / "base"
    train_lab(base, tmp_path / "ckpt-base", ds_cfg, TINY, TINY_LAB, log=None)
    model = replace(TINY, prediction_type="v_prediction", zero_terminal_snr=True)
    cfg = TrainConfig(unet_steps=30, unet_batch=8, unet_lr=2e-3, warmup_steps=3, log_every=100, init_from=str(base))
    ds = make_lab_dataset(0, TINY_LAB)
    base_pipe = load_lab_pipeline(base)
    unet, _, _ = train_unet(ds, base_pipe.vae, replace(model, vae_scaling_factor=base_pipe.vae.config.scaling_factor),
                                 replace(cfg, unet_steps=0), tmp_path / "ckpt-0", log=None)
    # zero steps: the UNet is exactly the one fine-tuned from (no autoencoder phase, no re-initialisation)
    key = "conv_in.weight"
    torch.testing.assert_close(unet.state_dict()[key], base_pipe.unet.state_dict()[key])
    summary = train_lab(tmp_path / "tuned", tmp_path / "ckpt-tuned", cfg, model, TINY_LAB, log=None)
    assert summary["final_loss_mean_last_50"] is not None
    tuned = load_lab_pipeline(tmp_path / "tuned")
    assert tuned.scheduler.config.prediction_type == "v_prediction"
    assert tuned.scheduler.config.rescale_betas_zero_snr is True
    vae_key = "encoder.conv_in.weight"
    torch.testing.assert_close(tuned.vae.state_dict()[vae_key], base_pipe.vae.state_dict()[vae_key])
    # the v target is learnable: the loss falls over the fine-tune
    _, _, curve = train_unet(ds, tuned.vae, read_weights_info(tmp_path / "tuned").model, replace(cfg, unet_steps=30),
                             tmp_path / "ckpt-curve", log=None)
    assert np.mean(curve[-8:]) < np.mean(curve[:4])


def test_fine_tune_of_a_folder_without_weights_says_what_is_missing(tmp_path: Path) -> None:
    from fbmem_data.lab.train import train_lab

    with pytest.raises(ModelNotFoundError, match=r"missing lab_model\.json, unet\.safetensors, vae\.safetensors"):
        train_lab(tmp_path / "out", tmp_path / "ckpt", TrainConfig(init_from=str(tmp_path / "nothing")), TINY, TINY_LAB, log=None)


@pytest.mark.slow  # ~130 s on a 2-core CPU
def test_cli_lab_train_then_fine_tune_with_zero_terminal_snr(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fbmem_data.cli.app import build_app

    runner = CliRunner()
    base = ["lab", "train", "--ae-steps", "1", "--unet-steps", "1", "--batch-size", "2", "--segmenter-steps", "0",
            "--no-progress"]
    first = runner.invoke(build_app(), [*base, "--out", str(tmp_path / "v1"), "--checkpoints", str(tmp_path / "c1")])
    assert first.exit_code == 0, first.output
    tuned = runner.invoke(build_app(), [*base, "--out", str(tmp_path / "v2"), "--checkpoints", str(tmp_path / "c2"),
                                        "--init-from", str(tmp_path / "v1"), "--zero-terminal-snr", "--lr", "1e-4"])
    assert tuned.exit_code == 0, tuned.output
    info = read_weights_info(tmp_path / "v2")
    assert info.model.prediction_type == "v_prediction" and info.model.zero_terminal_snr
    assert not info.model.zero_mean_noise  # no signal left in x_T: nothing to centre
    assert info.training["train_config"]["init_from"] == str(tmp_path / "v1")
    assert info.training["train_config"]["unet_lr"] == 1e-4
    # fine-tuning v2 again without a schedule flag keeps its schedule instead of switching back
    again = runner.invoke(build_app(), [*base, "--out", str(tmp_path / "v2b"), "--checkpoints", str(tmp_path / "c2b"),
                                        "--init-from", str(tmp_path / "v2")])
    assert again.exit_code == 0, again.output
    assert read_weights_info(tmp_path / "v2b").model == info.model
    missing = runner.invoke(build_app(), [*base, "--out", str(tmp_path / "v3"), "--checkpoints", str(tmp_path / "c3"),
                                          "--init-from", str(tmp_path / "none")])
    assert isinstance(missing.exception, ModelNotFoundError) and "missing lab_model.json" in str(missing.exception)


@pytest.mark.slow  # ~14 s on a 2-core CPU
def test_stop_at_then_resume_equals_one_uninterrupted_run(tmp_path: Path) -> None:
    from dataclasses import replace

    ds = make_lab_dataset(0, TINY_LAB)
    cfg = TrainConfig(ae_steps=1, ae_batch=4, unet_steps=8, unet_batch=4, unet_lr=2e-3, warmup_steps=2,
                      checkpoint_every=100, log_every=100)
    vae, model_cfg = train_autoencoder(ds, TINY, cfg, tmp_path / "ae", log=None)
    _, whole, _ = train_unet(ds, vae, model_cfg, cfg, tmp_path / "whole", log=None)
    _, _, first = train_unet(ds, vae, model_cfg, replace(cfg, stop_at=3), tmp_path / "split", log=None)
    assert len(first) == 3  # stopped early, and checkpointed there although 3 is no multiple of 100
    _, resumed, rest = train_unet(ds, vae, model_cfg, cfg, tmp_path / "split", log=None)
    assert len(rest) == 5
    # same batches, same learning rates (the schedule spans unet_steps either way), same EMA
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value)
