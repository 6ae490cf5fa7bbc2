"""Per-file work of the image pipeline, run in worker processes: read, hash, probe, store.

Status rules (the `images.status` column):
- ok: PIL decodes the whole file. The mode is recorded as PIL reports it (RGB, RGBA, L, LA, P,
  CMYK, I;16, ...); downstream code converts to RGB/RGBA. A wrong extension is fine: the format
  comes from the content.
- too_large: the header says width x height > max_pixels. Decided from the header alone (PIL's
  DecompressionBombError included), so a 20,000 x 20,000 image is never decoded.
- corrupt: empty, truncated or undecodable, where the content or the name says it is an image.
- unsupported: neither the content nor the file name looks like an image (a text file).
- missing: the file does not exist (a manifest entry with no file).
- outside: a symlink or manifest path leading out of the ingested folder; nothing is read.
- too_large also: the file is larger than max_bytes (by its size on disk); nothing is read.

Files that are not images (unsupported) and files never read are not copied into the store.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".jfif", ".ppm", ".pgm", ".pbm", ".ico"}
)
# Magic numbers of the formats above, to tell a damaged image from a file that is no image at all.
_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"\x00\x00\x01\x00")
_STORE_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif", "MPO": "jpg"}

# Where os.sync exists, stored files are flushed once per batch instead of one fsync per file.
BATCH_SYNC = hasattr(os, "sync")
# Set in each worker by init_worker: image ids already stored under this ingest's role.
_KNOWN_IDS: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ImageItem:
    """One input file. Its bytes are at `path` (a file), `path`+`offset`/`size` (a plain tar
    member, read directly), or in `data` (a member of a compressed tar)."""

    uri: str
    name: str
    path: str | None = None
    offset: int | None = None
    size: int | None = None
    data: bytes | None = None
    outside: str | None = None  # where a symlink/manifest path really leads, if out of the folder


@dataclass(frozen=True)
class Probe:
    """What a worker found out about one ImageItem (a row of `images` without role/run/time)."""

    uri: str
    image_id: str | None
    status: str
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    format: str | None = None
    n_bytes: int | None = None
    error: str | None = None
    store_path: str | None = None
    already_stored: bool = False


def init_worker(known_ids: frozenset[str]) -> None:
    global _KNOWN_IDS
    _KNOWN_IDS = known_ids


# Default size cap per input file: above any real training or generated image, below a memory spike.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


def item_size(item: ImageItem) -> int | None:
    """The input's size in bytes without reading it (None if it cannot be known)."""
    if item.data is not None:
        return len(item.data)
    if item.size is not None:
        return item.size
    if item.path is None:
        return None
    try:
        return os.stat(item.path).st_size
    except OSError:
        return None


def read_bytes(item: ImageItem, limit: int = -1) -> bytes:
    """The input's bytes; at most `limit` + 1 of them when limit >= 0 (a file that grew past the cap
    after its size was checked is then seen as too large, never read whole)."""
    if item.data is not None:
        return item.data
    if item.path is None:
        raise FileNotFoundError(item.uri)
    with open(item.path, "rb") as fh:
        if item.offset is not None:
            fh.seek(item.offset)
            n = item.size if item.size is not None else -1
            return fh.read(n if limit < 0 or n < 0 else min(n, limit + 1))
        return fh.read(limit + 1 if limit >= 0 else -1)


def looks_like_image(data: bytes, name: str) -> bool:
    if PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES:
        return True
    return data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def probe_bytes(data: bytes, name: str, max_pixels: int) -> dict[str, object]:
    """Decode `data` just enough to classify it. Returns the Probe fields except uri/id/store."""
    from PIL import Image, UnidentifiedImageError

    info: dict[str, object] = {"n_bytes": len(data)}
    if not data:
        return {**info, "status": "corrupt", "error": "empty file (0 bytes)"}
    # Our own limit is checked right after reading the header; PIL's bomb check stays as the
    # backstop (at max_pixels) and the caller's setting is restored afterwards.
    saved_limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = None
            try:
                img = Image.open(io.BytesIO(data))
            finally:
                Image.MAX_IMAGE_PIXELS = max_pixels
            with img:
                width, height = img.size
                info.update(width=width, height=height, mode=img.mode, format=img.format)
                if width * height > max_pixels:
                    return {**info, "status": "too_large",
                            "error": f"{width}x{height} = {width * height} pixels exceeds max_pixels {max_pixels}; not decoded"}
                img.load()  # full decode: finds truncation and bad data
    except Image.DecompressionBombError as exc:
        return {**info, "status": "too_large", "error": f"{exc}; not decoded"}
    except UnidentifiedImageError:
        # PIL's own message names an in-memory buffer; say what the file starts with instead.
        status = "corrupt" if looks_like_image(data, name) else "unsupported"
        what = "not a decodable image" if status == "corrupt" else "not an image"
        return {**info, "status": status, "error": f"{what}: PIL cannot identify the format (starts {data[:12]!r})"}
    except Exception as exc:
        # PIL reports truncated and damaged data as OSError/SyntaxError/ValueError, and fuzzed
        # files as almost anything (struct.error, IndexError): each is a corrupt file, not a crash.
        return {**info, "status": "corrupt", "error": f"{type(exc).__name__}: {exc}"}
    finally:
        Image.MAX_IMAGE_PIXELS = saved_limit
    return {**info, "status": "ok", "error": None}


