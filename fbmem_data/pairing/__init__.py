"""Pairing: which training images each generated image is scored against (the `candidates` table).

- `exhaustive`: every generated x every training image, as the paper (small training sets).
- `ann`: top-k training images by embedding cosine similarity (exact search, or usearch HNSW for
  large training sets).

`pair(ws, ...)` is the library equivalent of `fbmem pair`; it records a `pair` run and returns the
pairing_id that scoring reads candidates by. See docs/pairing.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fbmem_data.errors import InputError
from fbmem_data.pairing.summary import PairingSummary

if TYPE_CHECKING:
    from fbmem_data.distribute import Distributor, EngineOptions
    from fbmem_data.embed.base import Embedder
    from fbmem_data.pairing.search import HnswParams
    from fbmem_data.workspace import Workspace

METHODS = ("exhaustive", "ann")


def pair_with_summary(
    ws: Workspace,
    method: str = "exhaustive",
    embedder: str | Embedder = "thumbnail",
    k: int = 20,
    *,
    embedder_options: dict[str, Any] | None = None,
    device: str | None = "auto",
    batch_size: int = 64,
    search: str = "auto",
    hnsw: HnswParams | None = None,
    chunk_rows: int = 1_000_000,
    max_pairs: int | None = None,
    progress: bool = False,
    engine: str | Distributor = "local",
    engine_options: EngineOptions | None = None,
) -> PairingSummary:
    """`pair`, returning the full PairingSummary (what the CLI prints).

    The model work of ann pairing, embedding every image, runs as an `embed` job on `engine`; the
    nearest-neighbour search then runs here over the stored vectors. Exhaustive pairing has no model
    work and ignores the engine.
    """
    from fbmem_data.distribute import open_engine
    from fbmem_data.embed import create_embedder
    from fbmem_data.pairing.exhaustive import DEFAULT_MAX_PAIRS, write_exhaustive

    if method not in METHODS:
        raise InputError(f"pairing method must be one of {list(METHODS)}, got {method!r}")
    if method == "exhaustive":
        config: dict[str, Any] = {"method": method, "chunk_rows": chunk_rows}
        with ws.run("pair", config) as run:
            return write_exhaustive(
                ws, run.run_id, chunk_rows=chunk_rows, max_pairs=max_pairs or DEFAULT_MAX_PAIRS, progress=progress
            )
    from fbmem_data.devices import resolve_device
    from fbmem_data.pairing.ann import write_ann
    from fbmem_data.pairing.search import SEARCHES, HnswParams

    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    if search not in SEARCHES:
        raise InputError(f"search must be one of {list(SEARCHES)}, got {search!r}")
    hnsw = hnsw or HnswParams()
    with open_engine(engine, engine_options) as distributor:
        embed_source: str | Embedder = embedder
        if isinstance(embedder, str):
            # an in-process engine embeds with the embedder built here; others build their own from the name
            embedder = create_embedder(embedder, device=device if distributor.in_process else "cpu", **(embedder_options or {}))
            if distributor.in_process:
                embed_source = embedder
        config = {
            "method": method,
            "embedder": embedder.name,
            "embedder_params": embedder.params(),
            "k": k,
            "search": search,
            "hnsw": hnsw.as_dict(),
            "batch_size": batch_size,
        }
        with ws.run("pair", config) as run:
            return write_ann(
                ws, embedder, run.run_id, k=k, hnsw=hnsw, search=search, batch_size=batch_size,
                search_device=resolve_device(device), progress=progress, engine=distributor, embed_source=embed_source,
                embedder_options=embedder_options, device=device,
            )


def pair(
    ws: Workspace,
    method: str = "exhaustive",
    embedder: str | Embedder = "thumbnail",
    k: int = 20,
    **options: Any,
) -> str:
    """Write candidate pairs for every usable generated image and return the pairing_id.

    Args:
        ws: the workspace (images with role 'generated' and 'train', status 'ok').
        method: "exhaustive" (all pairs) or "ann" (top-k by embedding).
        embedder: ann only: plug-in name or a built Embedder.
        k: ann only: training images kept per generated image.
        **options: embedder_options (dict), device, batch_size, search ("auto", "exact" or
            "hnsw", ann), hnsw (HnswParams), chunk_rows and max_pairs (exhaustive), progress,
            engine and engine_options (where ann's embedding runs: "local", "ray" or a Distributor).

    Returns:
        The pairing_id of the candidates rows (re-runs with the same images return the same id
        and write nothing new).

    Raises:
        InputError: unknown method or search, k < 1, or exhaustive over more than max_pairs pairs.
        PluginError, ModelNotFoundError: the embedder cannot be built.
    """
    return pair_with_summary(ws, method, embedder, k, **options).pairing_id


__all__ = ["METHODS", "PairingSummary", "pair", "pair_with_summary"]
