"""MS-SSIM / SSIM that reproduce torchmetrics, with per-image work done once, plus a masked variant.

torchmetrics' MS-SSIM of a pair, at each of 5 scales: reflect-pad by 5, blur x, y, x², y², xy with an
11x11 Gaussian (sigma 1.5), build the SSIM map; the mean of the cropped contrast-structure map is the
scale's cs, the mean of the full SSIM map at the last scale is its sim; then average-pool by 2.
Result = prod(relu(cs_1..4) ** beta_1..4) * relu(sim_5) ** beta_5.

Of the five blurs, four depend on one image only: blur(x), blur(x²) (hence mu and sigma²) for every
scale are computed once per image by `image_stats`; a pair needs only blur(x·y). The Gaussian is
applied as two 1-D passes (exactly separable), 22 instead of 121 taps per pixel.

`data_range=None` reproduces torchmetrics' default: at every scale the range is max(max-min of x,
max-min of y) of the (pooled) pair, i.e. per pair as in a one-pair-per-call loop.

`legacy_crop=True` reproduces torchmetrics before 1.4.2 (the paper pinned 1.3.2): there the SSIM map
(single-scale SSIM, and MS-SSIM's last scale) was averaged over the same interior as the
contrast-structure maps, i.e. cropped by the Gaussian's half-width (5 pixels) on every side; 1.4.2 and
later average the full map.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from fbmem_data.errors import InputError
from fbmem_data.similarity.base import RegionBatch, RegionMetric, check_pairs

if TYPE_CHECKING:
    import torch

PAPER_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


@dataclass(frozen=True)
class SSIMConfig:
    """Settings of the SSIM engine; the defaults are torchmetrics' MS-SSIM defaults.

    data_range: float, or None for torchmetrics' per-call (here: per pair and scale) max-min range.
    normalize: "relu" (torchmetrics' functional/module default), "simple" or None.
    single_scale: plain SSIM (torchmetrics.structural_similarity_index_measure): one scale, no
        normalisation, the mean of the full SSIM map.
    legacy_crop: average the SSIM map over the interior only, as torchmetrics < 1.4.2 did.
    """

    sigma: float = 1.5
    betas: tuple[float, ...] = PAPER_BETAS
    k1: float = 0.01
    k2: float = 0.03
    data_range: float | None = None
    normalize: str | None = "relu"
    single_scale: bool = False
    legacy_crop: bool = False

    @property
    def n_scales(self) -> int:
        return 1 if self.single_scale else len(self.betas)

    @property
    def kernel_size(self) -> int:
        # torchmetrics derives the Gaussian's size from sigma (gaussian_kernel=True): 11 for 1.5
        return int(3.5 * self.sigma + 0.5) * 2 + 1

    @property
    def pad(self) -> int:
        return (self.kernel_size - 1) // 2

    def check_size(self, height: int, width: int) -> None:
        """Raises InputError for images too small for the scales (same limits as torchmetrics)."""
        if self.single_scale:
            if min(height, width) <= self.pad:
                raise InputError(f"images of {height}x{width} are too small for SSIM")
            return
        div = max(1, len(self.betas) - 1) ** 2
        if min(height, width) < 2 ** len(self.betas) or min(height, width) // div <= self.kernel_size - 1:
            raise InputError(
                f"images of {height}x{width} are too small for {len(self.betas)}-scale MS-SSIM",
                hint=f"use --size {(self.kernel_size - 1) * div + div} or more",
            )

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        if not self.legacy_crop:
            # absent unless set: scoring ids of configurations that predate the option stay the same
            d.pop("legacy_crop")
        return d


def gaussian_1d(cfg: SSIMConfig, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    import torch

    k = cfg.kernel_size
    dist = torch.arange((1 - k) / 2, (1 + k) / 2, 1, dtype=dtype, device=device)
    g = torch.exp(-((dist / cfg.sigma) ** 2) / 2)
    return g / g.sum()


def blur_valid(x: torch.Tensor, k1d: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur without padding: (N,C,H,W) -> (N,C,H-2p,W-2p).

    On CPU as shifted multiply-adds (PyTorch's CPU convolutions are slow for single-channel 1-D
    kernels: this is 2-3x faster than the 2-D grouped conv torchmetrics uses); elsewhere as two
    1-D convolutions.
    """
    import torch.nn.functional as F

    n, c, h, w = x.shape
    k = k1d.numel()
    if x.device.type != "cpu":
        y = x.reshape(n * c, 1, h, w)
        y = F.conv2d(y, k1d.view(1, 1, 1, k))
        y = F.conv2d(y, k1d.view(1, 1, k, 1))
        return y.reshape(n, c, h - k + 1, w - k + 1)
    taps = k1d.tolist()
    ow, oh = w - k + 1, h - k + 1
    y = x[..., :, 0:ow] * taps[0]
    for i in range(1, k):
        y.add_(x[..., :, i : i + ow], alpha=taps[i])
    z = y[..., 0:oh, :] * taps[0]
    for i in range(1, k):
        z.add_(y[..., i : i + oh, :], alpha=taps[i])
    return z


def _pad(x: torch.Tensor, p: int) -> torch.Tensor:
    import torch.nn.functional as F

    return F.pad(x, (p, p, p, p), mode="reflect")


@dataclass
class ScaleStats:
    """One image batch at one scale: reflect-padded pixels (the pair's padded product is the product
    of padded pixels), blurred mean and variance, per-image value range."""

    xp: torch.Tensor
    mu: torch.Tensor
    sigma2: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor

    def select(self, index: torch.Tensor | slice) -> ScaleStats:
        """Rows of the batch: a slice gives views (no copy), an index tensor copies."""
        return ScaleStats(self.xp[index], self.mu[index], self.sigma2[index], self.lo[index], self.hi[index])


def image_stats(x: torch.Tensor, cfg: SSIMConfig) -> list[ScaleStats]:
    """Per-image MS-SSIM work for a batch (N,C,H,W): one ScaleStats per scale."""
    import torch
    import torch.nn.functional as F

    cfg.check_size(int(x.shape[-2]), int(x.shape[-1]))
    k1d = gaussian_1d(cfg, x.dtype, x.device)
    out: list[ScaleStats] = []
    with torch.inference_mode():
        for s in range(cfg.n_scales):
            xp = _pad(x, cfg.pad)
            mu = blur_valid(xp, k1d)
            exx = blur_valid(xp * xp, k1d)
            sigma2 = torch.clamp(exx - mu * mu, min=0.0)
            flat = x.reshape(x.shape[0], -1)
            out.append(ScaleStats(xp, mu, sigma2, flat.min(1).values, flat.max(1).values))
            if s < cfg.n_scales - 1:
                x = F.avg_pool2d(x, (2, 2))
    return out


def pair_scores(a: list[ScaleStats], b: list[ScaleStats], cfg: SSIMConfig) -> torch.Tensor:
    """MS-SSIM (or SSIM) of pairs (a[i], b[i]) from their per-image stats: a tensor of length N.

    Either side may hold a single image, broadcast against the other (one generated image against
    many training images without copying it).
    """
    import torch

    k1d = gaussian_1d(cfg, a[0].xp.dtype, a[0].xp.device)
    p = cfg.pad
    values = []
    with torch.inference_mode():
        for s, (sa, sb) in enumerate(zip(a, b, strict=True)):
            exy = blur_valid(sa.xp * sb.xp, k1d)
            if cfg.data_range is None:
                dr = torch.maximum(sa.hi - sa.lo, sb.hi - sb.lo).view(-1, 1, 1, 1)
            else:
                dr = torch.tensor(float(cfg.data_range), dtype=sa.xp.dtype, device=sa.xp.device)
            c1 = (cfg.k1 * dr) ** 2
            c2 = (cfg.k2 * dr) ** 2
            last = s == cfg.n_scales - 1
            # contrast-structure maps are averaged over the interior only: compute just that
            full = last and not cfg.legacy_crop
            inner = (Ellipsis, slice(None), slice(None)) if full else (Ellipsis, slice(p, -p), slice(p, -p))
            mu_x, mu_y = sa.mu[inner], sb.mu[inner]
            mu_xy = mu_x * mu_y
            upper = exy[inner].sub_(mu_xy).mul_(2).add_(c2)  # 2 sigma_xy + c2, in place
            lower = sa.sigma2[inner] + sb.sigma2[inner]
            lower.add_(c2)
            if last:
                num = upper.mul_(mu_xy.mul_(2).add_(c1))
                den = lower.mul_(torch.addcmul(mu_x * mu_x, mu_y, mu_y).add_(c1))
                values.append(num.div_(den).mean(dim=(1, 2, 3)))
            else:
                values.append(upper.div_(lower).mean(dim=(1, 2, 3)))
        return combine_scales(torch.stack(values), cfg)


def combine_scales(values: torch.Tensor, cfg: SSIMConfig) -> torch.Tensor:
    """(n_scales, N) per-scale cs/sim -> (N,) MS-SSIM as torchmetrics combines them."""
    import torch

    if cfg.single_scale:
        return values[0]
    if cfg.normalize == "relu":
        values = torch.relu(values)
    elif cfg.normalize == "simple":
        values = (values + 1) / 2
    betas = torch.tensor(cfg.betas, dtype=values.dtype, device=values.device).view(-1, 1)
    return torch.prod(values**betas, dim=0)


def ms_ssim(x: torch.Tensor, y: torch.Tensor, cfg: SSIMConfig | None = None) -> torch.Tensor:
    """MS-SSIM of pairs (x[i], y[i]), each (N,C,H,W): torchmetrics' value computed per pair."""
    cfg = cfg or SSIMConfig()
    if x.shape != y.shape:
        raise InputError(f"pairs must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    return pair_scores(image_stats(x, cfg), image_stats(y, cfg), cfg)


def masked_ms_ssim(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, cfg: SSIMConfig | None = None) -> torch.Tensor:
    """MS-SSIM restricted to a soft region w (N,1,H,W) by normalized convolution.

    Local means/variances/covariance are weighted by w (blur(w·x)/blur(w), ...), maps are averaged
    with weight w, and the pyramid pools w·x and w (then divides), so pixels outside the region never
    enter a statistic. Pairs whose region is empty get NaN (callers fall back to the plain score).
    """
    import torch
    import torch.nn.functional as F

    cfg = cfg or SSIMConfig()
    cfg.check_size(int(x.shape[-2]), int(x.shape[-1]))
    k1d = gaussian_1d(cfg, x.dtype, x.device)
    p = cfg.pad
    eps = 1e-6
    dr = 1.0 if cfg.data_range is None else float(cfg.data_range)
    c1, c2 = (cfg.k1 * dr) ** 2, (cfg.k2 * dr) ** 2
    values = []
    empty = w.flatten(1).sum(1) <= eps * w[0].numel()
    c = int(x.shape[1])
    with torch.inference_mode():
        for s in range(cfg.n_scales):
            xp, yp, wp = _pad(x, p), _pad(y, p), _pad(w, p)
            # one buffer, one blur: w·x, w·y, w·x², w·y², w·x·y, w (no concatenation copies)
            buf = torch.empty((xp.shape[0], 5 * c + 1, *xp.shape[-2:]), dtype=xp.dtype, device=xp.device)
            wx, wy, wxx, wyy, wxy = (buf[:, i * c : (i + 1) * c] for i in range(5))
            torch.mul(wp, xp, out=wx)
            torch.mul(wp, yp, out=wy)
            torch.mul(wx, xp, out=wxx)
            torch.mul(wy, yp, out=wyy)
            torch.mul(wx, yp, out=wxy)
            buf[:, 5 * c :] = wp
            del xp, yp, wp
            m = blur_valid(buf, k1d)
            del buf
            wsum = m[:, 5 * c :].clamp_min_(eps)
            m[:, : 5 * c].div_(wsum)
            mx, my, exx, eyy, exy = (m[:, i * c : (i + 1) * c] for i in range(5))
            mxy = mx * my
            sxy2 = exy.sub_(mxy).mul_(2).add_(c2)  # 2 sigma_xy + c2
            sx2 = exx.addcmul_(mx, mx, value=-1).clamp_(min=0.0)
            sy2 = eyy.addcmul_(my, my, value=-1).clamp_(min=0.0)
            lower = sx2.add_(sy2).add_(c2)
            if s == cfg.n_scales - 1:
                den = torch.mul(mx, mx).addcmul_(my, my).add_(c1)
                smap = sxy2.mul_(mxy.mul_(2).add_(c1)).div_(lower.mul_(den))
            else:
                smap = sxy2.div_(lower)
            # weighted mean over channels and pixels: sum_hw w * sum_c map / (C * sum_hw w)
            w2 = w[:, 0]
            values.append((smap.sum(1) * w2).flatten(1).sum(1) / (c * w2.flatten(1).sum(1)).clamp_min(eps))
            if s < cfg.n_scales - 1:
                pw = F.avg_pool2d(w, (2, 2))
                x = F.avg_pool2d(w * x, (2, 2)) / pw.clamp_min(eps)
                y = F.avg_pool2d(w * y, (2, 2)) / pw.clamp_min(eps)
                w = pw
        out = combine_scales(torch.stack(values), cfg)
    return torch.where(empty, torch.full_like(out, float("nan")), out)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def pair_chunk_size(height: int, width: int, budget_mb: float = 256.0) -> int:
    """Pairs per chunk so that a chunk's temporaries (about 24 4-channel maps per pair) fit the budget."""
    per_pair = 24 * 4 * height * width * 4 / 2**20
    return max(1, int(budget_mb // per_pair))


class MSSSIMMetric(RegionMetric):
    """MS-SSIM (or SSIM) of foreground cut-outs and of backgrounds, as the paper scores them."""

    name = "msssim"

    def __init__(self, config: SSIMConfig | None = None, budget_mb: float = 256.0) -> None:
        self.config = config or SSIMConfig()
        self.budget_mb = budget_mb

    def params(self) -> dict[str, Any]:
        return {"metric": self.name, **self.config.as_dict()}

    def prepare(self, batch: RegionBatch) -> dict[str, list[ScaleStats]]:
        return {"fg": image_stats(batch.fg, self.config), "bg": image_stats(batch.bg, self.config)}

    def score(self, gen: Any, gen_index: torch.Tensor, train: Any, train_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        check_pairs(gen_index, train_index, int(gen["fg"][0].mu.shape[0]), int(train["fg"][0].mu.shape[0]))
        h, w = gen["fg"][0].mu.shape[-2:]
        step = pair_chunk_size(int(h), int(w), self.budget_mb)
        n = len(gen_index)
        fg = torch.empty(n, dtype=gen["fg"][0].mu.dtype, device=gen["fg"][0].mu.device)
        bg = torch.empty_like(fg)
        # one generated image at a time, broadcast against its training images: no per-pair copies
        for g in torch.unique(gen_index).tolist():
            positions = torch.nonzero(gen_index == g).flatten()
            # training images in index order, so that runs of them are slices (views), not copies
            positions = positions[torch.argsort(train_index[positions], stable=True)]
            for sl in _chunks(len(positions), step):
                pos = positions[sl]
                ti = train_index[pos]
                t_sel: torch.Tensor | slice = ti
                if len(ti) > 0 and bool((ti == torch.arange(int(ti[0]), int(ti[0]) + len(ti), device=ti.device)).all()):
                    t_sel = slice(int(ti[0]), int(ti[0]) + len(ti))  # a run of training images: views
                for region, out in (("fg", fg), ("bg", bg)):
                    a = [st.select(slice(g, g + 1)) for st in gen[region]]
                    b = [st.select(t_sel) for st in train[region]]
                    out[pos] = pair_scores(b, a, self.config)  # torchmetrics argument order: (train, gen)
        return fg, bg


class SSIMMetric(MSSSIMMetric):
    name = "ssim"

    def __init__(self, config: SSIMConfig | None = None, budget_mb: float = 256.0) -> None:
        base = config or SSIMConfig()
        super().__init__(SSIMConfig(**{**base.as_dict(), "betas": tuple(base.betas), "single_scale": True}), budget_mb)


class MaskedMSSSIMMetric(RegionMetric):
    """The stricter variant: foregrounds compared inside the union of the two masks, backgrounds inside
    the background both images share, each by masked MS-SSIM. Where that region covers less than
    `min_region` of the image the plain MS-SSIM of the part is used (too little shared area to judge).
    """

    name = "msssim-masked"

    def __init__(self, config: SSIMConfig | None = None, min_region: float = 0.02, budget_mb: float = 256.0) -> None:
        self.config = config or SSIMConfig(data_range=1.0)
        if self.config.legacy_crop:
            raise InputError("legacy_crop is an option of msssim and ssim, not of msssim-masked")
        self.min_region = float(min_region)
        self.budget_mb = budget_mb

    def params(self) -> dict[str, Any]:
        return {"metric": self.name, "min_region": self.min_region, **self.config.as_dict()}

    def prepare(self, batch: RegionBatch) -> RegionBatch:
        return batch

    def score(self, gen: Any, gen_index: torch.Tensor, train: Any, train_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        check_pairs(gen_index, train_index, len(gen), len(train))
        h, w = gen.fg.shape[-2:]
        step = max(1, pair_chunk_size(int(h), int(w), self.budget_mb) // 2)
        fgs, bgs = [], []
        for sl in _chunks(len(gen_index), step):
            gi, ti = gen_index[sl], train_index[sl]
            mg, mt = gen.mask[gi], train.mask[ti]
            union = torch.maximum(mg, mt)
            shared_bg = (1 - mg) * (1 - mt)
            fgs.append(self._region_score(train.fg[ti], gen.fg[gi], union))
            bgs.append(self._region_score(train.bg[ti], gen.bg[gi], shared_bg))
        return torch.cat(fgs), torch.cat(bgs)

    def _region_score(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        import torch

        share = w.flatten(1).mean(1)
        small = share < self.min_region
        out = masked_ms_ssim(x, y, w, self.config)
        small = small | torch.isnan(out)
        if bool(small.any()):
            plain = ms_ssim(x[small], y[small], self.config)
            out = out.clone()
            out[small] = plain
        return out


def make_msssim(**kwargs: Any) -> MSSSIMMetric:
    return MSSSIMMetric(SSIMConfig(**kwargs)) if kwargs else MSSSIMMetric()


def make_ssim(**kwargs: Any) -> SSIMMetric:
    return SSIMMetric(SSIMConfig(**kwargs)) if kwargs else SSIMMetric()


def make_msssim_masked(min_region: float = 0.02, **kwargs: Any) -> MaskedMSSSIMMetric:
    cfg = SSIMConfig(**{"data_range": 1.0, **kwargs})
    return MaskedMSSSIMMetric(cfg, min_region=min_region)
