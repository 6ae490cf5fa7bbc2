"""Fg/bg composition and the degenerate-mask rules of method.md §1.1-1.2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fbmem_data.fbmem.composition import (
    apply_rules,
    degenerate_rules,
    region_batch,
    resize_rgb,
    split_parts,
)


def test_split_parts_alpha_handling() -> None:
    rgb = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1).expand(1, 3, 2, 2).clone()
    mask = torch.tensor([[1.0, 0.0], [0.5, 0.25]]).view(1, 1, 2, 2)
    fg, bg = split_parts(rgb, mask)
    assert fg.shape == bg.shape == (1, 4, 2, 2)
    # foreground: premultiplied RGB over transparent black, alpha = mask
    assert torch.allclose(fg[0, :, 0, 0], torch.tensor([0.2, 0.4, 0.6, 1.0]))
    assert torch.allclose(fg[0, :, 0, 1], torch.zeros(4))
    assert torch.allclose(fg[0, :, 1, 0], torch.tensor([0.1, 0.2, 0.3, 0.5]))
    # background: painted white where the object is, soft-blended, opaque
    assert torch.allclose(bg[0, :, 0, 0], torch.ones(4))
    assert torch.allclose(bg[0, :, 0, 1], torch.tensor([0.2, 0.4, 0.6, 1.0]))
    assert torch.allclose(bg[0, :, 1, 1], torch.tensor([0.2 * 0.75 + 0.25, 0.4 * 0.75 + 0.25, 0.6 * 0.75 + 0.25, 1.0]))


def _parts(rgb_value: float, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    rgb = torch.full((1, 3, *mask.shape), rgb_value)
    return split_parts(rgb, torch.from_numpy(mask.astype(np.float32))[None, None])


def test_object_filling_the_frame_uses_fg_for_both() -> None:
    full = np.ones((100, 100))
    assert degenerate_rules(*_parts(0.5, full)) == ["fg_both"]
    almost = full.copy()
    almost[:4] = 0.0  # 96% object: 4% of the background is grey, not white -> no rule
    assert degenerate_rules(*_parts(0.5, almost)) == ["none"]
    almost[:2] = 1.0  # 98% object
    assert degenerate_rules(*_parts(0.5, almost)) == ["fg_both"]


def test_no_object_uses_bg_for_both() -> None:
    empty = np.zeros((100, 100))
    assert degenerate_rules(*_parts(0.5, empty)) == ["bg_both"]
    some = empty.copy()
    some[:5] = 1.0  # 5% object of grey pixels: fg is 95% black -> no rule
    assert degenerate_rules(*_parts(0.5, some)) == ["none"]
    # a dark object (grayscale < 0.03) counts as black: no visible object
    assert degenerate_rules(*_parts(0.02, some)) == ["bg_both"]


def test_white_background_photo_counts_as_filled_frame() -> None:
    # >97% of the background part white because the photo's background IS white: fg_both (first rule wins)
    mask = np.zeros((100, 100))
    mask[40:60, 40:60] = 1.0
    rgb = torch.ones(1, 3, 100, 100)
    fg, bg = split_parts(rgb, torch.from_numpy(mask.astype(np.float32))[None, None])
    assert degenerate_rules(fg, bg) == ["fg_both"]


def test_apply_rules() -> None:
    fg = torch.tensor([0.9, 0.9, 0.9])
    bg = torch.tensor([0.2, 0.2, 0.2])
    new_fg, new_bg = apply_rules(fg, bg, ["none", "fg_both", "bg_both"])
    assert new_fg.tolist() == pytest.approx([0.9, 0.9, 0.2])
    assert new_bg.tolist() == pytest.approx([0.2, 0.9, 0.2])


def test_region_batch_resizes_with_lanczos() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    mask = np.zeros((300, 200), np.uint8)
    mask[100:200, 50:150] = 255
    batch = region_batch([img, img[:64, :64]], [mask, mask[:64, :64]], 64)
    expected = np.asarray(Image.fromarray(img).resize((64, 64), Image.Resampling.LANCZOS)).astype(np.float32) / 255
    m = batch.mask[0, 0].numpy()
    assert batch.fg.shape == (2, 4, 64, 64) and batch.bg.shape == (2, 4, 64, 64)
    np.testing.assert_allclose(batch.bg[0, :3].permute(1, 2, 0).numpy(), expected * (1 - m[..., None]) + m[..., None], atol=1e-6)
    assert resize_rgb(img[:64, :64], 64) is not None and np.array_equal(resize_rgb(img[:64, :64], 64), img[:64, :64])
