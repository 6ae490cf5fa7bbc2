"""Synthetic near-duplicate sets with known truth, for pairing tests and benchmarks.

Training images are random textures (a smooth colour field, stripes and a few shapes); generated
images are perturbed copies of some of them (noise, brightness/contrast, a small crop, JPEG) plus
unrelated textures. The truth says which training image each copy came from.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Texture:
    """What a texture is drawn from: a coarse colour grid, one stripe pattern and a few shapes."""

    grid: np.ndarray  # (g, g, 3) float colours, bicubically enlarged to the image size
    angle: float
    freq: float
    phase: float
    amplitude: np.ndarray  # (3,) stripe amplitude per channel
    shapes: tuple[tuple[bool, float, float, float, float, tuple[int, int, int]], ...]  # ellipse?, x0, y0, w, h (fractions), colour


def random_texture(rng: np.random.Generator, size: int = 64) -> Texture:
    """A random Texture (the draws of `textured_image`, in the same order)."""
    grid = rng.integers(0, 256, size=(int(rng.integers(3, 7)),) * 2 + (3,), dtype=np.uint8).astype(np.float32)
    angle, freq = float(rng.uniform(0, np.pi)), float(rng.uniform(2, 8))
    phase = float(rng.uniform(0, 6.3))
    amplitude = rng.uniform(10, 50, size=3)
    shapes = []
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = rng.integers(0, size - 8, size=2)
        w, h = rng.integers(6, size // 2, size=2)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        ellipse = bool(rng.random() < 0.5)
        shapes.append((ellipse, x0 / size, y0 / size, w / size, h / size, colour))
    return Texture(grid, angle, freq, phase, amplitude, tuple(shapes))  # type: ignore[arg-type]


def render_texture(tex: Texture, size: int = 64) -> np.ndarray:
    """The (size, size, 3) uint8 image of a Texture."""
    from PIL import Image, ImageDraw

    grid = np.clip(tex.grid, 0, 255).astype(np.uint8)
    field = np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC), dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size] / size
    stripes = np.sin(2 * np.pi * tex.freq * (np.cos(tex.angle) * xx + np.sin(tex.angle) * yy) + tex.phase)
    field += stripes[..., None] * tex.amplitude
    img = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for ellipse, x0, y0, w, h, colour in tex.shapes:
        box = [round(x0 * size), round(y0 * size), round((x0 + w) * size), round((y0 + h) * size)]
        (draw.ellipse if ellipse else draw.rectangle)(box, fill=colour)
    return np.asarray(img)


def textured_image(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A random (size, size, 3) uint8 texture."""
    return render_texture(random_texture(rng, size), size)


def theme_member(theme: Texture, rng: np.random.Generator, spread: float = 1.0) -> Texture:
    """Another picture of the same subject: the theme's layout with its colours, stripes and shapes
    moved a little (`spread` scales every change). Members of one theme are close in any pixel
    embedding but, unlike `perturb`'s copies, not copies of one another."""
    grid = theme.grid + rng.normal(0, 28 * spread, size=theme.grid.shape)
    shapes = tuple(
        (e, float(np.clip(x + rng.normal(0, 0.06 * spread), 0, 0.9)), float(np.clip(y + rng.normal(0, 0.06 * spread), 0, 0.9)),
         w * float(rng.uniform(1 - 0.2 * spread, 1 + 0.2 * spread)), h * float(rng.uniform(1 - 0.2 * spread, 1 + 0.2 * spread)),
         tuple(int(np.clip(v + rng.normal(0, 30 * spread), 0, 255)) for v in c))  # type: ignore[misc]
        for e, x, y, w, h, c in theme.shapes
    )
    return Texture(
        grid, theme.angle + float(rng.normal(0, 0.2 * spread)), theme.freq * float(np.exp(rng.normal(0, 0.1 * spread))),
        theme.phase + float(rng.normal(0, 1.0 * spread)), theme.amplitude * float(np.exp(rng.normal(0, 0.2 * spread))), shapes,
    )


def perturb(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A near copy: crop up to 6% per side and resize back, contrast/brightness change, noise, JPEG."""
    from PIL import Image

    size = img.shape[0]
    crop = [int(rng.integers(0, max(1, int(0.06 * size)) + 1)) for _ in range(4)]
    pil = Image.fromarray(img).crop((crop[0], crop[1], size - crop[2], size - crop[3])).resize((size, size), Image.BILINEAR)
    arr = np.asarray(pil, dtype=np.float32)
    arr = (arr - 128.0) * rng.uniform(0.85, 1.15) + 128.0 + rng.uniform(-25, 25)
    arr += rng.normal(0, rng.uniform(2, 8), size=arr.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=int(rng.integers(60, 91)))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


@dataclass(frozen=True)
class NearDuplicateSet:
    train: list[np.ndarray]
    generated: list[np.ndarray]
    source: list[int | None]  # per generated image: index of the training image it copies, or None


def near_duplicate_set(
    n_train: int, n_copies: int, n_unrelated: int, *, size: int = 64, seed: int = 0
) -> NearDuplicateSet:
    """n_train textures; n_copies perturbed copies of distinct random training images; n_unrelated new textures."""
    rng = np.random.default_rng(seed)
    train = [textured_image(rng, size) for _ in range(n_train)]
    sources = rng.choice(n_train, size=n_copies, replace=False)
    generated = [perturb(train[i], rng) for i in sources] + [textured_image(rng, size) for _ in range(n_unrelated)]
    truth: list[int | None] = [int(i) for i in sources] + [None] * n_unrelated
    return NearDuplicateSet(train=train, generated=generated, source=truth)
