"""NeMo-C mask transfer: cluster centroids, and the transfer tables (sql/59_nemo_c_transfer.sql).

The paper applied one cluster's union mask to the prompts of the other clusters and plotted how much it
changed their generations (CLIP image similarity, unblocked - blocked) against the Euclidean distance
between the KMeans centroids of the two clusters, with a fitted line. fbmem stores the centroids
(`cluster_centroids`: the mean embedding of each cluster's prompts, in the clustering's own embedding,
which for KMeans are its cluster centres) and measures the change with FB-Mem (fg/bg scores, labels,
the mitigation-score weights) and, when image embeddings are stored, the embedding similarity.
Generation is `fbmem generate --mitigation nemo-c-transfer` (fbmem_data.mitigate.nemo_transfer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fbmem_data.errors import InputError
from fbmem_data.runs import recorded

if TYPE_CHECKING:
    import pyarrow as pa

    from fbmem_data.workspace import Workspace


def mask_clustering(ws: Workspace, mask_id: str) -> str:
    """The clustering a stored mask belongs to.

    Raises:
        InputError: no such mask.
    """
    found = ws.sql(
        "SELECT DISTINCT clustering_id FROM cluster_masks WHERE mask_id = $m", {"m": mask_id}
    ).column("clustering_id")
    if len(found) == 0:
        raise InputError(
            f"no cluster mask {mask_id!r}",
            hint="`fbmem sql 'SELECT * FROM nemo_cluster_mask_sizes'` lists the stored masks",
        )
    return str(found[0].as_py())


@recorded(
    "nemo-c centroids",
    lambda a: {"model_id": a["model_id"], "clustering": a["clustering_id"], "embedding": a["embedding"]},
)
def compute_centroids(
    ws: Workspace,
    pipe: Any,
    model_id: str,
    clustering_id: str,
    *,
    embedding: str | None = None,
    run_id: str | None = None,
) -> int:
    """Write the mean prompt embedding of every cluster into `cluster_centroids`; returns rows written
    (0 when they are stored already). `embedding` defaults to the clustering's own.

    Raises:
        InputError: unknown clustering.
    """
    import numpy as np

    from fbmem_data.nemo.clusters import prompt_embeddings

    rows = ws.sql(
        "SELECT c.prompt_id, c.cluster, c.embedding, p.text FROM prompt_clusters c JOIN prompts p USING (prompt_id) "
        "WHERE c.clustering_id = $c ORDER BY c.cluster, p.source_index NULLS LAST, p.source_key, c.prompt_id",
        {"c": clustering_id},
    ).to_pylist()
    if not rows:
        raise InputError(f"no clustering {clustering_id!r} (or none of its prompts is stored)")
    kind = embedding or rows[0]["embedding"]
    stored = (
        ws.sql(
            "SELECT count(*) AS n FROM cluster_centroids WHERE clustering_id = $c AND model_id = $m AND embedding = $e",
            {"c": clustering_id, "m": model_id, "e": kind},
        )
        .column("n")[0]
        .as_py()
    )
    if stored:
        return 0
    vectors = prompt_embeddings(pipe, [r["text"] for r in rows], kind)  # type: ignore[arg-type]
    labels = np.asarray([r["cluster"] for r in rows])
    out = []
    for cluster in sorted(set(labels.tolist())):
        centroid = vectors[labels == cluster].astype(np.float64).mean(axis=0)
        out.append(
            {
                "clustering_id": clustering_id,
                "model_id": model_id,
                "embedding": kind,
                "cluster": int(cluster),
                "n_prompts": int((labels == cluster).sum()),
                "dim": int(centroid.shape[0]),
                "centroid": centroid.astype(np.float32).tolist(),
                "run_id": run_id,
            }
        )
    return ws.write("cluster_centroids", out)


def transfer_table(ws: Workspace, mask_id: str, *, fit: bool = False) -> pa.Table:
    """The nemo_c_transfer rows of a mask (or, with fit, its nemo_c_transfer_fit rows).

    Raises:
        InputError: no nemo-c-transfer generation with this mask is labelled yet.
    """
    n = (
        ws.sql("SELECT count(*) AS n FROM nemo_c_transfer_pairs WHERE mask_id = $m", {"m": mask_id})
        .column("n")[0]
        .as_py()
    )
    if not n:
        raise InputError(
            f"no labelled nemo-c-transfer generations with mask {mask_id}, matched to unmitigated ones",
            hint=f"fbmem generate ... --mitigation none --mitigation nemo-c-transfer --mitigation-param mask={mask_id} "
            "--mitigation-param cluster=C, then segment, pair and score them",
        )
    view = "nemo_c_transfer_fit" if fit else "nemo_c_transfer"
    return ws.sql(f"SELECT * FROM {view} WHERE mask_id = $m", {"m": mask_id})
