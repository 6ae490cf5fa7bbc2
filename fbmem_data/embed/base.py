"""The embedder protocol and the helpers every embedder shares.

An embedder turns a batch of RGB images into one L2-normalised float32 vector each, of a fixed
length. Pairing compares those vectors by cosine similarity (a dot product, since they are unit
length) to choose which training images a generated image is scored against.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from fbmem_data.devices import resolve_device  # noqa: F401  (re-exported: the old import path)
from fbmem_data.errors import InputError

if TYPE_CHECKING:
    import torch
    from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_FINGERPRINT_BLOCK = 1 << 20  # 1 MiB from each end of a weights file


@runtime_checkable
class Embedder(Protocol):
    """A plug-in of family "embedder" (see fbmem_data/plugins.py).

    Attributes:
        name: the plug-in name it is registered under ("thumbnail", "sscd", ...).
        dim: the length of every vector it returns.
        device: where it computes (a torch device string such as "cpu" or "cuda:0").
    """

    name: str
    dim: int
    device: str

    def params(self) -> dict[str, Any]:
        """Everything that changes the vectors (weights fingerprint, input size, ...), never the device.

        Returns:
            A JSON-able dict; fbmem stores params_hash(params) beside each vector so that vectors
            from different configurations are never mixed.
        """
        ...

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed a batch of images.

        Args:
            images: PIL images of any size; modes other than RGB are converted to RGB first.

        Returns:
            float32 array of shape (len(images), dim) whose rows have unit L2 norm.

        Raises:
            InputError: an item is not a PIL image.
        """
        ...


def as_rgb(images: Sequence[Any]) -> list[Image.Image]:
    """Check a batch and convert every image to RGB (palette/LA/RGBA via RGBA, alpha dropped).

    Raises:
        InputError: an item is not a PIL image.
    """
    from PIL import Image

    from fbmem_data.ingest.decode import to_rgb

    out = []
    for i, img in enumerate(images):
        if not isinstance(img, Image.Image):
            raise InputError(f"embedder input #{i} is a {type(img).__name__}, not a PIL image")
        if img.mode != "RGB":
            img = to_rgb(img)  # keeps 16-bit tonal range; palette transparency through RGBA
        out.append(img)
    return out


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as float32. A zero row becomes the constant unit vector,
    so that every returned row has norm 1 (featureless inputs then all match each other)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"expected a 2-d array of vectors, got shape {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    zero = norms[:, 0] <= 1e-12
    out = vectors / np.where(norms > 1e-12, norms, 1.0)
    if zero.any():
        out[zero] = 1.0 / np.sqrt(vectors.shape[1])
    return out.astype(np.float32, copy=False)


def resized_batch(
    images: Sequence[Image.Image], size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Resize every image to size x size (squashed, bilinear with antialias) and normalise:
    the (N, 3, size, size) float32 tensor that CNN embedders take.

    Squashing keeps the whole picture (no centre crop), which suits copy detection: a copy of a
    training image must not lose the part that was copied.
    """
    import torch
    from PIL import Image

    arrays = [np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.float32) for img in images]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (batch - mean_t) / std_t


def file_fingerprint(path: Path) -> str:
    """A cheap identity for a weights file: size plus sha256 of its first and last MiB.

    Hashing whole multi-GB checkpoints on every run would cost seconds; changing a checkpoint
    without changing its size, head or tail is not a realistic accident.
    """
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(_FINGERPRINT_BLOCK))
        if size > 2 * _FINGERPRINT_BLOCK:
            fh.seek(size - _FINGERPRINT_BLOCK)
            digest.update(fh.read(_FINGERPRINT_BLOCK))
    return digest.hexdigest()[:16]


def torch_embed(model: Any, batch: torch.Tensor, device: str) -> np.ndarray:
    """Run a model that maps (N, 3, H, W) to (N, D) without gradients; return unit float32 rows."""
    import torch

    with torch.inference_mode():
        out = model(batch.to(device))
    return l2_normalise(out.float().cpu().numpy())
