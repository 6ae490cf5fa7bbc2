"""`thumbnail`: a weights-free pixel embedding that runs anywhere.

The image is shrunk to size x size by area averaging (BOX), converted to CIE LAB (so distances
follow perceived colour differences), each channel's mean is subtracted (a global brightness or
colour cast does not move the vector) and the result is flattened and L2-normalised. Near copies
(noise, JPEG, small crops, brightness changes) stay close; it knows nothing about semantics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fbmem_data.devices import resolve_device
from fbmem_data.embed.base import as_rgb, l2_normalise
from fbmem_data.errors import InputError

if TYPE_CHECKING:
    from PIL import Image

# The colour space's name in params(): CIE L*a*b*, unrelated to the memorization lab. It is part of every
# stored thumbnail embedding id, so its text stays as it is.
CIELAB = "lab"


class ThumbnailEmbedder:
    """Mean-centred LAB thumbnail, dim = 3 * size * size (768 for the default 16).

    Computed with NumPy/OpenCV on the CPU whatever `device` says (it is cheaper than a transfer).
    """

    name = "thumbnail"

    def __init__(self, size: int = 16, device: str | None = "auto") -> None:
        if not 2 <= int(size) <= 256:
            raise InputError(f"thumbnail size must be between 2 and 256, got {size}")
        resolve_device(device)  # reject malformed device names like every embedder does
        self.size = int(size)
        self.dim = 3 * self.size * self.size
        self.device = "cpu"

    def params(self) -> dict[str, Any]:
        return {"size": self.size, "space": CIELAB, "centre": "channel-mean", "resample": "box", "version": 1}

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        import cv2
        from PIL import Image

        rgb = as_rgb(images)
        if not rgb:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows = []
        for img in rgb:
            small = np.asarray(img.resize((self.size, self.size), Image.BOX), dtype=np.float32) / 255.0
            lab = cv2.cvtColor(small, cv2.COLOR_RGB2Lab)
            lab -= lab.reshape(-1, 3).mean(axis=0)
            rows.append(lab.reshape(-1))
        return l2_normalise(np.stack(rows))
