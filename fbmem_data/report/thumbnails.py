"""Small JPEG thumbnails with the foreground mask's outline drawn on, one per image.

One thumbnail per image (not per card): a training image that is the best match of many generations is
encoded once, which keeps a 10,000-generation report small.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fbmem_data.errors import FbmemError

OUTLINE_RGB = (255, 221, 0)  # yellow line on a dark halo: visible on light and dark images
HALO_RGB = (0, 0, 0)


def _load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im.draft("RGB", (512, 512))  # JPEG: decode at reduced scale, far faster for big photos
        return np.asarray(im.convert("RGB"))


def make_thumbnail(path: Path, mask_png: bytes | None, size: int = 128, quality: int = 80) -> bytes:
    """JPEG bytes of the image at `path`, longest side `size`, with the mask's outline (if given).

    Raises:
        OSError / ValueError: the image does not decode; InputError: the mask does not.
    """
    import cv2

    from fbmem_data.fbmem.images import decode_mask

    rgb = _load_rgb(path)
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST
    thumb = np.ascontiguousarray(cv2.resize(rgb, (tw, th), interpolation=interp))
    if mask_png is not None:
        mask = cv2.resize(decode_mask(mask_png), (tw, th), interpolation=cv2.INTER_LINEAR)
        contours, _ = cv2.findContours((mask >= 128).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(thumb, contours, -1, HALO_RGB, 3, lineType=cv2.LINE_AA)
        cv2.drawContours(thumb, contours, -1, OUTLINE_RGB, 1, lineType=cv2.LINE_AA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(thumb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"could not JPEG-encode a thumbnail of {path}")
    return buf.tobytes()


def make_thumbnails(
    image_ids: Iterable[str],
    files: Mapping[str, Path],
    masks: Mapping[str, bytes],
    *,
    size: int = 128,
    quality: int = 80,
    workers: int | None = None,
) -> tuple[dict[str, bytes], dict[str, str]]:
    """Thumbnails of many images in a thread pool (PIL and OpenCV release the GIL).

    Returns:
        (thumbnails by image_id, errors by image_id: images with no stored file or that do not decode).
    """
    ids = list(dict.fromkeys(image_ids))
    thumbs: dict[str, bytes] = {}
    errors: dict[str, str] = {}

    def one(image_id: str) -> tuple[str, bytes | None, str | None]:
        path = files.get(image_id)
        if path is None:
            return image_id, None, "no stored file"
        try:
            return image_id, make_thumbnail(path, masks.get(image_id), size, quality), None
        except (OSError, ValueError, FbmemError) as exc:
            return image_id, None, f"{type(exc).__name__}: {exc}"

    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for image_id, data, error in pool.map(one, ids, chunksize=32):
            if data is not None:
                thumbs[image_id] = data
            else:
                errors[image_id] = error or "unknown"
    return thumbs, errors