_SUFFIX_ALIASES = {"jpeg": "jpg", "jfif": "jpg", "jpe": "jpg", "tiff": "tif"}


def extension_mismatch(name: str, fmt: object) -> str | None:
    """A note when a decodable file's extension names another format (e.g. a PNG called .jpg)."""
    suffix = PurePosixPath(name).suffix.lower().lstrip(".")
    if not isinstance(fmt, str) or not suffix:
        return None
    expected = store_extension(fmt, name)
    if _SUFFIX_ALIASES.get(suffix, suffix) == expected:
        return None
    return f"{name}: content is {fmt} though the extension is .{suffix}; stored as .{expected}, nothing lost"


def store_extension(fmt: object, name: str) -> str:
    if isinstance(fmt, str) and fmt in _STORE_EXT:
        return _STORE_EXT[fmt]
    if isinstance(fmt, str) and fmt:
        return fmt.lower()
    return PurePosixPath(name).suffix.lower().lstrip(".") or "bin"


def process_item(item: ImageItem, workspace_root: str, max_pixels: int, max_bytes: int = DEFAULT_MAX_BYTES) -> Probe:
    """Read, hash, probe and store one input. Never raises for a bad file: it becomes a status.

    Inputs out of the ingested folder and inputs over `max_bytes` are not read at all; their id is
    derived from the uri, like a missing file's.
    """
    from fbmem_data.ids import missing_image_id
    from fbmem_data.workspace import Workspace

    if item.outside is not None:
        unread_id = missing_image_id(item.uri)
        return Probe(uri=item.uri, image_id=unread_id, status="outside",
                     error=f"leads outside the ingested folder (to {item.outside}); not read "
                           "(--allow-outside ingests it)", already_stored=unread_id in _KNOWN_IDS)
    size = item_size(item)
    if size is not None and size > max_bytes:
        unread_id = missing_image_id(item.uri)
        return Probe(uri=item.uri, image_id=unread_id, status="too_large", n_bytes=size,
                     error=f"{size} bytes exceeds max_bytes {max_bytes}; not read (raise --max-bytes to ingest it)",
                     already_stored=unread_id in _KNOWN_IDS)
    try:
        data = read_bytes(item, max_bytes)
    except OSError as exc:
        missing_id = missing_image_id(item.uri)
        error = f"file not found: {item.uri}" if isinstance(exc, FileNotFoundError) else f"cannot read {item.uri}: {exc}"
        return Probe(uri=item.uri, image_id=missing_id, status="missing", error=error,
                     already_stored=missing_id in _KNOWN_IDS)
    if len(data) > max_bytes:  # grew after the size check
        unread_id = missing_image_id(item.uri)
        return Probe(uri=item.uri, image_id=unread_id, status="too_large", n_bytes=len(data),
                     error=f"more than max_bytes {max_bytes} bytes; not stored", already_stored=unread_id in _KNOWN_IDS)
    image_id = hashlib.sha256(data).hexdigest()
    if image_id in _KNOWN_IDS:  # resumed run: stored under this role already, skip the decode
        return Probe(uri=item.uri, image_id=image_id, status="ok", n_bytes=len(data), already_stored=True)
    info = probe_bytes(data, item.name, max_pixels)
    if info["status"] == "unsupported":  # not an image: recorded, never copied into the image store
        return Probe(uri=item.uri, image_id=image_id, **info)  # type: ignore[arg-type]
    ws = Workspace(Path(workspace_root))
    # No fsync per file: the parent flushes once per batch (os.sync) before committing its rows.
    _, stored = ws.store_image(data, store_extension(info.get("format"), item.name), fsync=not BATCH_SYNC)
    return Probe(uri=item.uri, image_id=image_id, store_path=stored.relative_to(ws.root).as_posix(), **info)  # type: ignore[arg-type]


def process_batch(
    items: list[ImageItem], workspace_root: str, max_pixels: int, max_bytes: int = DEFAULT_MAX_BYTES
) -> list[Probe]:
    return [process_item(item, workspace_root, max_pixels, max_bytes) for item in items]


def to_rgb(img: Any) -> Any:
    """A PIL image of any recorded mode as 8-bit RGB, keeping its tonal range.

    PIL's own `convert("RGB")` clips 16/32-bit grayscale (I;16, I) at 255, which turns a 16-bit
    photo almost white; here those are scaled to 0..255 first. Palette images with transparency
    go through RGBA (PIL warns otherwise); CMYK, LA, L and friends use PIL's conversion.
    """
    import numpy as np
    from PIL import Image

    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode != "F":
            top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
            arr = arr * (255.0 / top)
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")
