"""`fbmem pair --dry-run`: what a pairing call would do, by its own resume rules, writing nothing.

Exhaustive: the generated images lacking some of their pairs and the pairs missing (as
`write_exhaustive` computes them). By embedding: the images without a vector for the embedder and its
settings, the pairing_id the run would write, the generated images without candidates under it, and the
candidate rows (min(k, training images) each; HNSW may find fewer). The pairing_id hashes the training
images that will have vectors; the plan counts every pending one whose file exists, so a file that
exists but does not decode is the one case where the plan names another pairing than the run writes.
Times come from the cost model of docs/performance.md and docs/pairing.md: one CPU thread, an estimate.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fbmem_data.errors import InputError

if TYPE_CHECKING:
    from fbmem_data.embed.base import Embedder
    from fbmem_data.pairing.search import HnswParams
    from fbmem_data.workspace import Workspace

#: Embedding cost per 512 x 512 PNG on one CPU thread (docs/pairing.md): decode, then the embedder's
#: forward pass (sscd: a ResNet-50 at 320 x 320, its trunk). open_clip was not measured.
DECODE_S = 0.037
EMBED_S = {"thumbnail": 0.0056, "efficientnet-lite0": 0.394, "sscd": 1.834}
EXACT_S_PER_DOT_768 = 20e-9  # exact search: per (query, training vector) at 768 dimensions
#: Once per training set, then reloaded from WORKSPACE/indexes/; one insertion thread (docs/pairing.md).
HNSW_BUILD_S_PER_VECTOR = 0.3e-3
HNSW_QUERY_S = 0.2e-3  # per query at 100,000 training vectors (grows slowly with them)
#: Exhaustive candidates written per second: 0.73-0.89 M/s measured writing 1 M and 4 M pairs (400 and
#: 1,600 generated x 2,500 training images) on a 2-core machine at load ~1.3.
EXHAUSTIVE_ROWS_PER_S = 0.8e6


def plan_table(plan: dict[str, Any]) -> Any:
    """A plan as a one-row Arrow table with fixed column types (None columns stay typed for CSV/Parquet)."""
    import pyarrow as pa

    schema = pa.schema(
        [
            ("pairing_id", pa.string()),
            ("method", pa.string()),
            ("embedder", pa.string()),
            ("k", pa.int64()),
            ("search", pa.string()),
            ("n_generated", pa.int64()),
            ("n_train", pa.int64()),
            ("n_paired_now", pa.int64()),
            ("candidate_rows", pa.int64()),
            ("embeddings_to_compute", pa.int64()),
            ("estimated_cpu_s", pa.float64()),
            ("dry_run", pa.bool_()),
        ]
    )
    return pa.Table.from_pylist([plan], schema=schema)


def plan_pairing(
    ws: Workspace,
    method: str = "exhaustive",
    embedder: str | Embedder = "thumbnail",
    k: int = 20,
    *,
    embedder_options: dict[str, Any] | None = None,
    device: str | None = "auto",
    search: str = "auto",
    hnsw: HnswParams | None = None,
    max_pairs: int | None = None,
) -> dict[str, Any]:
    """What `pair_with_summary` with the same arguments would write; writes nothing.

    Returns:
        {"pairing_id", "method", "embedder", "k", "search", "n_generated", "n_train", "n_paired_now"
        (generated images a run would pair now), "candidate_rows", "embeddings_to_compute",
        "estimated_cpu_s", "dry_run": True}; estimated_cpu_s is None where an embedder's cost is not measured.

    Raises:
        The errors `pair` raises for the same arguments (unknown method or search, k < 1, more than
        max_pairs exhaustive pairs, an embedder that cannot be built).
    """
    from fbmem_data.pairing import METHODS

    if method not in METHODS:
        raise InputError(f"pairing method must be one of {list(METHODS)}, got {method!r}")
    if method == "exhaustive":
        return _plan_exhaustive(ws, max_pairs)
    return _plan_ann(ws, embedder, k, embedder_options, device, search, hnsw)


def _plan_exhaustive(ws: Workspace, max_pairs: int | None) -> dict[str, Any]:
    from fbmem_data.pairing.exhaustive import DEFAULT_MAX_PAIRS, exhaustive_pairing_id, usable_image_ids

    pid = exhaustive_pairing_id()
    gen_ids = usable_image_ids(ws, "generated")
    train_ids = usable_image_ids(ws, "train")
    total = len(gen_ids) * len(train_ids)
    limit = max_pairs or DEFAULT_MAX_PAIRS
    if total > limit:
        raise InputError(
            f"exhaustive pairing of {len(gen_ids):,} generated x {len(train_ids):,} training images "
            f"is {total:,} pairs, more than max_pairs={limit:,}",
            hint="use `fbmem pair --method ann --k 20` (top-k by embedding), or raise max_pairs",
        )
    # write_exhaustive's rule: a generated image with as many distinct stored partners as there are
    # training images is complete; one with none gets every pair; one in between gets the pairs with
    # current training images it lacks.
    stored = ws.sql(
        """
        SELECT generated_image_id AS g, count(DISTINCT train_image_id) AS n_all,
               count(DISTINCT train_image_id) FILTER (WHERE train_image_id IN (SELECT unnest($train::VARCHAR[]))) AS n_current
        FROM candidates WHERE pairing_id = $pid GROUP BY 1
        """,
        {"pid": pid, "train": train_ids},
    ).to_pylist()
    counts = {r["g"]: (r["n_all"], r["n_current"]) for r in stored}
    n_train = len(train_ids)
    fresh = [g for g in gen_ids if g not in counts]
    partial = [g for g in gen_ids if 0 < counts.get(g, (0, 0))[0] < n_train]
    rows = (len(fresh) * n_train + sum(n_train - counts[g][1] for g in partial)) if train_ids else 0
    return {
        "pairing_id": pid,
        "method": "exhaustive",
        "embedder": None,
        "k": None,
        "search": None,
        "n_generated": len(gen_ids),
        "n_train": len(train_ids),
        "n_paired_now": len(fresh) + len(partial) if train_ids else 0,
        "candidate_rows": rows,
        "embeddings_to_compute": 0,
        "estimated_cpu_s": round(rows / EXHAUSTIVE_ROWS_PER_S, 1),
        "dry_run": True,
    }


def _plan_ann(
    ws: Workspace,
    embedder: str | Embedder,
    k: int,
    embedder_options: dict[str, Any] | None,
    device: str | None,
    search: str,
    hnsw: HnswParams | None,
) -> dict[str, Any]:
    from fbmem_data.devices import resolve_device
    from fbmem_data.embed import create_embedder
    from fbmem_data.embed.store import embedder_params_hash
    from fbmem_data.pairing.ann import INDEX_DIR, ann_pairing, hnsw_cache_key
    from fbmem_data.pairing.search import SEARCHES

    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    if search not in SEARCHES:
        raise InputError(f"search must be one of {list(SEARCHES)}, got {search!r}")
    if isinstance(embedder, str):
        embedder = create_embedder(embedder, device=device, **(embedder_options or {}))
    ph = embedder_params_hash(embedder)
    # Per usable image of each role: has an ok vector, has an error row (never retried), or has none yet.
    rows = ws.sql(
        """
        WITH usable AS (
            SELECT DISTINCT image_id, role FROM images WHERE status = 'ok' AND role IN ('train', 'generated')
        ), stored AS (
            SELECT image_id, bool_or(status = 'ok') AS ok FROM embeddings
            WHERE embedder = $embedder AND params_hash = $ph GROUP BY 1
        )
        SELECT u.image_id, u.role, s.ok, p.store_path FROM usable u LEFT JOIN stored s USING (image_id)
        LEFT JOIN (SELECT image_id, min(store_path) AS store_path FROM images WHERE status = 'ok' GROUP BY 1) p USING (image_id)
        ORDER BY 1
        """,
        {"embedder": embedder.name, "ph": ph},
    ).to_pylist()
    # write_ann embeds the training images, then the generated ones: an image of both roles once.
    to_embed = {r["image_id"] for r in rows if r["ok"] is None}
    for r in rows:  # an image whose file is gone will embed as an error row, without a vector
        if r["ok"] is None and (r["store_path"] is None or not (Path(ws.root) / r["store_path"]).is_file()):
            r["ok"] = False
    vectors = {
        role: sorted({r["image_id"] for r in rows if r["role"] == role and r["ok"] is not False})
        for role in ("train", "generated")
    }
    train_ids, gen_ids = vectors["train"], vectors["generated"]
    search_device = resolve_device(device)
    pid, resolved, hnsw, fp, done = ann_pairing(ws, embedder.name, ph, k, search, search_device, train_ids, hnsw)
    pending = sum(1 for g in gen_ids if g not in done) if train_ids else 0
    seconds: float | None = None
    if embedder.name in EMBED_S:
        seconds = len(to_embed) * (DECODE_S + EMBED_S[embedder.name])
        if pending and hnsw is None:
            seconds += pending * len(train_ids) * EXACT_S_PER_DOT_768 * embedder.dim / 768
        elif pending and hnsw is not None:
            index_key = hnsw_cache_key(embedder.name, ph, hnsw, fp)
            cached = (Path(ws.root) / INDEX_DIR / f"{index_key}.usearch").is_file()
            seconds += (0 if cached else len(train_ids) * HNSW_BUILD_S_PER_VECTOR) + pending * HNSW_QUERY_S
    return {
        "pairing_id": pid,
        "method": "ann",
        "embedder": embedder.name,
        "k": k,
        "search": resolved,
        "n_generated": len(gen_ids),
        "n_train": len(train_ids),
        "n_paired_now": pending,
        "candidate_rows": pending * min(k, len(train_ids)),
        "embeddings_to_compute": len(to_embed),
        "estimated_cpu_s": None if seconds is None else round(seconds, 1),
        "dry_run": True,
    }
