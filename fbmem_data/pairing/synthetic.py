"""Synthetic near-duplicate sets with known truth, for pairing tests and benchmarks.

Training images are random textures (a smooth colour field, stripes and a few shapes); generated
images are perturbed copies of some of them (noise, brightness/contrast, a small crop, JPEG) plus
unrelated textures. The truth says which training image each copy came from.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np


def textured_image(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A random (size, size, 3) uint8 texture."""
    from PIL import Image, ImageDraw

    grid = rng.integers(0, 256, size=(int(rng.integers(3, 7)),) * 2 + (3,), dtype=np.uint8)
    field = np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC), dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle, freq = rng.uniform(0, np.pi), rng.uniform(2, 8)
    stripes = np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 6.3))
    field += stripes[..., None] * rng.uniform(10, 50, size=3)
    img = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = rng.integers(0, size - 8, size=2)
        w, h = rng.integers(6, size // 2, size=2)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        box = [int(x0), int(y0), int(x0 + w), int(y0 + h)]
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return np.asarray(img)


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
