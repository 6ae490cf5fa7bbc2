"""Find each model where fbmem looks for it and check it against what its publisher says.

Statuses (per model):
- ok: found, every checked file matches a published sha256 / size (or hub blob name, or wheel RECORD);
- unverified: found, but no published checksum exists for (some of) its files, or hashing was skipped;
- incomplete: some required files are there, others are missing (a partial hub download);
- corrupt: a file's size or sha256 differs from the published one (truncated or damaged download);
- missing: nothing found.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from fbmem_data.doctor.registry import KnownFile, ModelSpec

Status = Literal["ok", "unverified", "incomplete", "corrupt", "missing"]
FAILING: frozenset[str] = frozenset({"incomplete", "corrupt", "missing"})
MODELS_DIR_ENV = "FBMEM_MODELS"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CHUNK = 4 * 1024 * 1024


@dataclass
class FileCheck:
    """One file: where it is, how big, its sha256 and the verdict against the published value."""

    path: str
    size: int
    verdict: Literal["ok", "unverified", "corrupt"]
    sha256: str | None = None
    expected_sha256: str | None = None
    expected_size: int | None = None
    detail: str = ""


@dataclass
class ModelCheck:
    """The verdict on one model entry."""

    name: str
    status: Status
    description: str
    commands: tuple[str, ...]
    how_to_get: str
    location: str | None = None
    looked_in: list[str] = field(default_factory=list)
    files: list[FileCheck] = field(default_factory=list)
    detail: str = ""

    @property
    def size_bytes(self) -> int | None:
        return sum(f.size for f in self.files) if self.files else None

    def to_dict(self) -> dict[str, Any]:
        single = self.files[0] if len(self.files) == 1 else None
        return {
            "model": self.name,
            "status": self.status,
            "location": self.location,
            "size_bytes": self.size_bytes,
            "sha256": single.sha256 if single else None,
            "expected_sha256": single.expected_sha256 if single else None,
            "detail": self.detail,
            "how_to_get": None if self.status in ("ok", "unverified") else self.how_to_get,
            "commands": list(self.commands),
            "looked_in": self.looked_in,
            "files": [vars(f) for f in self.files],
        }


# -- hashing ------------------------------------------------------------------------------------
def file_digests(path: Path, git_sha1: bool = False) -> tuple[str, str | None]:
    """(sha256, git blob sha1 or None) of a file, read once in chunks."""
    sha = hashlib.sha256()
    git = hashlib.sha1() if git_sha1 else None
    if git is not None:
        git.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            sha.update(chunk)
            if git is not None:
                git.update(chunk)
    return sha.hexdigest(), git.hexdigest() if git is not None else None


def check_file(path: Path, known: KnownFile | None, hash_files: bool, candidates: tuple[KnownFile, ...] = ()) -> FileCheck:
    """Size and (when hash_files) sha256 of `path` against `known`, or any of `candidates` by hash."""
    size = path.stat().st_size
    result = FileCheck(str(path), size, "unverified")
    if known is not None:
        result.expected_sha256, result.expected_size = known.sha256, known.size
        if known.size is not None and size != known.size:
            result.verdict = "corrupt"
            result.detail = f"size {size} bytes, published {known.size} (truncated or wrong file)"
            return result
    if not hash_files:
        result.detail = "not hashed (--no-hash)" + ("; size matches" if known and known.size else "")
        return result
    result.sha256, _ = file_digests(path)
    if known is not None and known.sha256:
        if result.sha256 == known.sha256:
            result.verdict, result.detail = "ok", f"sha256 matches ({known.source or 'published'})"
        else:
            result.verdict = "corrupt"
            result.detail = f"sha256 {result.sha256[:12]}… differs from the published {known.sha256[:12]}…"
        return result
    match = next((c for c in candidates if c.sha256 == result.sha256), None)
    if match is not None:
        result.verdict, result.detail = "ok", f"sha256 matches the published {match.name}"
        result.expected_sha256 = match.sha256
    else:
        result.detail = f"no published checksum for {path.name}"
    return result


# -- where fbmem looks --------------------------------------------------------------------------
def hf_hub_cache() -> Path:
    """The Hugging Face hub cache, resolved from the environment as huggingface_hub does."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def hub_snapshot(hub_id: str) -> tuple[Path | None, Path]:
    """(snapshot directory or None, the repo's cache folder) for a hub id; prefers refs/main."""
    repo_dir = hf_hub_cache() / ("models--" + hub_id.replace("/", "--"))
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None, repo_dir
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        pinned = snapshots / ref.read_text().strip()
        if pinned.is_dir():
            return pinned, repo_dir
    found = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    return (found[0] if found else None), repo_dir


