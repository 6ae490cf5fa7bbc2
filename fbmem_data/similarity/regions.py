"""`msssim-regions`: MS-SSIM of the two images themselves, inside the foreground and background regions.

Why not the cut-outs: `msssim-masked` compares foreground *cut-outs* (pixels outside a mask are black,
alpha 0) inside the union of the two masks. When the two masks disagree a little (a near-copy whose
saliency mask differs from its source's), the union holds a strip where one cut-out has the object
and the other black with alpha 0: the strip is a large share of the compared region, so a verbatim
copy's foreground scores 0.55-0.76 and it reads BM. Here the region only says *where* to compare; the
pixels compared are the images' own, so a mask disagreement costs nothing when the pixels agree.

- foreground = masked MS-SSIM of the two RGB images inside the union of the soft masks,
  max(m_gen, m_train): a different object in either image lowers it (no false FM from shared black);
- background = masked MS-SSIM of the two RGB images inside the shared background,
  (1 - m_gen)(1 - m_train): windows never straddle either object (no missed BM under a new object).
Both use normalized convolution (`msssim.masked_ms_ssim`): pixels outside the region never enter a
statistic. A region under `min_region` of the image falls back to the plain MS-SSIM of the part.

Registration (`align`, a fraction of the side, and `zoom`, 0 = off): before scoring, the generated image
and its mask are scaled about the centre by the factor in 1 - zoom .. 1 + zoom (steps of 0.02) and
translated by the integer shift (at most ceil(align x side) pixels each way) whose phase correlation
with the training image peaks highest (edges repeat into uncovered strips). MS-SSIM's finest scales
decorrelate on a shift or re-framing of a few pixels in textured images, so without it a slightly
cropped or shifted copy reads NM. Unrelated pairs gain little: one shift and scale, chosen on the
spectrum, not on the score.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from fbmem_data.errors import InputError
from fbmem_data.similarity.base import RegionBatch, RegionMetric, check_pairs
from fbmem_data.similarity.msssim import SSIMConfig, _chunks, masked_ms_ssim, ms_ssim, pair_chunk_size

if TYPE_CHECKING:
    import torch


class RegionsMSSSIMMetric(RegionMetric):
    """Foreground: the images inside the union of masks; background: inside the shared background."""

    name = "msssim-regions"

    def __init__(
        self,
        config: SSIMConfig | None = None,
        min_region: float = 0.02,
        align: float = 0.0,
        zoom: float = 0.0,
        smooth: float = 0.0,
        fg_region: str = "union",
        budget_mb: float = 256.0,
    ) -> None:
        self.config = config or SSIMConfig(data_range=1.0)
        self.min_region = float(min_region)
        self.align = float(align)
        if not 0 <= self.align <= 0.25:
            raise InputError(f"align must be a fraction of the side in [0, 0.25], got {align}")
        self.zoom = float(zoom)
        if not 0 <= self.zoom <= 0.2:
            raise InputError(f"zoom must be in [0, 0.2], got {zoom}")
        if fg_region not in ("union", "mean"):
            raise InputError(f"fg_region must be union or mean, got {fg_region!r}")
        self.fg_region = fg_region
        self.smooth = float(smooth)
        if not 0 <= self.smooth <= 0.05:
            raise InputError(
                f"smooth must be in [0, 0.05] (a Gaussian sigma as a fraction of the side), got {smooth}"
            )
        self.budget_mb = budget_mb

    def params(self) -> dict[str, Any]:
        return {
            "metric": self.name,
            "min_region": self.min_region,
            "align": self.align,
            "zoom": self.zoom,
            "smooth": self.smooth,
            "fg_region": self.fg_region,
            **self.config.as_dict(),
        }

    def prepare(self, batch: RegionBatch) -> dict[str, torch.Tensor]:
        # the parts are (R m, G m, B m, m) and (R (1-m) + m, ..., 1): their RGB sum minus m is the image
        rgb = (batch.fg[:, :3] + batch.bg[:, :3] - batch.mask).clamp_(0.0, 1.0)
        if self.smooth > 0:
            rgb = gaussian_blur(rgb, self.smooth * int(rgb.shape[-1]))
        return {"rgb": rgb, "mask": batch.mask, "fg": batch.fg, "bg": batch.bg}

    def score(
        self, gen: Any, gen_index: torch.Tensor, train: Any, train_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        check_pairs(gen_index, train_index, int(gen["rgb"].shape[0]), int(train["rgb"].shape[0]))
        h, w = gen["rgb"].shape[-2:]
        step = max(1, pair_chunk_size(int(h), int(w), self.budget_mb) // 2)
        fgs, bgs = [], []
        for sl in _chunks(len(gen_index), step):
            gi, ti = gen_index[sl], train_index[sl]
            mg, mt = gen["mask"][gi], train["mask"][ti]
            x, y = train["rgb"][ti], gen["rgb"][gi]  # (train, gen) as the other metrics
            yfg, ybg = gen["fg"][gi], gen["bg"][gi]
            if self.align > 0 or self.zoom > 0:
                scales, shifts = register_pair(x, y, math.ceil(self.align * int(h)), self.zoom)
                y, mg, yfg, ybg = (translate(rescale(t, scales), shifts) for t in (y, mg, yfg, ybg))
            wfg = torch.maximum(mg, mt) if self.fg_region == "union" else (mg + mt) / 2
            fg = self._region(x, y, wfg, train["fg"][ti], yfg)
            bg = self._region(x, y, (1 - mg) * (1 - mt), train["bg"][ti], ybg)
            fgs.append(fg)
            bgs.append(bg)
        return torch.cat(fgs), torch.cat(bgs)

    def _region(
        self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, part_x: torch.Tensor, part_y: torch.Tensor
    ) -> torch.Tensor:
        import torch

        small = w.flatten(1).mean(1) < self.min_region
        out = masked_ms_ssim(x, y, w, self.config)
        small = small | torch.isnan(out)
        if bool(small.any()):
            out = out.clone()
            out[small] = ms_ssim(part_x[small], part_y[small], self.config)
        return out


def register_pair(
    x: torch.Tensor, y: torch.Tensor, limit: int, zoom: float
) -> tuple[list[float], list[tuple[int, int]]]:
    """Per pair, the scale (1 +- k 0.02 up to zoom) and shift (|dy|, |dx| <= limit) of y that best match x."""
    import torch

    candidates = [1.0] + [
        1 + sign * 0.02 * k for k in range(1, round(zoom / 0.02) + 1) for sign in (-1, 1)
    ]
    n = x.shape[0]
    best_peak = torch.full((n,), -float("inf"))
    scales, shifts = [1.0] * n, [(0, 0)] * n
    for z in candidates:
        sh, peak = phase_shifts(x, rescale(y, [z] * n), limit, with_peak=True)
        better = (peak > best_peak).tolist()
        for i in range(n):
            if better[i]:
                scales[i], shifts[i] = z, sh[i]
        best_peak = torch.maximum(best_peak, peak)
    return scales, shifts


def gaussian_blur(t: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (reflect padding) of (N,C,H,W) with sigma in pixels."""
    import torch
    import torch.nn.functional as F

    r = max(1, math.ceil(3 * sigma))
    d = torch.arange(-r, r + 1, dtype=t.dtype, device=t.device)
    k = torch.exp(-(d**2) / (2 * sigma**2))
    k = k / k.sum()
    n, c, h, w = t.shape
    y = F.pad(t.reshape(n * c, 1, h, w), (r, r, r, r), mode="reflect")
    y = F.conv2d(F.conv2d(y, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


def rescale(t: torch.Tensor, scales: list[float]) -> torch.Tensor:
    """Scale t[p] about the centre by scales[p] (bilinear, edges repeated); 1.0 leaves it untouched."""
    import torch
    import torch.nn.functional as F

    if all(z == 1.0 for z in scales):
        return t
    theta = torch.zeros((t.shape[0], 2, 3), dtype=t.dtype, device=t.device)
    inv = torch.tensor([1.0 / z for z in scales], dtype=t.dtype, device=t.device)
    theta[:, 0, 0] = inv
    theta[:, 1, 1] = inv
    grid = F.affine_grid(theta, list(t.shape), align_corners=False)
    out = F.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=False)
    keep = torch.tensor([z == 1.0 for z in scales], device=t.device)
    return torch.where(keep.view(-1, 1, 1, 1), t, out)


def phase_shifts(x: torch.Tensor, y: torch.Tensor, limit: int, with_peak: bool = False) -> Any:
    """Per pair, the integer (dy, dx), |dy|, |dx| <= limit, that moves y onto x (phase correlation of
    the Hann-windowed grey images); with_peak: also the correlation peak per pair."""
    import torch

    def grey(t: torch.Tensor) -> torch.Tensor:
        g = 0.299 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2]
        return g - g.mean(dim=(1, 2), keepdim=True)

    h, w = x.shape[-2:]
    win = torch.outer(
        torch.hann_window(h, dtype=x.dtype, device=x.device),
        torch.hann_window(w, dtype=x.dtype, device=x.device),
    )
    fx, fy = torch.fft.rfft2(grey(x) * win), torch.fft.rfft2(grey(y) * win)
    cross = fx * fy.conj()
    corr = torch.fft.irfft2(cross / cross.abs().clamp_min(1e-12), s=(h, w))
    # keep shifts within the limit: rows/columns 0..limit and -limit..-1 (wrapped)
    idx_h = torch.cat([torch.arange(0, limit + 1), torch.arange(h - limit, h)]).to(x.device)
    idx_w = torch.cat([torch.arange(0, limit + 1), torch.arange(w - limit, w)]).to(x.device)
    sub = corr[:, idx_h][:, :, idx_w].flatten(1)
    peak, arg = sub.max(1)
    best = arg.tolist()
    out = []
    for b in best:
        i, j = divmod(b, len(idx_w))
        dy, dx = int(idx_h[i]), int(idx_w[j])
        out.append((dy - h if dy > h // 2 else dy, dx - w if dx > w // 2 else dx))
    return (out, peak) if with_peak else out


def translate(t: torch.Tensor, shifts: list[tuple[int, int]]) -> torch.Tensor:
    """Translate t[p] (N,C,H,W) by shifts[p] = (dy, dx): out[i, j] = t[i - dy, j - dx], edges repeated."""
    import torch
    import torch.nn.functional as F

    if not any(dy or dx for dy, dx in shifts):
        return t
    h, w = t.shape[-2:]
    s = max(max(abs(dy), abs(dx)) for dy, dx in shifts)
    padded = F.pad(t, (s, s, s, s), mode="replicate")
    return torch.stack(
        [padded[p, :, s - dy : s - dy + h, s - dx : s - dx + w] for p, (dy, dx) in enumerate(shifts)]
    )


def make_msssim_regions(
    min_region: float = 0.02,
    align: float = 0.0,
    zoom: float = 0.0,
    smooth: float = 0.0,
    fg_region: str = "union",
    **kwargs: Any,
) -> RegionsMSSSIMMetric:
    cfg = SSIMConfig(**{"data_range": 1.0, **kwargs})
    return RegionsMSSSIMMetric(
        cfg, min_region=min_region, align=align, zoom=zoom, smooth=smooth, fg_region=fg_region
    )
