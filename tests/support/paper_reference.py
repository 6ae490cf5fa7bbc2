"""An independent recomputation of the paper's released scorer, for tests only.

Written from the released scripts' steps (segment with rembg's BiRefNet session, save the parts, read
them back, torchmetrics 1.3.2's MS-SSIM module one pair per call), with Pillow doing what Pillow did
there and its own MS-SSIM: a direct 2-D Gaussian convolution of the five maps as torchmetrics 1.3.2
computes them, every scale's map averaged over the interior. Nothing here imports fbmem, so a bug
in fbmem's code path cannot hide in both.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


# -- parts, as the reference's files hold them ---------------------------------------------------
def rembg_cutout(img: Image.Image, mask: Image.Image) -> Image.Image:
    """rembg's fallback cut-out (alpha matting fails on a threshold of 270): img over clear black."""
    return Image.composite(img, Image.new("RGBA", img.size, 0), mask)


def split(img: Image.Image, mask: Image.Image) -> tuple[Image.Image, Image.Image]:
    fg = rembg_cutout(img, mask)
    alpha = fg.split()[-1].convert("L")
    bg = img.copy()
    bg.paste(alpha, mask=alpha)
    return fg, bg


def _jpeg(im: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG")
    buf.seek(0)
    return Image.open(buf)


def _png(im: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    buf.seek(0)
    return Image.open(buf)


def to_tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()


def _mostly(im: Image.Image, white: bool) -> bool:
    px = np.array(im) / 255.0
    count = np.sum(px > 0.97) if white else np.sum(px < 0.03)
    return count / px.size > 0.97


def train_tensors(rgb: np.ndarray, mask: np.ndarray, size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(fg, bg) of a training image: PNG files read back as RGBA, LANCZOS to size."""
    fg, bg = split(Image.fromarray(rgb), Image.fromarray(mask, "L"))
    fg, bg = _png(fg), _png(bg)

    def load(im: Image.Image) -> torch.Tensor:
        return to_tensor(im.convert("RGBA").resize((size, size), resample=Image.Resampling.LANCZOS))

    return load(fg), load(bg)


def generated_tensors(rgb: np.ndarray, mask: np.ndarray, fresh: bool = False) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(fg, bg, rule) of a generated image after the degenerate substitution; cached JPEG parts unless fresh."""
    fg, bg = split(Image.fromarray(rgb), Image.fromarray(mask, "L"))
    fg_file, bg_file = _jpeg(fg), _jpeg(bg)
    if fresh:
        g_fg, g_bg = to_tensor(fg.convert("RGBA")), to_tensor(bg.convert("RGBA"))
    else:
        g_fg, g_bg = to_tensor(fg_file.convert("RGBA")), to_tensor(bg_file.convert("RGBA"))
    rule = "none"
    if _mostly(bg_file.convert("L"), white=True):
        g_bg, rule = g_fg, "fg_both"
    elif _mostly(fg_file.convert("L"), white=False):
        g_fg, rule = g_bg, "bg_both"
    return g_fg, g_bg, rule


def whole_tensor(rgb: np.ndarray, size: int = 512) -> torch.Tensor:
    im = Image.fromarray(rgb).convert("RGBA")
    if im.size != (size, size):
        im = im.resize((size, size), resample=Image.Resampling.LANCZOS)
    return to_tensor(im)


# -- torchmetrics 1.3.2's MS-SSIM, written out ----------------------------------------------------
def _kernel(channels: int, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    d = torch.arange((1 - size) / 2, (1 + size) / 2, 1, dtype=torch.float32)
    g = torch.exp(-((d / sigma) ** 2) / 2)
    g = (g / g.sum())[None]
    return torch.matmul(g.T, g).expand(channels, 1, size, size)


def _ssim_and_cs(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dr = max(x.max() - x.min(), y.max() - y.min())
    c1, c2 = (0.01 * dr) ** 2, (0.03 * dr) ** 2
    p = 5
    xp, yp = F.pad(x, (p, p, p, p), mode="reflect"), F.pad(y, (p, p, p, p), mode="reflect")
    out = F.conv2d(torch.cat([xp, yp, xp * xp, yp * yp, xp * yp]), _kernel(x.shape[1]), groups=x.shape[1])
    mx, my, exx, eyy, exy = out.split(x.shape[0])
    vx = torch.clamp(exx - mx**2, min=0.0)
    vy = torch.clamp(eyy - my**2, min=0.0)
    cov = exy - mx * my
    upper, lower = 2 * cov + c2, vx + vy + c2
    ssim_map = ((2 * mx * my + c1) * upper) / ((mx**2 + my**2 + c1) * lower)
    cs_map = upper / lower
    crop = (Ellipsis, slice(p, -p), slice(p, -p))
    return ssim_map[crop].flatten(1).mean(-1), cs_map[crop].flatten(1).mean(-1)


def ms_ssim_132(x: torch.Tensor, y: torch.Tensor) -> float:
    """MultiScaleStructuralSimilarityIndexMeasure() of torchmetrics 1.3.2 (defaults) on one pair."""
    values = []
    for _ in BETAS:
        sim, cs = _ssim_and_cs(x, y)
        values.append(torch.relu(cs))
        x, y = F.avg_pool2d(x, (2, 2)), F.avg_pool2d(y, (2, 2))
    values[-1] = torch.relu(sim)
    stack = torch.stack(values)
    return float(torch.prod(stack ** torch.tensor(BETAS).view(-1, 1), dim=0)[0])


def pair_scores(gen: tuple[np.ndarray, np.ndarray], train: tuple[np.ndarray, np.ndarray], size: int = 512,
                fresh: bool = False) -> tuple[float, float, str]:
    """(fg score, bg score, rule) of one generated x training pair, the reference's way.

    The reference only met generated images at the comparison size; one of another size is brought to
    it (image and mask, LANCZOS) before its parts are made, as fbmem documents.
    """
    rgb, mask = gen
    if rgb.shape[:2] != (size, size):
        rgb = np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.LANCZOS))
        mask = np.asarray(Image.fromarray(mask, "L").resize((size, size), Image.Resampling.LANCZOS))
    g_fg, g_bg, rule = generated_tensors(rgb, mask, fresh=fresh)
    t_fg, t_bg = train_tensors(*train, size=size)
    return ms_ssim_132(t_fg, g_fg), ms_ssim_132(t_bg, g_bg), rule


# -- rembg's BiRefNet session, around any onnxruntime session -------------------------------------
def rembg_mask(session: object, rgb: np.ndarray) -> np.ndarray:
    """uint8 mask the way rembg's birefnet-general session makes it, from the graph's first output."""
    size = tuple(session.get_inputs()[0].shape[2:4])  # type: ignore[attr-defined]
    im = Image.fromarray(rgb).convert("RGB").resize(size, Image.Resampling.LANCZOS)
    a = np.array(im)
    a = a / max(np.max(a), 1e-6)
    t = np.zeros((a.shape[0], a.shape[1], 3))
    for c, (m, s) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), strict=True)):
        t[:, :, c] = (a[:, :, c] - m) / s
    feed = {session.get_inputs()[0].name: np.expand_dims(t.transpose((2, 0, 1)), 0).astype(np.float32)}  # type: ignore[attr-defined]
    out = session.run(None, feed)  # type: ignore[attr-defined]
    pred = 1 / (1 + np.exp(-out[0][:, 0, :, :]))
    pred = (pred - np.min(pred)) / (np.max(pred) - np.min(pred))
    m = Image.fromarray((np.squeeze(pred) * 255).astype("uint8"), mode="L")
    return np.asarray(m.resize((rgb.shape[1], rgb.shape[0]), Image.Resampling.LANCZOS))


