"""What an image PATH holds: one file, a folder (recursive), a webdataset/img2dataset tar shard,
or an img2dataset output folder (shard tars or files, plus `*.parquet` / `*_stats.json` metadata).

Files that share a key with an image file (`000001.jpg` + `000001.txt` + `000001.json`) are side
files: the `.txt` is the caption, the `.json` may hold `url`/`caption`. Every other file is an input
and gets an `images` row, whatever it holds.
"""

from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from fbmem_data.errors import InputError
from fbmem_data.ingest.decode import DEFAULT_MAX_BYTES, IMAGE_SUFFIXES, ImageItem

_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


@dataclass
class SourceEntry:
    """One input file and what its side files say about it."""

    item: ImageItem
    key: str  # webdataset key (tar members) or file stem
    rel: str  # path relative to PATH (tar members: "shard.tar/member")
    caption: str | None = None
    url: str | None = None


@dataclass
class SourceListing:
    entries: list[SourceEntry] = field(default_factory=list)
    side_files: int = 0
    metadata_files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def is_tar(path: Path) -> bool:
    return path.name.lower().endswith(_TAR_SUFFIXES)


def _wds_key(member_name: str) -> tuple[str, str]:
    """(key, extension) of a webdataset member: the key ends at the first dot of the base name."""
    posix = PurePosixPath(member_name)
    base, _, ext = posix.name.partition(".")
    key = str(posix.parent / base) if str(posix.parent) != "." else base
    return key, "." + ext.lower() if ext else ""


def _is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def _side_info(text_by_ext: dict[str, bytes]) -> tuple[str | None, str | None]:
    caption = url = None
    if ".txt" in text_by_ext:
        caption = text_by_ext[".txt"].decode("utf-8", errors="replace").strip() or None
    if ".json" in text_by_ext:
        try:
            meta: Any = json.loads(text_by_ext[".json"].decode("utf-8", errors="replace"))
        except ValueError:
            meta = None
        if isinstance(meta, dict):
            url = meta.get("url") if isinstance(meta.get("url"), str) else None
            if caption is None and isinstance(meta.get("caption"), str):
                caption = meta["caption"].strip() or None
    return caption, url


