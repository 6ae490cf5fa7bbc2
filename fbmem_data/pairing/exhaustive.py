"""`exhaustive` pairing: every usable generated image x every usable training image, as the paper.

pairing_id = params_hash({"method": "exhaustive"}), the same in every workspace and run: the pair
set only grows with the images, so re-runs add exactly the missing pairs (none when nothing new).
Rows are written in parts of whole generated images (about `chunk_rows` rows each), so a killed
run leaves every generated image either complete or absent.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from fbmem_data.errors import InputError
from fbmem_data.ids import params_hash

if TYPE_CHECKING:
    from fbmem_data.pairing.summary import PairingSummary
    from fbmem_data.workspace import Workspace

DEFAULT_MAX_PAIRS = 50_000_000


def exhaustive_pairing_id() -> str:
    return params_hash({"method": "exhaustive"})


def usable_image_ids(ws: Workspace, role: str) -> list[str]:
    table = ws.sql("SELECT DISTINCT image_id FROM images WHERE role = $role AND status = 'ok' ORDER BY 1", {"role": role})
    return table.column("image_id").to_pylist()


def _candidate_rows(pairing_id: str, gen: pa.Array, train: pa.Array, run_id: str) -> pa.Table:
    """The cross product gen x train as candidates rows, built with index arithmetic (no Python loop)."""
    n_gen, n_train = len(gen), len(train)
    n = n_gen * n_train
    return pa.table(
        {
            "pairing_id": pa.array([pairing_id], pa.string()).take(np.zeros(n, dtype=np.int64)),
            "generated_image_id": gen.take(np.repeat(np.arange(n_gen), n_train)),
            "train_image_id": train.take(np.tile(np.arange(n_train), n_gen)),
            "method": pa.array(["exhaustive"], pa.string()).take(np.zeros(n, dtype=np.int64)),
            "embedder": pa.nulls(n, pa.string()),
            "rank": pa.nulls(n, pa.int32()),
            "similarity": pa.nulls(n, pa.float32()),
            "run_id": pa.array([run_id], pa.string()).take(np.zeros(n, dtype=np.int64)),
        }
    )


def write_exhaustive(
    ws: Workspace,
    run_id: str,
    *,
    chunk_rows: int = 1_000_000,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    progress: bool = False,
) -> PairingSummary:
    """Write the missing exhaustive pairs.

    Raises:
        InputError: the full pair set would exceed max_pairs (use ann pairing instead).
    """
    from tqdm import tqdm

    from fbmem_data.pairing.summary import PairingSummary

    started = time.perf_counter()
    pid = exhaustive_pairing_id()
    gen_ids = usable_image_ids(ws, "generated")
    train_ids = usable_image_ids(ws, "train")
    total = len(gen_ids) * len(train_ids)
    if total > max_pairs:
        raise InputError(
            f"exhaustive pairing of {len(gen_ids):,} generated x {len(train_ids):,} training images "
            f"is {total:,} pairs, more than max_pairs={max_pairs:,}",
            hint="use `fbmem pair --method ann --k 20` (top-k by embedding), or raise max_pairs",
        )
    stored = ws.sql(
        "SELECT generated_image_id, count(DISTINCT train_image_id) AS n FROM candidates "
        "WHERE pairing_id = $pid GROUP BY 1",
        {"pid": pid},
    )
    stored_counts = dict(zip(stored.column("generated_image_id").to_pylist(), stored.column("n").to_pylist(), strict=True))
    # Training images are only ever added, so a generated image with all of them stored is complete.
    fresh = [g for g in gen_ids if g not in stored_counts]
    partial = [g for g in gen_ids if 0 < stored_counts.get(g, 0) < len(train_ids)]
    train_arr = pa.array(train_ids, pa.string())
    per_chunk = max(1, chunk_rows // max(1, len(train_ids)))
    written = 0
    with tqdm(total=len(fresh) + len(partial), desc="pair exhaustive", unit="gen", disable=not progress) as bar:
        if train_ids:
            for start in range(0, len(fresh), per_chunk):
                chunk = pa.array(fresh[start : start + per_chunk], pa.string())
                written += ws.write("candidates", _candidate_rows(pid, chunk, train_arr, run_id), on_conflict="append")
                bar.update(len(chunk))
            for start in range(0, len(partial), per_chunk):
                chunk = partial[start : start + per_chunk]
                missing = ws.sql(
                    """
                    SELECT g.image_id AS generated_image_id, t.image_id AS train_image_id
                    FROM (SELECT unnest($gens::VARCHAR[]) AS image_id) g
                    CROSS JOIN (SELECT unnest($train::VARCHAR[]) AS image_id) t
                    ANTI JOIN (SELECT generated_image_id, train_image_id FROM candidates
                               WHERE pairing_id = $pid AND generated_image_id IN (SELECT unnest($gens::VARCHAR[]))) c
                      ON c.generated_image_id = g.image_id AND c.train_image_id = t.image_id
                    """,
                    {"gens": chunk, "train": train_ids, "pid": pid},
                )
                n = missing.num_rows
                rows = missing.append_column("pairing_id", pa.array([pid] * n, pa.string()))
                rows = rows.append_column("method", pa.array(["exhaustive"] * n, pa.string()))
                rows = rows.append_column("run_id", pa.array([run_id] * n, pa.string()))
                written += ws.write("candidates", rows, on_conflict="append")
                bar.update(len(chunk))
    return PairingSummary(
        pairing_id=pid,
        method="exhaustive",
        embedder=None,
        params_hash=None,
        k=None,
        n_generated=len(gen_ids),
        n_train=len(train_ids),
        n_paired_now=len(fresh) + len(partial) if train_ids else 0,
        rows_written=written,
        seconds=round(time.perf_counter() - started, 3),
    )
