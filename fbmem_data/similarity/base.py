"""The region-metric protocol: score generated/training pairs on their foreground and background."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch


@dataclass
class RegionBatch:
    """A batch of images split into parts (see fbmem_data.fbmem.composition).

    fg: Nx4xSxS premultiplied RGBA cut-outs; bg: Nx4xSxS opaque backgrounds painted white;
    mask: Nx1xSxS soft foreground masks. All float32 in [0, 1] on one device.
    """

    fg: torch.Tensor
    bg: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return int(self.fg.shape[0])


def check_pairs(gen_index: torch.Tensor, train_index: torch.Tensor, n_gen: int, n_train: int) -> None:
    """Check pair indexes against the prepared images, so a bad call fails clearly, not deep in torch.

    Raises:
        InputError: the indexes are not 1-D integer tensors of one length, or point outside the images.
    """
    import torch

    from fbmem_data.errors import InputError

    for what, index, n in (("gen_index", gen_index, n_gen), ("train_index", train_index, n_train)):
        if not isinstance(index, torch.Tensor) or index.ndim != 1 or index.dtype not in (torch.int64, torch.int32):
            raise InputError(f"{what} must be a 1-D int64 tensor, got {getattr(index, 'dtype', type(index))}")
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= n):
            raise InputError(f"{what} points outside the {n} prepared images (range {int(index.min())}..{int(index.max())})")
    if len(gen_index) != len(train_index):
        raise InputError(f"gen_index and train_index differ in length ({len(gen_index)} vs {len(train_index)})")


@runtime_checkable
class RegionMetric(Protocol):
    """Similarity of the foreground parts and of the background parts of image pairs: a plug-in of family
    `fbmem.metrics` (see fbmem_data/plugins.py).

    `prepare` does whatever depends on one image only (once per image); `score` does the pair work.
    Scores are in [0, 1] for the built-in metrics (MS-SSIM with ReLU normalisation), 1 = identical.
    Subclassing this Protocol makes a missing method an error at construction.

    Attributes:
        name: the plug-in name it is registered under ("msssim", "msssim-regions", ...).
    """

    name: str = ""

    @abc.abstractmethod
    def prepare(self, batch: RegionBatch) -> Any:
        """Per-image state for `score` (e.g. blurred means and variances at every scale).

        Args:
            batch: the images' parts, on the device the metric is to run on (a metric has no device
                argument: it works where its inputs are).

        Returns:
            Whatever `score` takes, on the same device.

        Raises:
            InputError: images too small for the metric's scales.
        """

    @abc.abstractmethod
    def score(self, gen: Any, gen_index: torch.Tensor, train: Any, train_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores of pairs (gen[gen_index[p]], train[train_index[p]]).

        Args:
            gen, train: states from `prepare`.
            gen_index, train_index: int64 tensors of equal length P.

        Returns:
            (fg_scores, bg_scores): two float tensors of length P, on the device of the states.

        Raises:
            InputError: indexes of different lengths or outside the prepared images (`check_pairs`).
        """

    @abc.abstractmethod
    def params(self) -> dict[str, Any]:
        """Settings that change the scores, never the device.

        Returns:
            A JSON-able dict; it enters the scoring_id, so scores of different settings never mix.
        """