# -- the golden test's inputs ---------------------------------------------------------------------
def soft_ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float, edge: float = 0.08) -> np.ndarray:
    """uint8 mask: 255 inside an ellipse, a linear ramp of `edge` (relative radius) outside it."""
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.sqrt(((yy - cy * h) / (ry * h)) ** 2 + ((xx - cx * w) / (rx * w)) ** 2)
    return np.round(np.clip((1 + edge - r) / edge, 0, 1) * 255).astype(np.uint8)


def golden_inputs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """scikit-image sample photos with fixed soft masks: generated (512) and training (own sizes)."""
    from skimage import data

    coffee = data.coffee()  # 400x600
    near_copy = np.asarray(_jpeg(Image.fromarray(coffee).resize((512, 512), Image.Resampling.BICUBIC)).convert("RGB"))
    astronaut = data.astronaut()
    ihc = data.immunohistochemistry()
    chelsea = data.chelsea()  # 300x451
    return {
        "gen_astronaut": (astronaut, soft_ellipse(512, 512, 0.45, 0.45, 0.35, 0.25)),
        "gen_coffee": (near_copy, soft_ellipse(512, 512, 0.5, 0.5, 0.3, 0.3)),
        "gen_full": (ihc, np.full((512, 512), 255, np.uint8)),  # object fills the frame -> fg_both
        "gen_empty": (astronaut, np.zeros((512, 512), np.uint8)),  # no object -> bg_both
        "train_coffee": (coffee, soft_ellipse(400, 600, 0.5, 0.5, 0.32, 0.28)),
        "train_chelsea": (chelsea, soft_ellipse(300, 451, 0.55, 0.5, 0.4, 0.3)),
    }