def list_tar(path: Path, rel_prefix: str, listing: SourceListing, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Add a tar shard's members. Plain tars are read later by offset (workers read in parallel);
    compressed tars are read here, since seeking in them means decompressing from the start
    (members over max_bytes are not: the worker records them too_large from their size).

    Raises:
        InputError: the tar is damaged or not a tar.
    """
    try:
        compressed = False
        try:
            tar = tarfile.open(path, "r:")  # noqa: SIM115 - closed by the `with tar` below
        except tarfile.ReadError:
            tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by the `with tar` below
            compressed = True
        with tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            groups: dict[str, dict[str, tarfile.TarInfo]] = {}
            for m in members:
                key, ext = _wds_key(m.name)
                groups.setdefault(key, {})[m.name] = m
            for key, group in groups.items():
                has_image = any(_is_image_name(n) for n in group)
                side: dict[str, bytes] = {}
                inputs = []
                for name, m in group.items():
                    if has_image and not _is_image_name(name):
                        listing.side_files += 1
                        ext = _wds_key(name)[1]
                        if ext in (".txt", ".json") and m.size <= max_bytes:
                            fh = tar.extractfile(m)
                            side[ext] = fh.read() if fh else b""
                        continue
                    inputs.append(m)
                caption, url = _side_info(side)
                for m in inputs:
                    uri = f"{path.resolve()}::{m.name}"
                    if compressed and m.size > max_bytes:
                        item = ImageItem(uri=uri, name=m.name, size=m.size)
                    elif compressed:
                        fh = tar.extractfile(m)
                        item = ImageItem(uri=uri, name=m.name, data=fh.read() if fh else b"")
                    else:
                        item = ImageItem(uri=uri, name=m.name, path=str(path), offset=m.offset_data, size=m.size)
                    listing.entries.append(
                        SourceEntry(item=item, key=key.rsplit("/", 1)[-1], rel=f"{rel_prefix}/{m.name}", caption=caption, url=url)
                    )
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InputError(f"tar shard {path} is damaged or not a tar: {exc}",
                         hint="re-download or re-create the shard, or move it aside") from exc


def _read_img2dataset_parquet(path: Path) -> dict[str, tuple[str | None, str | None]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        if "key" not in names:
            return {}
        cols = [c for c in ("key", "caption", "url") if c in names]
        rows = pq.read_table(path, columns=cols).to_pylist()
    except (pa.ArrowException, OSError):
        return {}
    return {str(r["key"]): (r.get("caption"), r.get("url")) for r in rows if r.get("key") is not None}


def inside(target: Path, folder: Path) -> bool:
    """True if `target` (symlinks resolved) lies in `folder` (symlinks resolved)."""
    return target.resolve().is_relative_to(folder.resolve())


def list_sources(
    path: str | os.PathLike[str], *, allow_outside: bool = False, max_bytes: int = DEFAULT_MAX_BYTES
) -> SourceListing:
    """Every input under `path`, in a stable (sorted) order.

    A file under a folder that is a symlink to somewhere outside the folder becomes an input marked
    `outside` (never read, not even as a side file) unless allow_outside.

    Raises:
        InputError: `path` does not exist, holds no files, or holds a damaged tar.
    """
    root = Path(path)
    listing = SourceListing()
    if not root.exists():
        raise InputError(f"image path {root} does not exist")
    if root.is_file():
        if is_tar(root):
            list_tar(root, root.name, listing, max_bytes)
        else:
            listing.entries.append(
                SourceEntry(item=ImageItem(uri=str(root.resolve()), name=root.name, path=str(root)), key=root.stem, rel=root.name)
            )
        return listing
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise InputError(f"{root} holds no files")
    if not allow_outside:
        for p in [p for p in files if not inside(p, root)]:
            files.remove(p)
            item = ImageItem(uri=str(p.absolute()), name=p.name, outside=str(p.resolve()))
            listing.entries.append(SourceEntry(item=item, key=p.stem, rel=p.relative_to(root).as_posix()))
    stems = {p.with_suffix("") for p in files if p.suffix.lower() in (".tar", ".parquet")}
    parquet_meta: dict[str, tuple[str | None, str | None]] = {}
    groups: dict[Path, list[Path]] = {}
    for p in files:
        rel = p.relative_to(root).as_posix()
        if is_tar(p):
            list_tar(p, rel, listing, max_bytes)
        elif p.suffix.lower() == ".parquet":
            listing.metadata_files.append(rel)
            parquet_meta.update(_read_img2dataset_parquet(p))
        elif p.name.endswith("_stats.json") and p.with_name(p.name[: -len("_stats.json")]) in stems:
            listing.metadata_files.append(rel)
        else:
            groups.setdefault(p.with_suffix(""), []).append(p)
    for stem, group in groups.items():
        has_image = any(_is_image_name(p.name) for p in group)
        side = {
            p.suffix.lower(): p.read_bytes()
            for p in group
            if has_image and p.suffix.lower() in (".txt", ".json") and p.stat().st_size <= max_bytes
        }
        caption, url = _side_info(side)
        for p in group:
            if has_image and not _is_image_name(p.name):
                listing.side_files += 1
                continue
            item = ImageItem(uri=str(p.resolve()), name=p.name, path=str(p))
            listing.entries.append(
                SourceEntry(item=item, key=stem.name, rel=p.relative_to(root).as_posix(), caption=caption, url=url)
            )
    if parquet_meta:
        filled = 0
        for entry in listing.entries:
            meta = parquet_meta.get(entry.key)
            if meta is not None:
                if entry.caption is None and meta[0]:
                    entry.caption, filled = meta[0].strip() or None, filled + 1
                entry.url = entry.url or meta[1]
        if filled:
            listing.notes.append(f"{filled} caption(s) taken from img2dataset parquet metadata")
    listing.entries.sort(key=lambda e: e.rel)
    return listing
