"""Synthetic scenes with known foreground/background truth: textured objects on textured backgrounds.

Used by the tests and by the planted-truth evaluation in benchmarks/bench_scorer.py. Every scene is
built from a seed, so a case can be regenerated exactly. Colours of backgrounds and objects come from
disjoint palettes (backgrounds muted, objects saturated) so that a salient-object segmenter has a
fair chance; the metric evaluation can use the exact masks instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_BG_PALETTES = [
    ((0.55, 0.62, 0.50), (0.35, 0.42, 0.30)),  # moss
    ((0.62, 0.58, 0.52), (0.42, 0.38, 0.34)),  # sand/stone
    ((0.50, 0.56, 0.66), (0.30, 0.36, 0.48)),  # slate
    ((0.66, 0.60, 0.46), (0.48, 0.40, 0.28)),  # wood
    ((0.52, 0.52, 0.54), (0.28, 0.28, 0.30)),  # concrete
    ((0.60, 0.50, 0.55), (0.40, 0.30, 0.36)),  # mauve
]
_OBJ_PALETTES = [
    ((0.95, 0.15, 0.10), (0.70, 0.05, 0.30)),  # red/crimson
    ((0.10, 0.30, 0.95), (0.05, 0.75, 0.95)),  # blue/cyan
    ((0.98, 0.85, 0.05), (0.95, 0.45, 0.00)),  # yellow/orange
    ((0.10, 0.90, 0.20), (0.00, 0.45, 0.10)),  # green
    ((0.85, 0.10, 0.90), (0.40, 0.00, 0.60)),  # magenta/purple
    ((0.98, 0.98, 0.98), (0.05, 0.05, 0.05)),  # black/white checker-ish
]


def texture(
    rng: np.random.Generator, size: int, palette: tuple[tuple[float, ...], ...], scale: float, noise: float = 0.6
) -> np.ndarray:
    """A size x size x 3 float texture: random oriented sinusoids + noise mixing two palette colours."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    field = np.zeros((size, size), np.float32)
    for _ in range(3):
        theta = rng.uniform(0, np.pi)
        freq = rng.uniform(4, 14) * scale
        phase = rng.uniform(0, 2 * np.pi)
        field += np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
    field += rng.normal(0, noise, field.shape).astype(np.float32)
    t = 1 / (1 + np.exp(-1.5 * field))
    c0, c1 = (np.asarray(c, np.float32) for c in palette)
    img = t[..., None] * c0 + (1 - t[..., None]) * c1
    return np.clip(img, 0, 1).astype(np.float32)


def shape_mask(rng: np.random.Generator, size: int, area_fraction: float, center: tuple[float, float] | None = None) -> np.ndarray:
    """A binary float mask of a random ellipse or polygon covering about `area_fraction` of the image."""
    import cv2

    mask = np.zeros((size, size), np.uint8)
    cy, cx = center if center is not None else (rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6))
    radius = np.sqrt(area_fraction / np.pi) * size
    kind = rng.integers(0, 2)
    if kind == 0:
        ratio = rng.uniform(0.7, 1.4)
        axes = (max(2, int(radius * ratio)), max(2, int(radius / ratio)))
        cv2.ellipse(mask, (int(cx * size), int(cy * size)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    else:
        n = int(rng.integers(5, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = radius * rng.uniform(0.85, 1.25, n)
        pts = np.stack([cx * size + radii * np.cos(angles), cy * size + radii * np.sin(angles)], 1)
        cv2.fillPoly(mask, [pts.astype(np.int32)], 1)
    return mask.astype(np.float32)


def paste(background: np.ndarray, obj: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None]
    return (obj * m + background * (1 - m)).astype(np.float32)


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


@dataclass
class PlantedPair:
    """A generated/training pair with its true label and exact masks (float HxWx3 images in [0, 1])."""

    truth: str  # VM | FM | BM | NM
    generated: np.ndarray
    train: np.ndarray
    generated_mask: np.ndarray
    train_mask: np.ndarray


def planted_pair(
    seed: int, truth: str, size: int = 256, area: float = 0.12, noise: float = 0.0, object_scale: float = 0.3
) -> PlantedPair:
    """One planted case.

    VM: the same scene (plus `noise`); FM: the same object (texture + shape + place) on another
    background; BM: the same background under a different object; NM: everything different.
    `area` is the object's share of the image; `object_scale` the spatial frequency of object textures
    relative to background textures (lower = smoother objects).
    """
    rng = np.random.default_rng(seed)
    bg_a, bg_b = rng.choice(len(_BG_PALETTES), 2, replace=False)
    ob_a, ob_b = rng.choice(len(_OBJ_PALETTES), 2, replace=False)
    bg1 = texture(rng, size, _BG_PALETTES[bg_a], 1.0)
    bg2 = texture(rng, size, _BG_PALETTES[bg_b], 1.0)
    obj1 = texture(rng, size, _OBJ_PALETTES[ob_a], object_scale, noise=0.2)
    obj2 = texture(rng, size, _OBJ_PALETTES[ob_b], object_scale, noise=0.2)
    m1 = shape_mask(rng, size, area)
    m2 = shape_mask(rng, size, area)
    train = paste(bg1, obj1, m1)
    if truth == "VM":
        gen, gm = train.copy(), m1
    elif truth == "FM":
        gen, gm = paste(bg2, obj1, m1), m1
    elif truth == "BM":
        gen, gm = paste(bg1, obj2, m2), m2
    elif truth == "NM":
        gen, gm = paste(bg2, obj2, m2), m2
    else:
        raise ValueError(f"unknown truth {truth!r}")
    if noise > 0:
        gen = np.clip(gen + rng.normal(0, noise, gen.shape).astype(np.float32), 0, 1)
    return PlantedPair(truth, gen.astype(np.float32), train, gm, m1)
