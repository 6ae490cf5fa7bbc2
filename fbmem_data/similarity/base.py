"""The region-metric protocol: score generated/training pairs on their foreground and background."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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


class RegionMetric(abc.ABC):
    """Similarity of the foreground parts and of the background parts of image pairs.

    `prepare` does whatever depends on one image only (once per image); `score` does the pair work.
    Scores are in [0, 1] for the built-in metrics (MS-SSIM with ReLU normalisation), 1 = identical.
    """

    name: str = ""

    @abc.abstractmethod
    def prepare(self, batch: RegionBatch) -> Any:
        """Per-image state for `score` (e.g. blurred means and variances at every scale)."""

    @abc.abstractmethod
    def score(self, gen: Any, gen_index: torch.Tensor, train: Any, train_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores of pairs (gen[gen_index[p]], train[train_index[p]]).

        Args:
            gen, train: states from `prepare`.
            gen_index, train_index: int64 tensors of equal length P.

        Returns:
            (fg_scores, bg_scores): two float tensors of length P.
        """

    @abc.abstractmethod
    def params(self) -> dict[str, Any]:
        """Settings that change the scores (part of the scoring_id)."""
