"""The image pipeline: list inputs, hash/probe/store them in worker processes, write `images` (and
`prompts`, `train_links`, `generations`) in parts of `batch_size` rows.

Guarantees:
- every input file gets an `images` row (status ok/corrupt/missing/too_large/unsupported) or is
  counted in the report as already stored or as a byte-for-byte duplicate of another input;
- the same bytes under the same role are one row (key image_id+role), across runs and within one;
- each batch is written as its own atomic Parquet part, so a kill loses at most the batches in
  flight; a re-run skips what is stored (without decoding it again) and writes the rest.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fbmem_data.errors import FbmemError, InputError
from fbmem_data.ids import canonical_json, params_hash, prompt_id
from fbmem_data.ingest.decode import (
    BATCH_SYNC,
    DEFAULT_MAX_BYTES,
    ImageItem,
    Probe,
    extension_mismatch,
    init_worker,
    process_batch,
)
from fbmem_data.ingest.manifest import ManifestEntry, read_manifest
from fbmem_data.ingest.report import IngestReport
from fbmem_data.ingest.sources import SourceEntry, SourceListing, inside, is_tar, list_sources

if TYPE_CHECKING:
    from fbmem_data.workspace import Workspace

ROLES = ("train", "generated", "reference")
# PIL's own decompression-bomb warning threshold (Image.MAX_IMAGE_PIXELS): about 9,460 x 9,460.
DEFAULT_MAX_PIXELS = 89_478_485
DEFAULT_BATCH_SIZE = 500
_LINK_ROLES = ("train", "reference")  # roles whose captions/manifest rows become train_links


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


@dataclass
class _Plan:
    """What to write besides `images`, decided before any decoding (captions and manifest rows
    are known up front; only image ids come from the workers)."""

    entries: list[SourceEntry]
    prompts: dict[str, dict[str, Any]] = field(default_factory=dict)
    links: dict[int, list[tuple[str, str]]] = field(default_factory=dict)  # entry -> [(prompt_id, relation)]
    generations: dict[int, dict[str, Any]] = field(default_factory=dict)  # entry -> settings


def default_set_name(path: Path) -> str:
    if path.is_file():
        if is_tar(path):
            return path.name.split(".", 1)[0]
        return path.parent.resolve().name
    return path.resolve().name


def _prompt_row(pset: str, key: str, text: str, url: str | None, source: str) -> dict[str, Any]:
    return {
        "prompt_id": prompt_id(pset, key, text),
        "prompt_set": pset,
        "text": text,
        "source_key": key,
        "url": url,
        "source_file": source,
        "ingested_at": dt.datetime.now(dt.timezone.utc),
    }


def _plan_captions(plan: _Plan, role: str, pset: str, report: IngestReport) -> None:
    with_caption = [i for i, e in enumerate(plan.entries) if e.caption]
    if role not in _LINK_ROLES:
        if with_caption:
            report.note(f"{len(with_caption)} caption side file(s) not linked: role={role} takes prompts from --manifest")
        return
    for i in with_caption:
        entry = plan.entries[i]
        row = _prompt_row(pset, entry.key, entry.caption or "", entry.url, entry.item.uri)
        plan.prompts.setdefault(row["prompt_id"], row)
        plan.links.setdefault(i, []).append((row["prompt_id"], "caption"))


def _match_manifest(
    plan: _Plan, root: Path, manifest: Path, entries: list[ManifestEntry], allow_outside: bool = False
) -> list[int]:
    """Index of the input each manifest row names; rows naming no input add one (missing if no file,
    outside if the path leads out of the ingested folder and allow_outside is off)."""
    by_rel = {e.rel: i for i, e in enumerate(plan.entries)}
    by_uri = {e.item.uri: i for i, e in enumerate(plan.entries)}
    by_name: dict[str, list[int]] = {}
    for i, e in enumerate(plan.entries):
        by_name.setdefault(Path(e.item.name).name, []).append(i)
    base = root if root.is_dir() else root.parent
    out = []
    for m in entries:
        rel = m.file.replace("\\", "/").removeprefix("./")
        candidates = [Path(m.file)] if Path(m.file).is_absolute() else [base / m.file, manifest.parent / m.file]
        idx = by_rel.get(rel)
        if idx is None:
            idx = next((by_uri[str(c.resolve())] for c in candidates if str(c.resolve()) in by_uri), None)
        if idx is None and "/" not in rel:
            named = by_name.get(rel, [])
            if len(named) > 1:
                raise InputError(f"manifest {manifest}, {m.where}: file name {m.file!r} matches {len(named)} inputs",
                                 hint="give the path relative to the ingested folder")
            idx = named[0] if named else None
        if idx is None:
            found = next((c for c in candidates if c.is_file()), None)
            target = (found or candidates[0]).resolve()
            if not allow_outside and not inside(target, base):
                # Checked before anything is read (exists or not): `../../etc/shadow` stays unread.
                shown = (found or candidates[0]).absolute()
                item = ImageItem(uri=str(shown), name=target.name, outside=str(target))
            else:
                item = ImageItem(uri=str(target), name=target.name, path=str(found) if found else None)
            plan.entries.append(SourceEntry(item=item, key=target.stem, rel=m.file))
            idx = len(plan.entries) - 1
        out.append(idx)
    return out


def _plan_manifest(
    ws: Workspace,
    plan: _Plan,
    root: Path,
    manifest: Path,
    role: str,
    pset: str | None,
    report: IngestReport,
    allow_outside: bool = False,
) -> None:
    entries = read_manifest(manifest, role)
    indices = _match_manifest(plan, root, manifest, entries, allow_outside)
    # Prompts named by id must exist; prompts given as text are found in their set or created.
    wanted_ids = sorted({m.prompt_id for m in entries if m.prompt_id})
    known_ids = set(plan.prompts)
    if wanted_ids:
        found = ws.sql("SELECT prompt_id FROM prompts WHERE list_contains($ids, prompt_id)", {"ids": wanted_ids})
        known_ids |= set(found.column("prompt_id").to_pylist())
    unknown = [m for m in entries if m.prompt_id and m.prompt_id not in known_ids]
    if unknown:
        shown = ", ".join(f"{m.prompt_id!r} ({m.where})" for m in unknown[:5])
        raise InputError(f"manifest {manifest}: {len(unknown)} prompt_id(s) not in the prompts table: {shown}",
                         hint="ingest the prompt file first (fbmem ingest prompts), or give prompt text instead")
    default_set = pset or manifest.stem
    sets = sorted({m.prompt_set or default_set for m in entries if not m.prompt_id})
    by_text: dict[tuple[str, str], list[str]] = {}
    if sets:
        stored = ws.sql("SELECT prompt_set, text, prompt_id FROM prompts WHERE list_contains($sets, prompt_set)",
                        {"sets": sets}).to_pylist()
        for r in stored + list(plan.prompts.values()):
            ids = by_text.setdefault((r["prompt_set"], r["text"]), [])
            if r["prompt_id"] not in ids:
                ids.append(r["prompt_id"])
    seen_generation: dict[str, str] = {}
    relation = "manifest"
    for m, idx in zip(entries, indices, strict=True):
        if m.prompt_id:
            pid = m.prompt_id
        else:
            pset_m = m.prompt_set or default_set
            text = m.prompt or ""
            ids = by_text.get((pset_m, text), [])
            if len(ids) > 1:
                raise InputError(
                    f"manifest {manifest}, {m.where}: {len(ids)} prompts of set {pset_m!r} have the text {text[:60]!r}",
                    hint="give the prompt_id column for such rows",
                )
            if ids:
                pid = ids[0]
            else:  # a new prompt: its text is its source key, so every row with that text shares it
                row = _prompt_row(pset_m, text, text, None, str(manifest.resolve()))
                plan.prompts[row["prompt_id"]] = row
                by_text[(pset_m, text)] = [row["prompt_id"]]
                pid = row["prompt_id"]
        if role == "generated":
            settings = m.settings(pid)
            gid = params_hash(settings)
            if gid in seen_generation:
                raise InputError(
                    f"manifest {manifest}, {m.where}: the same prompt and settings as {seen_generation[gid]} "
                    "(one generation cannot have two images)",
                    hint="give each image its own seed (or another differing setting)",
                )
            seen_generation[gid] = m.where
            plan.generations[idx] = settings
        elif role in _LINK_ROLES:
            plan.links.setdefault(idx, []).append((pid, relation))
    unmapped = len(plan.entries) - len(set(indices))
    if unmapped:
        report.note(f"{unmapped} input(s) not named in the manifest: images rows only")


def _batches(entries: list[SourceEntry], size: int) -> Iterator[list[int]]:
    for start in range(0, len(entries), size):
        yield list(range(start, min(start + size, len(entries))))


def _probe_batches(
    plan: _Plan,
    batch_size: int,
    workers: int,
    root: str,
    max_pixels: int,
    known: frozenset[str],
    progress: Any,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Iterator[tuple[list[int], list[Probe]]]:
    """Probes per batch, in order. With workers > 1 the next batch is already decoding while the
    caller writes the current one."""
    if workers <= 1:
        init_worker(known)
        try:
            for batch in _batches(plan.entries, batch_size):
                probes = process_batch([plan.entries[i].item for i in batch], root, max_pixels, max_bytes)
                progress.update(len(batch))
                yield batch, probes
        finally:
            init_worker(frozenset())
        return
    ctx = multiprocessing.get_context(_start_method())
    chunk = max(1, min(64, batch_size // (workers * 2)))
    initargs = (known, os.getpid())
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_pool_worker, initargs=initargs) as pool:
        def submit(batch: list[int]) -> list[tuple[int, Future[list[Probe]]]]:
            futures = []
            for start in range(0, len(batch), chunk):
                items = [plan.entries[i].item for i in batch[start : start + chunk]]
                futures.append((len(items), pool.submit(process_batch, items, root, max_pixels, max_bytes)))
            return futures

        pending: tuple[list[int], list[tuple[int, Future[list[Probe]]]]] | None = None
        try:
            for batch in _batches(plan.entries, batch_size):
                submitted = (batch, submit(batch))
                if pending is not None:
                    yield pending[0], _collect(pending[1], progress)
                pending = submitted
            if pending is not None:
                yield pending[0], _collect(pending[1], progress)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _init_pool_worker(known: frozenset[str], parent_pid: int) -> None:
    """A decoding worker: dies with the ingest process (even on SIGKILL), then gets the known ids."""
    from fbmem_data.procs import die_with_parent

    die_with_parent(parent_pid)
    init_worker(known)


def _start_method() -> str:
    """fork where the OS has it: spawn would re-run the caller's main module, which breaks scripts
    without an `if __name__ == "__main__"` guard and code piped from stdin. The children only read
    files, hash, decode with PIL and write files: they never touch the parent's DuckDB threads."""
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def _collect(futures: list[tuple[int, Future[list[Probe]]]], progress: Any) -> list[Probe]:
    out: list[Probe] = []
    for n, fut in futures:
        try:
            out.extend(fut.result())
        except BrokenProcessPool as exc:
            raise FbmemError(
                "a decoding worker process died (killed for memory, or a crash inside an image decoder); "
                "every batch written before is kept",
                hint="run the same command again with --workers 1 and a lower --max-pixels to find the file",
            ) from exc
        progress.update(n)
    return out


