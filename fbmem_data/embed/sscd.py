"""`sscd`: the copy-detection descriptor of Pizzi et al. (CVPR 2022) from a local TorchScript file.

This is the reference embedder of NeMo's evaluation (sscd_disc_mixup at 320 x 320). The file is
the one facebookresearch/sscd-copy-detection publishes (sscd_disc_mixup.torchscript.pt, about
100 MB); it maps a (N, 3, H, W) batch normalised with ImageNet mean/std to (N, 512) descriptors.
Input: the whole image squashed to size x size ("skew" resize of the SSCD README).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fbmem_data.devices import resolve_device
from fbmem_data.embed.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    as_rgb,
    file_fingerprint,
    resized_batch,
    torch_embed,
)
from fbmem_data.errors import ModelNotFoundError, PluginError

if TYPE_CHECKING:
    from PIL import Image

SSCD_URL = "https://dl.fbaipublicfiles.com/sscd-copy-detection/sscd_disc_mixup.torchscript.pt"
ENV_VAR = "FBMEM_SSCD"  # the default weights path, as `fbmem doctor` checks it
_GET_HINT = f"download it once with `curl -LO {SSCD_URL}` and pass --weights /path/to/sscd_disc_mixup.torchscript.pt"


class SscdEmbedder:
    """SSCD descriptors from a TorchScript file; dim is read from the model (512 for disc_mixup)."""

    name = "sscd"

    def __init__(self, weights: str | Path | None = None, size: int = 320, device: str | None = "auto") -> None:
        import torch

        weights = weights or os.environ.get(ENV_VAR) or None
        if weights is None:
            raise ModelNotFoundError(f"the sscd embedder needs a local TorchScript file (weights=... or ${ENV_VAR})", hint=_GET_HINT)
        self.weights = Path(weights).expanduser()
        if not self.weights.is_file():
            raise ModelNotFoundError(f"SSCD TorchScript file {self.weights} does not exist", hint=_GET_HINT)
        self.device = resolve_device(device)
        self.size = int(size)
        try:
            with warnings.catch_warnings():
                # torch marks TorchScript deprecated; it is still the format SSCD publishes.
                warnings.simplefilter("ignore", FutureWarning)
                self.model = torch.jit.load(str(self.weights), map_location=self.device).eval()
        except (RuntimeError, ValueError) as exc:
            raise PluginError(f"{self.weights} is not a loadable TorchScript file: {exc}", hint=_GET_HINT) from exc
        probe = torch.zeros(1, 3, self.size, self.size, device=self.device)
        with torch.inference_mode():
            out = self.model(probe)
        if out.ndim != 2 or out.shape[0] != 1:
            raise PluginError(f"{self.weights} returns shape {tuple(out.shape)} for one image; expected (1, D)")
        self.dim = int(out.shape[1])
        self._fingerprint = file_fingerprint(self.weights)

    def params(self) -> dict[str, Any]:
        return {"weights": self._fingerprint, "size": self.size, "resize": "squash-bilinear", "norm": "imagenet"}

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        rgb = as_rgb(images)
        if not rgb:
            return np.zeros((0, self.dim), dtype=np.float32)
        return torch_embed(self.model, resized_batch(rgb, self.size, IMAGENET_MEAN, IMAGENET_STD), self.device)