def models_dir() -> Path:
    return Path(os.environ.get(MODELS_DIR_ENV) or "~/.cache/fbmem/models").expanduser()


def _missing(spec: ModelSpec, looked_in: list[str], detail: str) -> ModelCheck:
    return ModelCheck(spec.name, "missing", spec.description, spec.commands, spec.how_to_get, looked_in=looked_in, detail=detail)


def _aggregate(spec: ModelSpec, location: Path, looked_in: list[str], files: list[FileCheck], absent: list[str]) -> ModelCheck:
    check = ModelCheck(
        spec.name, "ok", spec.description, spec.commands, spec.how_to_get, str(location), looked_in, files
    )
    corrupt = [f for f in files if f.verdict == "corrupt"]
    if corrupt:
        check.status = "corrupt"
        check.detail = "; ".join(f"{Path(f.path).name}: {f.detail}" for f in corrupt)
    elif absent:
        check.status = "incomplete" if files else "missing"
        check.detail = "missing: " + ", ".join(absent)
    elif any(f.verdict == "unverified" for f in files):
        check.status = "unverified"
        check.detail = "; ".join(sorted({f.detail for f in files if f.verdict == "unverified"}))
    else:
        check.detail = "; ".join(sorted({f.detail for f in files}))
    return check


def _blob_check(path: Path, hash_files: bool) -> FileCheck:
    """A hub cache file is a link to blobs/<etag>: sha256 for LFS files, git blob sha1 otherwise."""
    target = path.resolve()
    size = target.stat().st_size
    etag = target.name
    if not hash_files:
        return FileCheck(str(path), size, "unverified", detail="not hashed (--no-hash)")
    if _HEX64.match(etag):
        sha, _ = file_digests(target)
        ok = sha == etag
        return FileCheck(
            str(path), size, "ok" if ok else "corrupt", sha, etag,
            detail="sha256 matches the hub's LFS checksum" if ok else f"sha256 {sha[:12]}… differs from the hub's {etag[:12]}…",
        )
    if _HEX40.match(etag):
        sha, git = file_digests(target, git_sha1=True)
        ok = git == etag
        return FileCheck(
            str(path), size, "ok" if ok else "corrupt", sha,
            detail="git blob sha1 matches the hub's" if ok else f"git blob sha1 {git} differs from the hub's {etag}",
        )
    sha, _ = file_digests(target)
    return FileCheck(str(path), size, "unverified", sha, detail="not a hub cache blob: no published checksum")


def _matches(root: Path, rel: str) -> list[Path]:
    """Files at `rel` under root; `rel` may be a glob (for files whose exact name is not fixed)."""
    if any(ch in rel for ch in "*?["):
        return sorted(p for p in root.glob(rel) if p.is_file())
    return [root / rel] if (root / rel).is_file() else []


def _check_tree(spec: ModelSpec, root: Path, looked_in: list[str], hash_files: bool, blobs: bool) -> ModelCheck:
    files: list[FileCheck] = []
    absent: list[str] = []
    for group in spec.required:
        present = next((p for rel in group for p in _matches(root, rel)), None)
        if present is None:
            absent.append(" or ".join(group))
            continue
        if blobs and present.is_symlink():
            files.append(_blob_check(present, hash_files))
        else:
            files.append(check_file(present, spec.known(present.name), hash_files))
    return _aggregate(spec, root, looked_in, files, absent)


def _check_single(spec: ModelSpec, path: Path, looked_in: list[str], hash_files: bool) -> ModelCheck:
    fc = check_file(path, spec.known(path.name), hash_files, spec.known_files)
    return _aggregate(spec, path, looked_in, [fc], [])


def _single_weight_file(spec: ModelSpec, directory: Path) -> Path | None:
    """A directory given for a one-file model: a known file name in it, else its only file with a
    known suffix (e.g. the one *.onnx), unless it looks like a model directory (required files)."""
    for known in spec.known_files:
        if (directory / known.name).is_file():
            return directory / known.name
    if spec.required and any((directory / rel).exists() for rel in spec.required[0]):
        return None
    suffixes = {Path(k.name).suffix for k in spec.known_files}
    found = [p for p in directory.iterdir() if p.is_file() and p.suffix in suffixes]
    return found[0] if len(found) == 1 else None


