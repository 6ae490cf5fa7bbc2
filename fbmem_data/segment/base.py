"""The segmenter protocol and the input checks every segmenter shares."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fbmem_data.devices import resolve_device  # noqa: F401  (re-exported: the old import path)
from fbmem_data.errors import InputError

ImageBatch = Sequence[np.ndarray]


def as_rgb_float(image: np.ndarray) -> np.ndarray:
    """One image as float32 HxWx3 in [0, 1].

    Args:
        image: HxWx3 array, uint8 (0..255) or float (0..1).

    Raises:
        InputError: wrong rank, channel count, dtype, size, or float values outside [0, 1] / not finite.
    """
    if not isinstance(image, np.ndarray):
        raise InputError(f"a segmenter takes numpy arrays, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"a segmenter takes HxWx3 RGB images, got shape {image.shape}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise InputError(f"image of shape {image.shape} is too small to segment")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all() or image.min() < 0.0 or image.max() > 1.0:
            raise InputError("float images must be finite and in [0, 1]")
        return image.astype(np.float32)
    raise InputError(f"images must be uint8 or float, got {image.dtype}")


def check_batch(images: ImageBatch) -> list[np.ndarray]:
    """Validate a batch (a list of images, or an NxHxWx3 array); return float32 HxWx3 images.

    Raises:
        InputError: the batch is empty or an image is malformed.
    """
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise InputError(f"a batch array must be NxHxWx3, got shape {images.shape}")
        images = list(images)
    if len(images) == 0:
        raise InputError("empty batch: give at least one image")
    return [as_rgb_float(img) for img in images]


@runtime_checkable
class Segmenter(Protocol):
    """A salient-foreground segmenter: a plug-in of family `fbmem.segmenters` (see fbmem_data/plugins.py).

    Implementations set `name` and implement `segment`; subclassing this Protocol also gives them the
    default `params` (and makes a missing `segment` an error at construction). They load weights in their
    constructor (so a missing file fails early with ModelNotFoundError) and must be deterministic for a
    given input.

    Attributes:
        name: the plug-in name it is registered under ("saliency", "birefnet", ...).
        supports_cuda: whether it runs on CUDA when asked (`device="cuda"`).
    """

    name: str = ""
    supports_cuda: bool = False

    @abc.abstractmethod
    def segment(self, images: ImageBatch) -> list[np.ndarray]:
        """Soft foreground masks for a batch of images.

        Args:
            images: HxWx3 RGB images (uint8, or float in [0, 1]); sizes may differ within a batch.

        Returns:
            One float32 HxW mask per image, same height and width as its image, values in [0, 1]
            (1 = foreground). The result for an image does not depend on the rest of the batch.

        Raises:
            InputError: an image is malformed (see `check_batch`).
        """

    def params(self) -> dict[str, Any]:
        """Settings that change the masks, never the device.

        Returns:
            A JSON-able dict whose params_hash keys the `masks` table (default: the segmenter's name).
        """
        return {"segmenter": self.name}
