"""Decide from the bytes alone whether a download is an image: never from the extension or header.

The decoding itself is the image pipeline's `fbmem_data.ingest.decode.probe_bytes` (one decoder for
files and downloads); this module maps its verdict to fetch statuses:
ok -> ok, too_large -> too_large, corrupt -> decode_error (starts like an image, does not decode),
unsupported -> not_image (HTML, text, anything PIL and the magic numbers do not recognise).
"""

from __future__ import annotations

from dataclasses import dataclass

from fbmem_data.fetch.statuses import DECODE_ERROR, NOT_IMAGE, OK, TOO_LARGE

# Pixel cap against decompression bombs (a 50 kB PNG can claim 100k x 100k pixels): 16k x 16k.
DEFAULT_MAX_PIXELS = 16_384 * 16_384

_STATUS_FROM_PROBE = {"ok": OK, "too_large": TOO_LARGE, "corrupt": DECODE_ERROR, "unsupported": NOT_IMAGE}


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
        from fbmem_data.ingest.decode import store_extension

        return store_extension(self.format, "")


def check_image_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageCheck:
    """Identify and fully decode `data` with PIL (via the ingest pipeline's probe).

    Args:
        data: the whole body.
        max_pixels: width * height above which the image is refused as too_large (not decoded).

    Returns:
        ImageCheck with status ok, not_image, decode_error or too_large.
    """
    from fbmem_data.ingest.decode import probe_bytes

    if not data:
        return ImageCheck(NOT_IMAGE, error="empty body")
    # No file name: the name would let an extension vouch for the bytes, which a URL must not.
    info = probe_bytes(data, "", max_pixels)
    status = _STATUS_FROM_PROBE.get(str(info["status"]), DECODE_ERROR)
    error = info.get("error")
    if status == NOT_IMAGE and data[:64].lstrip().lower().startswith((b"<!doctype html", b"<html")):
        error = "body is HTML"
    return ImageCheck(
        status,
        width=info.get("width"),  # type: ignore[arg-type]
        height=info.get("height"),  # type: ignore[arg-type]
        mode=info.get("mode"),  # type: ignore[arg-type]
        format=info.get("format"),  # type: ignore[arg-type]
        error=None if status == OK else str(error),
    )
