"""Parts built the way the paper's released code builds them (`--preset paper`).

The released scorer segments with rembg (BiRefNet), writes the parts to image files and compares what
it reads back. Every step that changes a pixel is reproduced here, in uint8 as the files hold them:

- foreground cut-out: rembg's cut-out (alpha matting is asked for with a foreground threshold of 270,
  which no uint8 mask reaches, so rembg falls back to its plain cut-out): RGBA = (R·m, G·m, B·m, m),
  each channel rounded to uint8 (Pillow's blend of the image over transparent black through m);
- background: the image with the mask pasted over it as grey through itself:
  RGB = R·(1−m) + m·m (in 0..255 units: round((R·(255−m) + m²)/255)), opaque;
- training parts are read back from PNG (lossless), converted to RGBA and resized to 512x512 with
  Pillow's LANCZOS (which for RGBA works on alpha-premultiplied values);
- generated parts are saved as RGB JPEG (Pillow's default quality 75) and, from the second
  comparison of a generated image on, read back as RGBA with alpha 1 ("cached", the default here);
  the very first comparison of a generated image in a fresh run used the in-memory parts instead
  ("fresh": foreground alpha = m). Which training image that first comparison met depends on file
  order, so fbmem scores every pair the way the reference scores all the others;
- degenerate masks are judged on the generated JPEG parts in Pillow's "L": more than 97% of the
  background above 0.97 -> the generated background is replaced by the generated foreground part
  ("fg_both"); else more than 97% of the foreground below 0.03 -> the generated foreground is
  replaced by the background part ("bg_both"). The training parts are kept, so the two scores of a
  degenerate pair still differ.

The whole-image baseline (the reference's `--no_segment`) compares the images themselves as RGBA with
alpha 1, resized like the training parts; both scores are that one similarity.
"""

from __future__ import annotations

import io

import numpy as np

JPEG_QUALITY = 75  # Pillow's default for `.save("x.jpg")`, what the reference cache used
WHITE_LEVEL = 0.97
BLACK_LEVEL = 0.03
DEGENERATE_SHARE = 0.97
COMPOSITIONS = ("fbmem", "reference", "reference-fresh", "whole-image")


def _div255(v: np.ndarray) -> np.ndarray:
    """Pillow's rounding division by 255 of uint8 products (exact round(v / 255); no ties exist)."""
    t = v.astype(np.int32) + 128
    return (((t >> 8) + t) >> 8).astype(np.uint8)


def cutout(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 image, uint8 HxW mask -> uint8 HxWx4 cut-out (round(R·m/255), ..., m)."""
    m = mask.astype(np.int32)[..., None]
    return np.concatenate([_div255(rgb.astype(np.int32) * m), mask[..., None]], axis=-1)


def painted_background(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 -> uint8 HxWx3: the mask pasted as grey through itself, round((R(255-m) + m²)/255)."""
    m = mask.astype(np.int32)[..., None]
    return _div255(rgb.astype(np.int32) * (255 - m) + m * m)


def opaque(rgb: np.ndarray) -> np.ndarray:
    """RGB -> RGBA with alpha 255 (Pillow's convert("RGBA"))."""
    return np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=-1)


def resize_rgba(rgba: np.ndarray, size: int) -> np.ndarray:
    """Pillow LANCZOS resize of an RGBA image to size x size (premultiplied inside Pillow); no-op if equal."""
    from PIL import Image

    if rgba.shape[0] == size and rgba.shape[1] == size:
        return rgba
    return np.asarray(Image.fromarray(rgba, "RGBA").resize((size, size), Image.Resampling.LANCZOS))


def jpeg_roundtrip(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """Save as JPEG with Pillow's defaults and read back (uint8 HxWx3)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def luma(rgb: np.ndarray) -> np.ndarray:
    """Pillow's "L" conversion of uint8 RGB."""
    from PIL import Image

    return np.asarray(Image.fromarray(rgb, "RGB").convert("L"))


def degenerate_rule(fg_rgb: np.ndarray, bg_rgb: np.ndarray) -> str:
    """The reference rule on a generated image's (JPEG) parts: "fg_both", "bg_both" or "none"."""
    bg_l = luma(bg_rgb) / 255.0
    if np.count_nonzero(bg_l > WHITE_LEVEL) / bg_l.size > DEGENERATE_SHARE:
        return "fg_both"
    fg_l = luma(fg_rgb) / 255.0
    if np.count_nonzero(fg_l < BLACK_LEVEL) / fg_l.size > DEGENERATE_SHARE:
        return "bg_both"
    return "none"


def train_parts(rgb: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Training image -> (fg, bg) uint8 size x size x 4, as the reference reads its PNG parts."""
    return resize_rgba(cutout(rgb, mask), size), resize_rgba(opaque(painted_background(rgb, mask)), size)


def generated_parts(rgb: np.ndarray, mask: np.ndarray, size: int, cached: bool = True) -> tuple[np.ndarray, np.ndarray, str]:
    """Generated image -> (fg, bg, rule): parts before the degenerate substitution, size x size x 4.

    cached: the JPEG read-back (alpha 1) the reference compares all but a fresh run's first pair with;
    False: the in-memory parts of that first comparison. The rule is judged on the JPEG parts either way.
    A generated image of another size than `size` (image and mask) is first resized to `size` with
    LANCZOS: the reference only met generated images at the comparison size (512) and never resizes
    them, so its parts, JPEG cache included, were made at that size. (Cutting out and JPEG-caching a
    64 px lab image, then upsampling, would add damage the reference never had.)
    """
    from fbmem_data.fbmem.composition import resize_mask, resize_rgb

    rgb, mask = resize_rgb(rgb, size), resize_mask(mask, size)
    fg = cutout(rgb, mask)
    bg_rgb = painted_background(rgb, mask)
    fg_jpeg = jpeg_roundtrip(np.ascontiguousarray(fg[..., :3]))
    bg_jpeg = jpeg_roundtrip(bg_rgb)
    rule = degenerate_rule(fg_jpeg, bg_jpeg)
    if cached:
        return opaque(fg_jpeg), opaque(bg_jpeg), rule
    return fg, opaque(bg_rgb), rule


def substitute(fg: np.ndarray, bg: np.ndarray, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """The reference's degenerate rule: replace the generated part, not the score."""
    if rule == "fg_both":
        return fg, fg
    if rule == "bg_both":
        return bg, bg
    return fg, bg


def whole_image(rgb: np.ndarray, size: int) -> np.ndarray:
    """The `--no_segment` input: the image as RGBA with alpha 1, LANCZOS-resized to size x size."""
    return resize_rgba(opaque(rgb), size)
