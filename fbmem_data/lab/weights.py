"""What `fbmem doctor` checks for the lab: its model and its segmenter, shipped in data/lab/ (registered
under the `fbmem.weights` entry points)."""

from __future__ import annotations

from fbmem_data.doctor.registry import ModelSpec
from fbmem_data.lab.pipeline import default_weights_dir

_HOW_TO_GET = "use a checkout or wheel that ships data/lab/, or train it with `fbmem lab train`"


def lab_model_weights() -> ModelSpec:
    return ModelSpec(
        name="lab-model",
        description="the shipped memorization-lab diffusion model (data/lab/: UNet + VAE + config)",
        commands=("generate --model lab", "nemo on the lab model"),
        kind="folder",
        folder=default_weights_dir,
        required=(("lab_model.json",), ("unet.safetensors",), ("vae.safetensors",)),
        how_to_get=_HOW_TO_GET,
    )


def lab_segmenter_weights() -> ModelSpec:
    return ModelSpec(
        name="lab-segmenter",
        description="the shipped lab segmenter (data/lab/)",
        commands=("segment --segmenter lab",),
        kind="folder",
        folder=default_weights_dir,
        required=(("*segment*.safetensors", "*segment*.pt", "*segment*.pth", "*segment*.onnx"),),
        how_to_get=_HOW_TO_GET,
    )
