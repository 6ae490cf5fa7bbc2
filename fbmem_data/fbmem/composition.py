"""Foreground/background split of FB-Mem (the paper's method), batched in torch.

Alpha handling (one rule, used everywhere, whether a part is fresh or cached):
- foreground cut-out = the image over transparent black with the soft mask m as alpha, stored as
  premultiplied RGBA: (R·m, G·m, B·m, m). A pixel outside the object is (0, 0, 0, 0).
- background = the image with the foreground painted white, soft-blended by the same mask, opaque:
  (R·(1-m) + m, G·(1-m) + m, B·(1-m) + m, 1).
Both are 4-channel float tensors in [0, 1], which is what MS-SSIM compares.

Degenerate masks are judged on the generated image only: if more than 97% of its background part
is white (grayscale > 0.97) the object fills the frame and the foreground is used for both parts
("fg_both"); else if more than 97% of its foreground part is black (grayscale < 0.03) there is no
object and the background is used for both ("bg_both"). Grayscale = ITU-R 601 luma of the RGB
channels (0.299 R + 0.587 G + 0.114 B), as PIL's "L" conversion.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from fbmem_data.similarity.base import RegionBatch

WHITE_LEVEL = 0.97
BLACK_LEVEL = 0.03
DEGENERATE_SHARE = 0.97
RULES = ("none", "fg_both", "bg_both")


def split_parts(rgb: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,3,H,W) images and (N,1,H,W) soft masks in [0, 1] -> (fg, bg), each (N,4,H,W)."""
    import torch

    fg = torch.cat([rgb * mask, mask], dim=1)
    bg = torch.cat([rgb * (1 - mask) + mask, torch.ones_like(mask)], dim=1)
    return fg, bg


def grayscale(rgba_or_rgb: torch.Tensor) -> torch.Tensor:
    r, g, b = rgba_or_rgb[:, 0], rgba_or_rgb[:, 1], rgba_or_rgb[:, 2]
    return 0.299 * r + 0.587 * g + 0.114 * b


def degenerate_rules(fg: torch.Tensor, bg: torch.Tensor) -> list[str]:
    """The rule of each (generated) image: "fg_both", "bg_both" or "none" (the paper's method)."""
    white = (grayscale(bg) > WHITE_LEVEL).float().flatten(1).mean(1)
    black = (grayscale(fg) < BLACK_LEVEL).float().flatten(1).mean(1)
    rules = []
    for w, b in zip(white.tolist(), black.tolist(), strict=True):
        rules.append("fg_both" if w > DEGENERATE_SHARE else "bg_both" if b > DEGENERATE_SHARE else "none")
    return rules


def apply_rules(fg_scores: torch.Tensor, bg_scores: torch.Tensor, rules: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace both scores of a pair by its fg score (fg_both) or its bg score (bg_both)."""
    import torch

    fg_both = torch.tensor([r == "fg_both" for r in rules], device=fg_scores.device)
    bg_both = torch.tensor([r == "bg_both" for r in rules], device=fg_scores.device)
    new_fg = torch.where(bg_both, bg_scores, fg_scores)
    new_bg = torch.where(fg_both, fg_scores, bg_scores)
    return new_fg, new_bg


def resize_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 HxWx3 -> uint8 size x size x 3 with PIL's LANCZOS (the reference resize); no-op if equal."""
    from PIL import Image

    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """uint8 HxW -> uint8 size x size, LANCZOS as for the image (PIL clips to 0..255)."""
    from PIL import Image

    if mask.shape[0] == size and mask.shape[1] == size:
        return mask
    return np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.LANCZOS))


def region_batch(images: list[np.ndarray], masks: list[np.ndarray], size: int, device: str = "cpu") -> RegionBatch:
    """Resize uint8 RGB images and uint8 masks to size x size and split them into parts.

    Args:
        images: uint8 HxWx3 arrays. masks: uint8 HxW arrays (0..255), any size.
        size: side of the square the parts are compared at (reference 512).
    """
    import torch

    from fbmem_data.similarity.base import RegionBatch

    rgb = np.stack([resize_rgb(img, size) for img in images]).astype(np.float32) / 255.0
    m = np.stack([resize_mask(mk, size) for mk in masks]).astype(np.float32) / 255.0
    rgb_t = torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous().to(device)
    m_t = torch.from_numpy(m)[:, None].contiguous().to(device)
    fg, bg = split_parts(rgb_t, m_t)
    return RegionBatch(fg=fg, bg=bg, mask=m_t)
