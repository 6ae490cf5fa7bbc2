"""The initial noise x_T of generation (a leaf module: generation and the mitigations both use it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def default_image_size(pipe: Any) -> tuple[int, int]:
    """(height, width) the pipeline was trained for: unet sample_size x the VAE's scale factor."""
    size = pipe.unet.config.sample_size
    scale = int(getattr(pipe, "vae_scale_factor", 8))
    if isinstance(size, (list, tuple)):
        return int(size[0]) * scale, int(size[1]) * scale
    return int(size) * scale, int(size) * scale


def initial_latents(pipe: Any, seeds: Sequence[int], height: int, width: int) -> torch.Tensor:
    """x_T per image from its own CPU generator, so an image never depends on its batch or device.

    Returns:
        (B, C, height/f, width/f) on the pipeline's device and dtype, already scaled by the
        scheduler's init_noise_sigma (diffusers scales again by it: DDIM's is 1). Standard normal,
        or made zero-mean, unit-std per channel when the pipeline says `fbmem_initial_noise =
        "zero-mean"` (the lab model does).
    """
    import torch

    scale = int(getattr(pipe, "vae_scale_factor", 8))
    shape = (int(pipe.unet.config.in_channels), height // scale, width // scale)
    noise = torch.stack(
        [
            torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s)), dtype=torch.float32)
            for s in seeds
        ]
    )
    return shape_noise(pipe, noise).to(device=pipe.unet.device, dtype=pipe.unet.dtype)


def shape_noise(pipe: Any, noise: torch.Tensor) -> torch.Tensor:
    """Standard normal (B, C, h, w) noise as the pipeline's sampler expects it: unchanged, or zero-mean
    and unit-std per channel when `pipe.fbmem_initial_noise == "zero-mean"`."""
    if getattr(pipe, "fbmem_initial_noise", "gaussian") == "zero-mean":
        # a model that reads image statistics from x_T's channel means (the lab: LabModelConfig.zero_mean_noise)
        noise = noise - noise.mean(dim=(2, 3), keepdim=True)
        noise = noise / noise.std(dim=(2, 3), keepdim=True)
    return noise
