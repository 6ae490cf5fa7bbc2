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
