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
# Below this many training vectors `auto` searches exactly. benchmarks/bench_pairing.py (one CPU thread):
# exact search costs ~20 ns per (query, training vector) at 768 dimensions, the HNSW index ~0.4 ms per
# training vector to build (once per training set, then reloaded from WORKSPACE/indexes/) and its
# queries are ~10x cheaper than exact ones at 100,000 vectors. The build therefore pays for itself after
# ~20,000 queries whatever the training-set size; `auto` cannot know how many generated images will be
# paired against a training set over all runs (and must not switch search between runs: the search is
# part of the pairing_id), so it stays exact up to here and `--search hnsw` is the choice for more
# queries than that.
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
    """usearch HNSW settings, and the reduced representation the graph is built on.

    The graph indexes `reduce_dims`-dimensional PCA projections of the training vectors, stored as
    `dtype` (usearch scalar kind), and each query fetches a `shortlist` of candidates that are then
    re-ranked by exact cosine similarity on the full vectors: the graph only has to put the true
    neighbours in the shortlist, the order and similarities written are exact. Why: at 768 dimensions
    and float32 every graph hop reads 3 KB at random and a query evaluates ~1,000-3,000 distances, so
    a full-vector HNSW was slower than batched exact search up to 100,000 vectors; 32 int8
    dimensions are 32 bytes a hop (benchmarks/bench_pairing.py, docs/pairing.md).
    reduce_dims 0 (or >= the vector dimension) indexes the full vectors.
    """

    connectivity: int = 24
    expansion_add: int = 200
    expansion_search: int = 64
    reduce_dims: int = 32
    dtype: str = "i8"
    shortlist: int = 48

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


PCA_SAMPLE = 20_000  # training vectors the projection is fitted on (a seeded sample beyond that)


@dataclass
class HnswIndex:
    """A usearch graph over reduced training vectors, with what re-ranking needs.

    train: the full training vectors (row i = key i), read for the exact re-rank.
    mean, components: the PCA projection x -> normalise((x - mean) @ components); None = identity.
    """

    index: Index
    train: np.ndarray
    params: HnswParams
    mean: np.ndarray | None = None
    components: np.ndarray | None = None
    train_on_device: tuple[str, Any] | None = None  # (device, torch tensor): the re-rank's copy on a GPU

    def reduce(self, vectors: np.ndarray) -> np.ndarray:
        x = np.asarray(vectors, dtype=np.float32)
        if self.components is None:
            return np.ascontiguousarray(x)
        y = (x - self.mean) @ self.components
        norms = np.linalg.norm(y, axis=1, keepdims=True)
        return np.ascontiguousarray(y / np.where(norms > 0, norms, 1.0), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.index)


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


def fit_projection(train: np.ndarray, dims: int, *, sample: int = PCA_SAMPLE, seed: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """PCA of the training vectors: (mean (d,), components (d, dims)), or None when no reduction
    applies (dims 0, dims >= d, or fewer than 2 vectors). Fitted on a seeded sample of `sample`
    rows (the covariance of 20,000 rows is as good as all of them and costs ~1 s); each component's
    sign is fixed so the projection is reproducible."""
    n, d = train.shape
    if dims <= 0 or dims >= d or n < 2:
        return None
    rows = train if n <= sample else train[np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))]
    rows = np.asarray(rows, dtype=np.float64)
    mean = rows.mean(axis=0)
    centred = rows - mean
    values, vectors = np.linalg.eigh(centred.T @ centred)
    top = vectors[:, np.argsort(values)[::-1][:dims]]
    top *= np.where(top[np.abs(top).argmax(axis=0), np.arange(dims)] < 0, -1.0, 1.0)
    return mean.astype(np.float32), np.ascontiguousarray(top, dtype=np.float32)


def _usearch_index(ndim: int, params: HnswParams) -> Index:
    from usearch.index import Index

    return Index(
        ndim=ndim,
        metric="cos",
        dtype=params.dtype,
        connectivity=params.connectivity,
        expansion_add=params.expansion_add,
        expansion_search=params.expansion_search,
    )


# Why the graph is built on one thread: usearch's concurrent add() can leave a node stored but
# unreachable by search (github.com/unum-cloud/USearch/issues/735, unfixed in the pinned 2.26). Measured on 2,000
# textures with 250 near copies (tests/test_pairing.py): 2-thread builds dropped the copy's own source
# from the top-20 for up to 2.4% of copies, differently on every build; one-thread builds, over 12
# insertion orders, never did. One thread makes the index identical on every run, at about twice the
# build time on 2 cores (200,000 vectors: 93 s against 50 s).
BUILD_THREADS = 1


def build_hnsw(train: np.ndarray, params: HnswParams, *, threads: int = BUILD_THREADS) -> HnswIndex:
    """An HNSW index over the (PCA-reduced, `params.dtype`) rows of `train`, keyed by row number.

    threads: insertion threads; 0 = all cores. Above 1 the build is faster but not reproducible,
    and can strand training rows no query reaches (see BUILD_THREADS)."""
    train = np.asarray(train, dtype=np.float32)
    projection = fit_projection(train, params.reduce_dims)
    mean, components = projection if projection is not None else (None, None)
    hnsw = HnswIndex(_usearch_index(components.shape[1] if components is not None else train.shape[1], params),
                     train, params, mean, components)
    if len(train):
        hnsw.index.add(np.arange(len(train), dtype=np.uint64), hnsw.reduce(train), threads=threads)
    return hnsw


