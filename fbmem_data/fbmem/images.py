"""Reading stored images and masks as arrays (shared by segmenting and scoring)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fbmem_data.errors import InputError

if TYPE_CHECKING:
    from pathlib import Path

    from fbmem_data.workspace import Workspace


def load_rgb(ws: Workspace, image_id: str, store_path: str | None = None) -> np.ndarray:
    """A stored image as uint8 HxWx3 RGB (16-bit scaled, not clipped; palette/alpha through RGBA).

    Raises:
        WorkspaceError: the image is not in the store.
        InputError: the stored bytes do not decode.
    """
    from PIL import Image, UnidentifiedImageError

    from fbmem_data.ingest.decode import to_rgb

    path = ws.root / store_path if store_path else ws.image_path(image_id)
    if not path.exists():
        path = ws.image_path(image_id)
    try:
        with Image.open(path) as im:
            return np.asarray(to_rgb(im))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"image {image_id} ({path.name}) does not decode: {exc}") from exc


def decode_rgb(data: bytes, image_id: str, path: Path) -> np.ndarray:
    """Image bytes -> uint8 HxWx3 RGB, decoded exactly as load_rgb decodes a file (what a job's batch
    function receives: the engine reads the file, the batch function decodes it).

    Raises:
        InputError: the bytes do not decode (the message names the file as load_rgb's does).
    """
    from PIL import Image, UnidentifiedImageError

    from fbmem_data.distribute.shards import file_bytes
    from fbmem_data.ingest.decode import to_rgb

    try:
        with Image.open(file_bytes(data, path)) as im:
            return np.asarray(to_rgb(im))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"image {image_id} ({path.name}) does not decode: {exc}") from exc


def encode_mask(mask: np.ndarray) -> bytes:
    """float mask in [0, 1] -> PNG bytes of its uint8 quantisation."""
    import cv2

    u8 = np.round(np.clip(mask, 0.0, 1.0) * 255).astype(np.uint8)
    ok, buf = cv2.imencode(".png", u8)
    if not ok:
        raise InputError("could not PNG-encode a mask")
    return buf.tobytes()


def decode_mask(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 HxW mask (0..255)."""
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.ndim != 2:
        raise InputError("stored mask is not a single-channel PNG")
    return arr
