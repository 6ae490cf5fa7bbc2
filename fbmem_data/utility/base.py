"""The utility-metric protocol: one number per generated image saying how well it shows its prompt.

A mitigation that removes memorization by breaking the image is no mitigation; the paper weighs its
mitigation score against image quality and prompt alignment. A utility metric scores each generated
image against its prompt text; `mitigation_utility` (sql/55_utility.sql) averages it per method.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class UtilityInput:
    """One generated image and the prompt it was generated from."""

    image: np.ndarray  # uint8 HxWx3 RGB
    prompt_text: str
    prompt_id: str = ""


@dataclass(frozen=True)
class UtilityValue:
    """A utility value (higher = the image shows its prompt better), or why there is none.

    value is None exactly when error is set (e.g. a prompt the metric has no reference for).
    """

    value: float | None
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@runtime_checkable
class UtilityMetric(Protocol):
    """A plug-in of family "utility" (see fbmem_data/plugins.py).

    Attributes:
        name: the plug-in name ("lab-colours", "clip", ...).
        metric: what the value measures, for tables and plots (e.g. "CLIP score (ViT-B-32)").
        device: where it computes.
    """

    name: str
    metric: str
    device: str

    def params(self) -> dict[str, Any]:
        """Everything that changes the values (weights fingerprint, thresholds ...), never the device.

        Returns:
            A JSON-able dict; its params_hash keys the stored values, so values of different
            configurations are never mixed.
        """
        ...

    def score(self, items: Sequence[UtilityInput]) -> list[UtilityValue]:
        """Score a batch.

        Args:
            items: generated images with their prompt texts.

        Returns:
            One UtilityValue per item, in order. A per-item problem is a UtilityValue with error
            set, never an exception.

        Raises:
            InputError: the batch itself is malformed (e.g. an image that is not HxWx3 uint8).
        """
        ...


def check_items(items: Sequence[UtilityInput]) -> None:
    """Raise InputError unless every image is HxWx3 uint8."""
    from fbmem_data.errors import InputError

    for i, item in enumerate(items):
        img = item.image
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            shape = getattr(img, "shape", None)
            dtype = getattr(img, "dtype", None)
            raise InputError(f"utility item {i}: expected an HxWx3 uint8 RGB array, got shape {shape} dtype {dtype}")