def load_or_build_hnsw(
    train: np.ndarray, params: HnswParams, cache_path: Path | None, *, threads: int = BUILD_THREADS
) -> HnswIndex:
    """Reuse a saved index (graph CACHE.usearch + projection CACHE.npz) when it matches the training
    vectors' count and dimension; otherwise build one and save both atomically (projection first, the
    graph last: a graph file present means a complete pair)."""
    train = np.asarray(train, dtype=np.float32)
    if cache_path is not None and cache_path.is_file():
        loaded = _load_hnsw(train, params, cache_path)
        if loaded is not None:
            return loaded
    hnsw = build_hnsw(train, params, threads=threads)
    if cache_path is not None:
        save_hnsw(hnsw, cache_path)
    return hnsw


def save_hnsw(hnsw: HnswIndex, cache_path: Path) -> None:
    """Write the graph (cache_path) and the projection (cache_path with suffix .npz) atomically."""
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_path.with_name(f".tmp-{os.getpid()}-{cache_path.name}")
    empty = np.zeros(0, dtype=np.float32)
    with open(tmp.with_suffix(".npz"), "wb") as fh:
        np.savez(fh, mean=hnsw.mean if hnsw.mean is not None else empty,
                 components=hnsw.components if hnsw.components is not None else empty)
    os.replace(tmp.with_suffix(".npz"), cache_path.with_suffix(".npz"))
    hnsw.index.save(str(tmp))
    os.replace(tmp, cache_path)


def _load_hnsw(train: np.ndarray, params: HnswParams, cache_path: Path) -> HnswIndex | None:
    projection_path = cache_path.with_suffix(".npz")
    try:
        with np.load(projection_path) as saved:
            mean, components = saved["mean"], saved["components"]
    except (OSError, KeyError, ValueError):
        return None
    if components.size:
        if components.ndim != 2 or components.shape[0] != train.shape[1]:
            return None
        ndim = components.shape[1]
    else:
        mean, components, ndim = None, None, train.shape[1]
    index = _usearch_index(ndim, params)
    try:
        index.load(str(cache_path))
    except (RuntimeError, ValueError):
        return None
    if len(index) != len(train) or index.ndim != ndim:
        return None
    index.expansion_search = params.expansion_search
    return HnswIndex(index, train, params, mean, components)


def hnsw_top_k(
    index: HnswIndex, queries: np.ndarray, k: int, *, threads: int = 0, device: str = "cpu", chunk: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k from an index built by build_hnsw: the graph fetches max(k, shortlist) candidates per
    query from the reduced vectors, which are re-ranked by exact cosine on the full vectors
    (`device`: where the re-rank runs). Similarities are exact; indices -1 where fewer than k exist."""
    n = len(queries)
    indices = np.full((n, k), -1, dtype=np.int64)
    sims = np.full((n, k), np.nan, dtype=np.float32)
    fetch = min(max(k, index.params.shortlist), len(index))
    if n == 0 or fetch == 0:
        return indices, sims
    queries = np.require(queries, np.float32, ["C"])
    matches = index.index.search(index.reduce(queries), fetch, threads=threads)
    keys = np.asarray(matches.keys, dtype=np.int64).reshape(n, -1)
    counts = np.asarray(matches.counts).reshape(n)
    found = np.arange(keys.shape[1])[None, :] < counts[:, None]
    keys = np.where(found, keys, 0)
    scores = _shortlist_scores(index, queries, keys, device, chunk)
    scores[~found] = -np.inf
    k_eff = min(k, keys.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k_eff]
    values = np.take_along_axis(scores, order, axis=1)
    valid = np.isfinite(values)
    indices[:, :k_eff] = np.where(valid, np.take_along_axis(keys, order, axis=1), -1)
    sims[:, :k_eff] = np.where(valid, values, np.nan)
    return indices, sims


def _shortlist_scores(index: HnswIndex, queries: np.ndarray, keys: np.ndarray, device: str, chunk: int) -> np.ndarray:
    """Exact dot products of each query with its shortlisted training rows, (n, fetch) float32, a chunk
    of queries at a time (NumPy gathers on the CPU; on a GPU the training matrix is copied there once
    per index and device)."""
    n = len(queries)
    scores = np.empty(keys.shape, dtype=np.float32)
    if device == "cpu":
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            rows = np.take(index.train, keys[start:stop], axis=0)
            scores[start:stop] = np.matmul(rows, queries[start:stop, :, None])[:, :, 0]
        return scores
    import torch

    with torch.inference_mode():
        if index.train_on_device is None or index.train_on_device[0] != device:
            index.train_on_device = (device, torch.from_numpy(np.require(index.train, np.float32, ["C", "W"])).to(device))
        train_t = index.train_on_device[1]
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            key_t = torch.from_numpy(keys[start:stop]).to(device)
            q_t = torch.from_numpy(np.require(queries[start:stop], np.float32, ["C", "W"])).to(device)
            scores[start:stop] = torch.bmm(train_t[key_t], q_t[:, :, None])[:, :, 0].cpu().numpy()
    return scores
