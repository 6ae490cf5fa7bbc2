"""Nearest training vectors for query vectors: exact (chunked matrix product) or HNSW (usearch).

Vectors are unit length, so cosine similarity is a dot product. Both functions return
(indices, similarities) of shape (n_queries, k), best first; indices point into the training
matrix, -1 where fewer than k neighbours exist.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from usearch.index import Index


SEARCHES = ("auto", "exact", "hnsw")
# Below this many training vectors `auto` searches exactly: benchmarks/bench_pairing.py measured batched
# exact search (matrix product + top-k) as fast as HNSW at 99% agreement up to 100,000 vectors on a CPU,
# with no index to build (the build took longer than a thousand exact queries).
AUTO_EXACT_MAX_TRAIN = 250_000
_MAX_SCORE_BLOCK = 64 * 1024 * 1024  # floats in one (queries x training) score block of exact search


def resolve_search(search: str, n_train: int, device: str = "cpu") -> str:
    """"exact" or "hnsw" for a requested search ("auto" picks exact on a GPU or for small training sets).

    Raises:
        InputError: unknown search name.
    """
    from fbmem_data.errors import InputError

    if search not in SEARCHES:
        raise InputError(f"search must be one of {list(SEARCHES)}, got {search!r}")
    if search != "auto":
        return search
    return "exact" if device.startswith("cuda") or n_train <= AUTO_EXACT_MAX_TRAIN else "hnsw"


@dataclass(frozen=True)
class HnswParams:
    """usearch HNSW settings. Defaults from benchmarks/bench_pairing.py (docs/pairing.md): best-match
    agreement with exact search 99.8% at 10,000 and 98.8% at 100,000 thumbnail vectors; the true
    source of a perturbed copy in the top 20 for 100% and 99.8%."""

    connectivity: int = 16
    expansion_add: int = 128
    expansion_search: int = 128

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def brute_force_top_k(
    queries: np.ndarray, train: np.ndarray, k: int, *, chunk: int = 1024, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by dot product, `chunk` queries at a time (fewer when the score block
    chunk x n_train would pass 64 M floats, 256 MB).

    Runs through torch (matrix product + topk, several times faster than NumPy's argpartition);
    device="cuda" moves the training matrix to the GPU once.
    """
    import torch

    n, n_train = len(queries), len(train)
    k_eff = min(k, n_train)
    indices = np.full((n, k), -1, dtype=np.int64)
    sims = np.full((n, k), np.nan, dtype=np.float32)
    if n == 0 or k_eff == 0:
        return indices, sims
    # np.require: vectors read from Arrow are read-only views, which torch refuses to wrap.
    chunk = max(1, min(chunk, _MAX_SCORE_BLOCK // n_train))
    train_t = torch.from_numpy(np.require(train, np.float32, ["C", "W"])).to(device)
    with torch.inference_mode():
        for start in range(0, n, chunk):
            block = torch.from_numpy(np.require(queries[start : start + chunk], np.float32, ["C", "W"])).to(device)
            values, found = torch.topk(block @ train_t.T, k_eff, dim=1, largest=True, sorted=True)
            indices[start : start + chunk, :k_eff] = found.cpu().numpy()
            sims[start : start + chunk, :k_eff] = values.cpu().numpy()
    return indices, sims


def build_hnsw(train: np.ndarray, params: HnswParams, *, threads: int = 0) -> Index:
    """A cosine, float32 HNSW index over the rows of `train`, keyed by row number."""
    from usearch.index import Index

    index = Index(
        ndim=train.shape[1],
        metric="cos",
        dtype="f32",
        connectivity=params.connectivity,
        expansion_add=params.expansion_add,
        expansion_search=params.expansion_search,
    )
    if len(train):
        index.add(np.arange(len(train), dtype=np.uint64), np.ascontiguousarray(train, dtype=np.float32), threads=threads)
    return index


def load_or_build_hnsw(train: np.ndarray, params: HnswParams, cache_path: Path | None, *, threads: int = 0) -> Index:
    """Reuse a saved index when its size matches; otherwise build one and save it atomically."""
    from usearch.index import Index

    if cache_path is not None and cache_path.is_file():
        index = Index(ndim=train.shape[1], metric="cos", dtype="f32", connectivity=params.connectivity,
                      expansion_add=params.expansion_add, expansion_search=params.expansion_search)
        try:
            index.load(str(cache_path))
        except (RuntimeError, ValueError):
            index = None
        if index is not None and len(index) == len(train) and index.ndim == train.shape[1]:
            index.expansion_search = params.expansion_search
            return index
    index = build_hnsw(train, params, threads=threads)
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_name(f".tmp-{os.getpid()}-{cache_path.name}")
        index.save(str(tmp))
        os.replace(tmp, cache_path)
    return index


def hnsw_top_k(index: Index, queries: np.ndarray, k: int, *, threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top-k from an index built by build_hnsw."""
    n = len(queries)
    indices = np.full((n, k), -1, dtype=np.int64)
    sims = np.full((n, k), np.nan, dtype=np.float32)
    k_eff = min(k, len(index))
    if n == 0 or k_eff == 0:
        return indices, sims
    matches = index.search(np.ascontiguousarray(queries, dtype=np.float32), k_eff, threads=threads)
    keys = np.asarray(matches.keys, dtype=np.int64).reshape(n, -1)
    dist = np.asarray(matches.distances, dtype=np.float32).reshape(n, -1)
    counts = np.asarray(matches.counts).reshape(n)
    found = np.arange(keys.shape[1])[None, :] < counts[:, None]
    indices[:, : keys.shape[1]] = np.where(found, keys, -1)
    sims[:, : keys.shape[1]] = np.where(found, 1.0 - dist, np.nan)
    return indices, sims