def _check_pointer(spec: ModelSpec, value: str, origin: str, looked_in: list[str], hash_files: bool) -> ModelCheck:
    """The model at a user-given path (or hub id, for hub models)."""
    path = Path(value).expanduser()
    looked_in.append(f"{origin}={value}")
    if path.is_file():
        return _check_single(spec, path, looked_in, hash_files)
    if path.is_dir():
        single = _single_weight_file(spec, path)
        if single is not None:
            return _check_single(spec, single, looked_in, hash_files)
        if spec.required:
            return _check_tree(spec, path, looked_in, hash_files, blobs=False)
        return _missing(spec, looked_in, f"{path} holds none of {[k.name for k in spec.known_files]}")
    if spec.kind == "hub" and _HUB_ID.match(value):
        return _check_hub(spec, value, looked_in, hash_files)
    return _missing(spec, looked_in, f"{origin} points to {path}, which does not exist")


def _check_hub(spec: ModelSpec, hub_id: str, looked_in: list[str], hash_files: bool) -> ModelCheck:
    snapshot, repo_dir = hub_snapshot(hub_id)
    looked_in.append(str(repo_dir))
    if snapshot is None:
        return _missing(spec, looked_in, f"{hub_id} is not in the Hugging Face cache {hf_hub_cache()}")
    return _check_tree(spec, snapshot, looked_in, hash_files, blobs=True)


def _check_package(spec: ModelSpec, hash_files: bool) -> ModelCheck:
    looked_in = [f"python package {spec.package}"]
    try:
        dist = metadata.distribution(spec.package or "")
    except metadata.PackageNotFoundError:
        return _missing(spec, looked_in, f"package {spec.package} is not installed")
    record = {str(f): f for f in (dist.files or [])}
    files: list[FileCheck] = []
    absent: list[str] = []
    location: Path | None = None
    for group in spec.required:
        entry = next((record[r] for r in group if r in record), None)
        path = Path(str(dist.locate_file(entry))) if entry is not None else None
        if entry is None or path is None or not path.is_file():
            absent.append(" or ".join(group))
            continue
        location = location or path.parent
        published = None
        if entry.hash is not None and entry.hash.mode == "sha256":
            digest = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4)).hex()
            published = KnownFile(path.name, digest, entry.size, f"{spec.package} wheel RECORD")
        files.append(check_file(path, published, hash_files))
    return _aggregate(spec, location or Path(str(dist.locate_file(""))), looked_in, files, absent)


def _check_folder(spec: ModelSpec, hash_files: bool) -> ModelCheck:
    from fbmem_data.errors import FbmemError

    if spec.folder is None:
        return _missing(spec, [], "the entry names no folder")
    try:
        folder = Path(spec.folder())
    except FbmemError as exc:
        return _missing(spec, [f"the folder of {spec.name}"], str(exc))
    if not folder.is_dir():
        return _missing(spec, [str(folder)], f"{folder} does not exist")
    return _check_tree(spec, folder, [str(folder)], hash_files, blobs=False)


def check_model(spec: ModelSpec, path: str | None = None, hash_files: bool = True) -> ModelCheck:
    """Locate and verify one model.

    Args:
        spec: the registry entry.
        path: an explicit location (file, directory, or hub id) that wins over everything else.
        hash_files: compute sha256 (False: presence and published sizes only).

    Returns:
        The ModelCheck; never raises for a missing or damaged model.
    """
    looked_in: list[str] = []
    if path:
        return _check_pointer(spec, path, "given path", looked_in, hash_files)
    if spec.env_var and os.environ.get(spec.env_var):
        return _check_pointer(spec, os.environ[spec.env_var], f"${spec.env_var}", looked_in, hash_files)
    if spec.env_var:
        looked_in.append(f"${spec.env_var} (unset)")
    if spec.kind == "package":
        return _check_package(spec, hash_files)
    if spec.kind == "folder":
        return _check_folder(spec, hash_files)
    if spec.kind == "hub" and spec.hub_id:
        hub = _check_hub(spec, spec.hub_id, looked_in, hash_files)
        if hub.status != "missing" and spec.pointer_needed and spec.env_var:
            # Its plug-in takes a path, not a hub id: say which one to give it.
            hub.detail += f"; use it with {spec.env_var}={hub.location}"
        if hub.status != "missing" or not spec.known_files:
            return hub
        looked_in = hub.looked_in
    for directory in (models_dir(), *(Path(d).expanduser() for d in spec.search_dirs)):
        looked_in.append(str(directory))
        for known in spec.known_files:
            candidate = directory / known.name
            if candidate.is_file():
                return _check_single(spec, candidate, looked_in, hash_files)
    return _missing(spec, looked_in, "not found")
