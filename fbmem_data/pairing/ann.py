"""`ann` pairing: the k training images nearest to each generated image by embedding.

Both roles are embedded first (resumable, into `embeddings`), the training vectors are searched
exactly or through a usearch HNSW graph over their PCA-reduced int8 projections whose shortlist is
re-ranked by exact cosine (search.py), and each generated image keeps its top k with rank and
cosine similarity. The pairing_id hashes the embedder and its params, k, the search settings and
a fingerprint of the training set, so a re-run over the same images adds nothing, and a run after
training images were added writes a new, consistent pairing instead of mixing two neighbour sets.
The HNSW index (graph .usearch + projection .npz) is cached under WORKSPACE/indexes/ keyed the
same way (without k): built once per training set and embedder, reloaded by later runs.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa

from fbmem_data.embed.store import embed_images, embedder_params_hash, load_vectors
from fbmem_data.ids import params_hash
from fbmem_data.pairing.search import (
    HnswParams,
    brute_force_top_k,
    hnsw_top_k,
    load_or_build_hnsw,
    resolve_search,
)

if TYPE_CHECKING:
    from fbmem_data.distribute import Distributor
    from fbmem_data.embed.base import Embedder
    from fbmem_data.pairing.summary import PairingSummary
    from fbmem_data.workspace import Workspace

INDEX_DIR = "indexes"


def train_set_fingerprint(train_ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(train_ids)).encode()).hexdigest()[:16]


def ann_config(embedder: str, embedder_hash: str, k: int, hnsw: HnswParams | None, train_fp: str) -> dict[str, object]:
    """The configuration whose params_hash is the pairing_id (hnsw None = exact search)."""
    return {
        "method": "ann",
        "embedder": embedder,
        "embedder_params_hash": embedder_hash,
        "k": k,
        "search": "exact" if hnsw is None else {"hnsw": hnsw.as_dict()},
        "train_set": train_fp,
    }


# Bumped when the way a graph is built changes, so a cached graph from the older builder is not reused
# ("serial": one insertion thread; graphs cached before it were built on all cores).
INDEX_BUILD = "serial"


def hnsw_cache_key(embedder: str, embedder_hash: str, hnsw: HnswParams, train_fp: str) -> str:
    """The file stem of the cached HNSW graph for these settings and training set (any k)."""
    config = {k_: v for k_, v in ann_config(embedder, embedder_hash, 0, hnsw, train_fp).items() if k_ != "k"}
    return params_hash({**config, "index_build": INDEX_BUILD})


class AnnPairing(NamedTuple):
    """What an ANN pairing run over given training vectors is: its id, search, HNSW settings (None for
    exact search), training-set fingerprint, and the generated images already paired (a run skips them)."""

    pairing_id: str
    search: str
    hnsw: HnswParams | None
    train_fp: str
    done: set[str]


def ann_pairing(
    ws: Workspace, embedder: str, embedder_hash: str, k: int, search: str, search_device: str, train_ids: list[str], hnsw: HnswParams | None
) -> AnnPairing:
    """The ANN pairing `write_ann` runs (and `fbmem pair --dry-run` plans) for these settings."""
    resolved = resolve_search(search, len(train_ids), search_device)
    hnsw = (hnsw or HnswParams()) if resolved == "hnsw" else None
    fp = train_set_fingerprint(train_ids)
    pid = params_hash(ann_config(embedder, embedder_hash, k, hnsw, fp))
    done = set(
        ws.sql("SELECT DISTINCT generated_image_id FROM candidates WHERE pairing_id = $pid", {"pid": pid})
        .column("generated_image_id")
        .to_pylist()
    )
    return AnnPairing(pid, resolved, hnsw, fp, done)


def _rows(pid: str, embedder: str, gen_ids: list[str], train_ids: np.ndarray, idx: np.ndarray, sims: np.ndarray, run_id: str) -> pa.Table:
    n_gen, k = idx.shape
    found = idx >= 0
    gen_rows = np.repeat(np.arange(n_gen), k)[found.reshape(-1)]
    flat_idx = idx[found]
    n = len(flat_idx)
    return pa.table(
        {
            "pairing_id": pa.array([pid] * n, pa.string()),
            "generated_image_id": pa.array(gen_ids, pa.string()).take(gen_rows),
            "train_image_id": pa.array(train_ids[flat_idx], pa.string()),
            "method": pa.array(["ann"] * n, pa.string()),
            "embedder": pa.array([embedder] * n, pa.string()),
            "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), n_gen)[found.reshape(-1)]),
            "similarity": pa.array(sims[found].astype(np.float32)),
            "run_id": pa.array([run_id] * n, pa.string()),
        }
    )


def write_ann(
    ws: Workspace,
    embedder: Embedder,
    run_id: str,
    *,
    k: int = 20,
    hnsw: HnswParams | None = None,
    search: str = "auto",
    batch_size: int = 64,
    query_chunk: int = 4096,
    search_device: str = "cpu",
    progress: bool = False,
    engine: str | Distributor = "local",
    embed_source: str | Embedder | None = None,
    embedder_options: dict[str, Any] | None = None,
    device: str | None = "auto",
) -> PairingSummary:
    """Embed what is missing, then write the top-k candidates of every generated image not yet paired.

    search: "exact", "hnsw", or "auto" (exact on a GPU or up to AUTO_EXACT_MAX_TRAIN training vectors).
    search_device: where exact search and the HNSW shortlist's re-rank run (the graph search is CPU).
    engine: where the embedding job runs; embed_source: what it embeds with (default `embedder`; a
    plug-in name, built on each worker with embedder_options on device).
    """
    from tqdm import tqdm

    from fbmem_data.pairing.summary import PairingSummary

    started = time.perf_counter()
    for role in ("train", "generated"):
        embed_images(ws, embed_source or embedder, role=role, batch_size=batch_size, run_id=run_id, progress=progress, engine=engine,
                     embedder_options=embedder_options, device=device)
    ph = embedder_params_hash(embedder)
    train_list, train_vecs = load_vectors(ws, embedder.name, ph, role="train")
    gen_list, gen_vecs = load_vectors(ws, embedder.name, ph, role="generated")
    n_gen_usable = len(
        ws.sql("SELECT DISTINCT image_id FROM images WHERE role = 'generated' AND status = 'ok'").column("image_id")
    )
    pid, resolved, hnsw, fp, done = ann_pairing(ws, embedder.name, ph, k, search, search_device, train_list, hnsw)
    pending = np.array([i for i, g in enumerate(gen_list) if g not in done], dtype=np.int64)
    written = 0
    if len(pending) and len(train_list):
        index = None
        if hnsw is not None:
            index_key = hnsw_cache_key(embedder.name, ph, hnsw, fp)
            index = load_or_build_hnsw(train_vecs, hnsw, ws.root / INDEX_DIR / f"{index_key}.usearch")
        train_arr = np.asarray(train_list, dtype=object)
        with tqdm(total=len(pending), desc=f"pair ann k={k}", unit="gen", disable=not progress) as bar:
            for start in range(0, len(pending), query_chunk):
                rows_idx = pending[start : start + query_chunk]
                queries = gen_vecs[rows_idx]
                if index is None:
                    idx, sims = brute_force_top_k(queries, train_vecs, k, device=search_device)
                else:
                    idx, sims = hnsw_top_k(index, queries, k, device=search_device)
                chunk_ids = [gen_list[i] for i in rows_idx]
                table = _rows(pid, embedder.name, chunk_ids, train_arr, idx, sims, run_id)
                written += ws.write("candidates", table, on_conflict="append")
                bar.update(len(rows_idx))
    return PairingSummary(
        pairing_id=pid,
        method="ann",
        embedder=embedder.name,
        params_hash=ph,
        k=k,
        n_generated=len(gen_list),
        n_train=len(train_list),
        n_paired_now=len(pending) if train_list else 0,
        rows_written=written,
        seconds=round(time.perf_counter() - started, 3),
        n_generated_without_vector=n_gen_usable - len(gen_list),
        search=resolved,
    )
