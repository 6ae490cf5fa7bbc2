"""Degradations that turn a real photo into a near-verbatim copy (the `real-photos` test bed).

Each family is one realistic way a copy can differ from its source without ceasing to be a copy.
Parameters are drawn from a seeded numpy generator, so a copy is reproducible from its seed.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np

FAMILIES = ("jpeg", "crop", "shift", "gain", "noise", "blur", "vae", "combo")


def square(img: np.ndarray, size: int) -> np.ndarray:
    """Resize (not crop) to size x size with LANCZOS: 'resize to square' changes the aspect ratio."""
    from PIL import Image

    return np.asarray(Image.fromarray(img).convert("RGB").resize((size, size), Image.Resampling.LANCZOS))


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def crop(img: np.ndarray, fraction: float) -> np.ndarray:
    """Cut `fraction` of the side off (split over the two edges) and resize back."""
    h, w = img.shape[:2]
    dy, dx = round(h * fraction / 2), round(w * fraction / 2)
    return square(img[dy : h - dy, dx : w - dx], h)


def shift(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate by (dy, dx) pixels; the uncovered strip repeats the edge (as a re-framing would)."""
    h, w = img.shape[:2]
    padded = np.pad(img, ((abs(dy), abs(dy)), (abs(dx), abs(dx)), (0, 0)), mode="edge")
    return padded[abs(dy) - dy : abs(dy) - dy + h, abs(dx) - dx : abs(dx) - dx + w].copy()


def gain(img: np.ndarray, gains: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img.astype(np.float32) * gains[None, None, :]), 0, 255).astype(np.uint8)


def noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    out = img.astype(np.float32) + rng.normal(0, sigma, img.shape).astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(img, (0, 0), sigmaX=float(sigma))


def vae_round_trip(img: np.ndarray) -> np.ndarray:
    """Encode and decode with the lab model's VAE (a diffusion model's re-render of the pixels)."""
    import torch

    from fbmem_data.lab.pipeline import default_weights_dir, load_lab_vae

    vae = _vae_cache.get("vae")
    if vae is None:
        vae = _vae_cache.setdefault("vae", load_lab_vae(default_weights_dir()).eval())
    x = torch.from_numpy(img.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.inference_mode():
        latents = vae.encode(x).latent_dist.mean
        out = vae.decode(latents).sample
    out = ((out[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    return out


_vae_cache: dict[str, Any] = {}


def degrade(img: np.ndarray, family: str, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Apply one family with parameters drawn from `rng`; returns (image, description)."""
    steps: dict[str, Callable[[], tuple[np.ndarray, str]]] = {
        "jpeg": lambda: (lambda q: (jpeg(img, q), f"jpeg q{q}"))(int(rng.integers(50, 96))),
        "crop": lambda: (lambda f: (crop(img, f), f"crop {f:.1%}"))(float(rng.uniform(0.02, 0.06))),
        "shift": lambda: (lambda d: (shift(img, int(d[0]), int(d[1])), f"shift {d[0]},{d[1]} px"))(
            rng.integers(2, 7, 2) * rng.choice([-1, 1], 2)
        ),
        "gain": lambda: (lambda g: (gain(img, g), "gain " + "/".join(f"{v:.2f}" for v in g)))(
            rng.uniform(0.9, 1.1, 3)
        ),
        "noise": lambda: (lambda s: (noise(img, s, rng), f"noise sigma {s:.1f}"))(float(rng.uniform(2, 6))),
        "blur": lambda: (lambda s: (blur(img, s), f"blur sigma {s:.2f}"))(float(rng.uniform(0.5, 1.2))),
        "vae": lambda: (vae_round_trip(img), "lab-VAE round trip"),
        "combo": lambda: _combo(img, rng),
    }
    if family not in steps:
        raise ValueError(f"unknown degradation {family!r}")
    return steps[family]()


def _combo(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """JPEG + colour gain + noise together (the near-copy a user first tried)."""
    q = int(rng.integers(60, 91))
    g = rng.uniform(0.95, 1.05, 3)
    s = float(rng.uniform(2, 4))
    return jpeg(noise(gain(img, g), s, rng), q), f"gain+noise {s:.1f}+jpeg q{q}"
