"""16-bit grayscale images must keep their tonal range when scored or embedded (PIL's convert clips)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from fbmem_data.embed.base import as_rgb
from fbmem_data.fbmem.images import load_rgb
from fbmem_data.workspace import Workspace


def _sixteen_bit_ramp() -> Image.Image:
    ramp = np.tile(np.linspace(0, 65535, 64, dtype=np.uint16), (16, 1))
    img = Image.fromarray(ramp)
    assert img.mode.startswith("I;16"), img.mode
    return img


def test_load_rgb_scales_sixteen_bit(workspace: Workspace) -> None:
    buf = io.BytesIO()
    _sixteen_bit_ramp().save(buf, format="PNG")
    image_id, _ = workspace.store_image(buf.getvalue(), "png")
    rgb = load_rgb(workspace, image_id)
    assert rgb.shape == (16, 64, 3) and rgb.dtype == np.uint8
    row = rgb[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert (row < 250).mean() > 0.9  # clipping at 255 would make ~all of it white


def test_embedder_input_scales_sixteen_bit() -> None:
    (rgb,) = as_rgb([_sixteen_bit_ramp()])
    row = np.asarray(rgb)[0, :, 0].astype(int)
    assert rgb.mode == "RGB" and row[-1] == 255 and (row < 250).mean() > 0.9
