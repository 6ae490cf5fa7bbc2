"""Decide from the bytes alone whether a download is an image: never from the extension or header."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from fbmem_data.fetch.statuses import DECODE_ERROR, NOT_IMAGE, OK, TOO_LARGE

# PIL format -> the extension fbmem stores the original bytes under.
_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif"}

# Leading bytes of the formats the web serves. A body that starts like an image but that PIL
# cannot even identify is a damaged image (decode_error), not something else (not_image).
_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


def sniff_format(data: bytes) -> str | None:
    """The image format `data` announces by its magic bytes, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for sig, fmt in _SIGNATURES.items() if data.startswith(sig)), None)


# Pixel cap against decompression bombs (a 50 kB PNG can claim 100k x 100k pixels): 16k x 16k.
DEFAULT_MAX_PIXELS = 16_384 * 16_384


@dataclass(frozen=True)
class ImageCheck:
    """The verdict on one body: status ok with its geometry, or a failure status with the reason."""

    status: str
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    format: str | None = None
    error: str | None = None

    @property
    def extension(self) -> str:
        return _EXTENSIONS.get(self.format or "", (self.format or "bin").lower())


def check_image_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageCheck:
    """Identify, verify and fully decode `data` with PIL.

    Args:
        data: the whole body.
        max_pixels: width * height above which the image is refused as too_large.

    Returns:
        ImageCheck with status ok, not_image (PIL recognises no image format: HTML, text, empty),
        decode_error (a known format whose data is truncated or damaged) or too_large.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        return ImageCheck(NOT_IMAGE, error="empty body")
    fmt: str | None = None
    try:
        with warnings.catch_warnings():
            # Our own pixel cap decides; PIL's bomb warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                fmt, (width, height), mode = probe.format, probe.size, probe.mode
                if width <= 0 or height <= 0:
                    return ImageCheck(DECODE_ERROR, format=fmt, error=f"image size {width}x{height}")
                if width * height > max_pixels:
                    return ImageCheck(
                        TOO_LARGE, width, height, mode, fmt, f"{width}x{height} pixels exceeds {max_pixels}"
                    )
                probe.verify()  # structure and checksums (PNG CRCs), without decoding pixels
            # verify() leaves the image unusable: decode a fresh one to catch truncated pixel data.
            with Image.open(io.BytesIO(data)) as image:
                image.load()
    except UnidentifiedImageError:
        sniffed = sniff_format(data)
        if sniffed is not None:
            return ImageCheck(DECODE_ERROR, format=sniffed, error=f"starts like {sniffed} but does not decode")
        head = data[:64].lstrip().lower()
        what = "HTML" if head.startswith((b"<!doctype html", b"<html")) else "no image format PIL recognises"
        return ImageCheck(NOT_IMAGE, error=f"body is {what}")
    except Image.DecompressionBombError as exc:
        return ImageCheck(TOO_LARGE, error=str(exc))
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # PIL reports truncated/damaged data as OSError ("image file is truncated"), SyntaxError (bad
        # chunk), ValueError or EOFError depending on the plug-in.
        return ImageCheck(DECODE_ERROR, format=fmt, error=f"{type(exc).__name__}: {exc}")
    return ImageCheck(OK, width, height, mode, fmt)
