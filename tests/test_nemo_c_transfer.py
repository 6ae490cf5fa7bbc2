"""NeMo-C mask transfer: the nemo-c-transfer mitigation, cluster centroids, the transfer views and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support.rows import region_score_row as _score
from typer.testing import CliRunner

from fbmem_data.cli.app import build_app
from fbmem_data.errors import InputError
from fbmem_data.mitigate import create_mitigation
from fbmem_data.nemo.transfer import compute_centroids, transfer_table
from fbmem_data.workspace import Workspace

MASK = "mask-1"
CENTROIDS = {0: [0.0, 0.0], 1: [3.0, 4.0], 2: [6.0, 8.0], 3: [0.0, 1.0]}  # distances from 0: 5, 10, 1


def _clusters_and_mask(ws: Workspace) -> None:
    ws.write(
        "prompt_clusters",
        [
            {
                "clustering_id": "C",
                "prompt_id": f"p{c}{i}",
                "model_id": "m",
                "cluster": c,
                "k": 4,
                "embedding": "flat",
                "params": "{}",
            }
            for c in CENTROIDS
            for i in range(2)
        ],
    )
    ws.write(
        "cluster_masks",
        [
            {
                "mask_id": MASK,
                "clustering_id": "C",
                "localization_id": "L",
                "model_id": "m",
                "mask_rule": "union",
                "cluster": c,
                "layer": layer,
                "neuron": n,
                "n_prompts_with": 1,
                "n_prompts": 2,
            }
            for c, layer, n in ((0, 0, 3), (0, 2, 5), (1, 1, 7))
        ],
    )


def test_mitigation_gives_every_prompt_the_source_clusters_mask(workspace: Workspace) -> None:
    _clusters_and_mask(workspace)
    ids = [f"p{c}{i}" for c in CENTROIDS for i in range(2)]
    mit = create_mitigation("nemo-c-transfer", cluster=0, mask=MASK)
    mit.prepare(workspace, "m", ids)
    assert all(mit.neurons_for(pid) == {0: [3], 2: [5]} for pid in ids)
    assert mit.params() == {"mask": MASK, "cluster": 0}
    with pytest.raises(InputError, match="no neurons for cluster 2"):
        create_mitigation("nemo-c-transfer", cluster=2, mask=MASK).prepare(workspace, "m", ids)
    with pytest.raises(InputError, match="integer"):
        create_mitigation("nemo-c-transfer", cluster="x")


@pytest.mark.slow  # builds the tiny pipeline and runs KMeans (~10 s on a loaded 2-core CPU)
def test_centroids_are_the_kmeans_centres(workspace: Workspace) -> None:
    import torch
    from sklearn.cluster import KMeans

    from fbmem_data.nemo.clusters import cluster_prompts, prompt_embeddings
    from fbmem_data.testing.pipelines import tiny_sd_pipeline

    torch.set_num_threads(1)
    pipe = tiny_sd_pipeline(seed=0)
    texts = [f"a {c} {s}" for c in ("red", "blue", "green") for s in ("cube", "ball", "cone")]
    workspace.write(
        "prompts",
        [
            {"prompt_id": f"p{i}", "prompt_set": "s", "text": t, "source_key": str(i), "source_index": i}
            for i, t in enumerate(texts)
        ],
    )
    cid = cluster_prompts(workspace, pipe, "m", "s", k=3)
    assert compute_centroids(workspace, pipe, "m", cid) == 3
    assert compute_centroids(workspace, pipe, "m", cid) == 0  # stored: no-op
    km = KMeans(n_clusters=3, max_iter=500, random_state=1).fit(prompt_embeddings(pipe, texts, "flat"))
    stored = workspace.sql("SELECT prompt_id, cluster FROM prompt_clusters ORDER BY prompt_id").to_pylist()
    assert [r["cluster"] for r in stored] == km.labels_.tolist()
    dist = {
        (r["cluster_a"], r["cluster_b"]): r["distance"]
        for r in workspace.sql("SELECT * FROM nemo_cluster_centroid_distances").to_pylist()
    }
    centres = km.cluster_centers_
    for (a, b), d in dist.items():
        assert d == pytest.approx(float(np.linalg.norm(centres[a] - centres[b])), rel=1e-4, abs=1e-4)



def _transfer_workspace(ws: Workspace) -> dict[int, float]:
    """Cluster 0's mask on every cluster's prompts: the fg drop shrinks with centroid distance."""
    _clusters_and_mask(ws)
    ws.write(
        "cluster_centroids",
        [
            {
                "clustering_id": "C",
                "model_id": "m",
                "embedding": "flat",
                "cluster": c,
                "n_prompts": 2,
                "dim": 2,
                "centroid": v,
            }
            for c, v in CENTROIDS.items()
        ],
    )
    params = json.dumps({"mask": MASK, "cluster": 0})
    drop = {0: 0.5, 1: 0.3, 2: 0.1, 3: 0.45}
    gens, scores = [], []
    for c in CENTROIDS:
        for i in range(2):
            pid = f"p{c}{i}"
            for m, mp in (("none", None), ("nemo-c-transfer", params)):
                gid = f"{pid}-{m}"
                gens.append(
                    {
                        "generation_id": gid,
                        "image_id": f"img-{gid}",
                        "prompt_id": pid,
                        "model_id": "m",
                        "seed": 1,
                        "steps": 50,
                        "guidance": 7.0,
                        "height": 64,
                        "width": 64,
                        "mitigation": m,
                        "mitigation_params": mp,
                    }
                )
                fg = 0.9 if m == "none" else 0.9 - drop[c] - 0.02 * i
                scores.append(_score(gid, f"t-{pid}", fg, 0.85))
    ws.write("generations", gens)
    ws.write("region_scores", scores)
    return {c: drop[c] + 0.01 for c in drop}  # mean |fg change| per target cluster


def test_transfer_views_and_fit(workspace: Workspace) -> None:
    expected = _transfer_workspace(workspace)
    rows = {r["target_cluster"]: r for r in transfer_table(workspace, MASK).to_pylist()}
    assert set(rows) == set(CENTROIDS) and all(
        r["source_cluster"] == 0 and r["n_pairs"] == 2 for r in rows.values()
    )
    assert rows[0]["in_cluster"] and not rows[1]["in_cluster"]
    assert {c: r["centroid_distance"] for c, r in rows.items()} == pytest.approx(
        {0: 0.0, 1: 5.0, 2: 10.0, 3: 1.0}
    )
    assert {c: r["fg_abs_change"] for c, r in rows.items()} == pytest.approx(expected)
    assert rows[1]["memorized_before"] == 1.0  # VM before (fg 0.9, bg 0.85)
    # VM -> BM (fg below 0.8, bg stays): weight 1.5 per pair
    assert rows[1]["mitigation_score"] == pytest.approx(3.0) and rows[1]["emb_change"] is None
    (fit,) = transfer_table(workspace, MASK, fit=True).to_pylist()
    x = [1.0, 5.0, 10.0]
    y = [expected[3], expected[1], expected[2]]
    slope, intercept = np.polyfit(x, y, 1)
    assert (
        fit["n_targets"] == 3
        and fit["fg_abs_slope"] == pytest.approx(slope)
        and fit["fg_abs_intercept"] == pytest.approx(intercept)
    )
    assert fit["fg_abs_slope"] < 0


def test_transfer_cli(workspace: Workspace, tmp_path: Path) -> None:
    app, ws = build_app(), str(workspace.root)
    result = CliRunner().invoke(app, ["nemo-c", "transfer", "--mask", MASK, "-w", ws])
    assert "no cluster mask" in str(result.exception)
    _clusters_and_mask(workspace)
    result = CliRunner().invoke(app, ["nemo-c", "transfer", "--mask", MASK, "-w", ws])
    assert "nemo-c-transfer" in str(result.exception) and "mitigation-param cluster=C" in str(
        result.exception.hint
    )
    _transfer_workspace(workspace)
    result = CliRunner().invoke(app, ["nemo-c", "transfer", "--mask", MASK, "--fit", "-w", ws, "-f", "json"])
    assert result.exit_code == 0, result.output
    (fit,) = json.loads(result.stdout)
    assert fit["source_cluster"] == 0 and fit["n_targets"] == 3


def test_transfer_embedding_similarity(workspace: Workspace) -> None:
    """The paper's own measure: image-embedding cosine to the training image the unmitigated twin matched."""
    import math

    _transfer_workspace(workspace)
    angle = {
        "img-p10-none": 0.1,
        "img-p10-nemo-c-transfer": 0.6,
        "t-p10": 0.0,
        "img-p11-none": 0.2,
        "img-p11-nemo-c-transfer": 0.3,
        "t-p11": 0.0,
    }
    workspace.write(
        "embeddings",
        [
            {
                "image_id": k,
                "embedder": "open_clip",
                "params_hash": "h",
                "dim": 2,
                "vector": [math.cos(a), math.sin(a)],
                "status": "ok",
            }
            for k, a in angle.items()
        ],
    )
    pairs = {
        r["prompt_id"]: r
        for r in workspace.sql("SELECT * FROM nemo_c_transfer_pairs WHERE target_cluster = 1").to_pylist()
    }
    assert pairs["p10"]["emb_before"] == pytest.approx(math.cos(0.1), abs=1e-6)
    assert pairs["p10"]["emb_after"] == pytest.approx(math.cos(0.6), abs=1e-6)
    (row,) = workspace.sql("SELECT * FROM nemo_c_transfer WHERE target_cluster = 1").to_pylist()
    changes = [math.cos(0.6) - math.cos(0.1), math.cos(0.3) - math.cos(0.2)]
    assert row["emb_change"] == pytest.approx(sum(changes) / 2, abs=1e-6)
    assert row["emb_abs_change"] == pytest.approx(sum(abs(c) for c in changes) / 2, abs=1e-6)
    # another embedder named by the variable: no vectors, no values
    other = workspace.sql(
        "SELECT emb_change FROM nemo_c_transfer WHERE target_cluster = 1", {"transfer_embedder": "sscd"}
    )
    assert other.column("emb_change")[0].as_py() is None