def _image_row(probe: Probe, role: str, run_id: str, now: dt.datetime) -> dict[str, Any]:
    return {
        "image_id": probe.image_id,
        "role": role,
        "source_uri": probe.uri,
        "store_path": probe.store_path,
        "width": probe.width,
        "height": probe.height,
        "mode": probe.mode,
        "format": probe.format,
        "n_bytes": probe.n_bytes,
        "status": probe.status,
        "error": probe.error,
        "ingested_at": now,
        "run_id": run_id,
    }


def ingest_images(
    ws: Workspace,
    path: str | os.PathLike[str],
    role: str,
    manifest: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    prompt_set: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
    allow_outside: bool = False,
) -> IngestReport:
    """Ingest the images under `path` with one role.

    Args:
        ws: the workspace.
        path: an image file, a folder (recursive), a webdataset/img2dataset tar shard, or an
            img2dataset output folder.
        role: train | generated | reference.
        manifest: CSV mapping files to prompts (+ model_id/seed/... for role=generated).
        workers: decoding processes (default min(4, cpus)); 1 decodes in this process.
        max_pixels: images with more pixels (by their header) are recorded as too_large.
        prompt_set: set name for `.txt` captions and for manifest prompt text (default: the
            shard/folder name for captions, the manifest's file name for manifest text).
        batch_size: rows per written part; a kill loses at most the batches in flight.
        progress: show a tqdm bar on stderr.
        max_bytes: files larger than this (by their size, before reading) are recorded too_large
            and neither read nor stored.
        allow_outside: follow symlinks and manifest paths that lead out of the ingested folder
            (by default such inputs are recorded as status outside and not read).

    Returns:
        An IngestReport where inputs == sum(by_status) + already_stored + duplicates.

    Raises:
        InputError: bad role/path/manifest, or a damaged tar shard (per-image problems are rows).
    """
    from tqdm import tqdm

    if role not in ROLES:
        raise InputError(f"unknown role {role!r}", hint=f"use one of {', '.join(ROLES)}")
    if max_pixels < 1 or batch_size < 1 or max_bytes < 1:
        raise InputError("max_pixels, max_bytes and batch_size must be positive")
    root = Path(path)
    listing: SourceListing = list_sources(root, allow_outside=allow_outside, max_bytes=max_bytes)
    workers = default_workers() if workers is None else max(1, workers)
    report = IngestReport(source=str(root), kind="images", side_files=listing.side_files,
                          metadata_files=len(listing.metadata_files))
    for text in listing.notes:
        report.note(text)
    plan = _Plan(entries=listing.entries)
    caption_set = prompt_set or default_set_name(root)
    _plan_captions(plan, role, caption_set, report)
    if plan.prompts:
        report.prompt_set = caption_set
    if manifest is not None:
        _plan_manifest(ws, plan, root, Path(manifest), role, prompt_set, report, allow_outside)
    report.inputs = len(plan.entries)
    known = frozenset(
        ws.sql("SELECT image_id FROM images WHERE role = $role", {"role": role}).column("image_id").to_pylist()
    )
    config = {"path": str(root.resolve()), "role": role, "manifest": str(Path(manifest).resolve()) if manifest else None,
              "max_pixels": max_pixels, "prompt_set": prompt_set, "max_bytes": max_bytes,
              "allow_outside": allow_outside}
    with ws.run("ingest images", config) as run, tqdm(
        total=len(plan.entries), file=sys.stderr, disable=not progress, unit="img", desc="ingest images"
    ) as bar:
        report.run_id = run.run_id
        if plan.prompts:
            report.add_written("prompts", ws.write("prompts", list(plan.prompts.values())))
        first_uri: dict[str, str] = {}
        for batch, probes in _probe_batches(plan, batch_size, workers, str(ws.root), max_pixels, known, bar,
                                            max_bytes):
            now = dt.datetime.now(dt.timezone.utc)
            images: list[dict[str, Any]] = []
            links: dict[tuple[str, str], dict[str, Any]] = {}
            generations: dict[str, dict[str, Any]] = {}
            for idx, probe in zip(batch, probes, strict=True):
                image_id = probe.image_id or ""
                if image_id in first_uri:
                    report.duplicates += 1
                    report.note(f"{probe.uri} has the same bytes as {first_uri[image_id]}: one images row")
                elif probe.already_stored:
                    report.already_stored += 1
                else:
                    report.by_status[probe.status] += 1
                    images.append(_image_row(probe, role, run.run_id, now))
                    mismatch = extension_mismatch(probe.uri, probe.format) if probe.status == "ok" else None
                    if mismatch:
                        report.note(mismatch)
                first_uri.setdefault(image_id, probe.uri)
                stored = probe.store_path is not None or (probe.already_stored and probe.status == "ok")
                if not stored:
                    # Nothing stored: no generation or link may point at these bytes.
                    if idx in plan.generations or idx in plan.links:
                        report.note(f"{probe.uri} is {probe.status}: no generations/train_links row for it")
                    continue
                for pid, relation in plan.links.get(idx, []):
                    links[(image_id, pid)] = {"image_id": image_id, "prompt_id": pid, "relation": relation,
                                              "run_id": run.run_id}
                settings = plan.generations.get(idx)
                if settings is not None:
                    generations[params_hash(settings)] = _generation_row(settings, image_id, run.run_id)
            # images last: a batch whose images part exists has its links and generations too.
            if links:
                report.add_written("train_links", ws.write("train_links", list(links.values())))
            if generations:
                report.add_written("generations", ws.write("generations", list(generations.values())))
            if images:
                if BATCH_SYNC:
                    os.sync()  # the batch's stored image files reach the disk before its rows do
                report.add_written("images", ws.write("images", images))
    return report


def _generation_row(settings: dict[str, Any], image_id: str, run_id: str) -> dict[str, Any]:
    params = settings["mitigation_params"]
    return {
        "generation_id": params_hash(settings),
        "image_id": image_id,
        **{k: v for k, v in settings.items() if k != "mitigation_params"},
        "mitigation_params": None if params is None else canonical_json(params),
        "run_id": run_id,
    }
