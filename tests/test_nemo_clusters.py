"""NeMo-C: KMeans clusters and cluster masks built in SQL, checked against a direct Python computation."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from fbmem_data.errors import InputError
from fbmem_data.nemo.clusters import build_cluster_masks, kmeans_labels
from fbmem_data.workspace import Workspace

LOC = "loc-1"
CLUSTERING = "clu-1"


def _random_layout(ws: Workspace, seed: int) -> tuple[dict[str, int], dict[str, set[tuple[int, int]]]]:
    """12 clusters (ids up to 11: cluster 10 and 11 must not read cluster 1's neurons), random neurons."""
    rng = random.Random(seed)
    clusters = {f"p{i:03d}": rng.randrange(12) for i in range(120)}
    localized = {p for p in clusters if rng.random() < 0.8}
    neurons = {
        p: {(rng.randrange(7), rng.randrange(40)) for _ in range(rng.randrange(0, 12))} for p in localized
    }
    ws.write("prompt_clusters", [
        {"clustering_id": CLUSTERING, "prompt_id": p, "model_id": "m", "cluster": c, "k": 12, "embedding": "flat", "params": "{}"}
        for p, c in clusters.items()
    ])
    ws.write("nemo_summary", [{"localization_id": LOC, "prompt_id": p, "model_id": "m", "status": "imported"} for p in localized])
    rows = [
        {"localization_id": LOC, "prompt_id": p, "model_id": "m", "stage": stage, "layer": layer, "neuron": n}
        for p, ns in neurons.items() for layer, n in ns for stage in ("refined", "initial")
    ]
    # Initial-stage-only neurons must never enter a mask.
    rows += [{"localization_id": LOC, "prompt_id": p, "model_id": "m", "stage": "initial", "layer": 0, "neuron": 999} for p in localized]
    # Another localization's neurons must not either.
    rows += [{"localization_id": "other", "prompt_id": p, "model_id": "m", "stage": "refined", "layer": 1, "neuron": 998} for p in localized]
    ws.write("nemo_neurons", rows)
    return {p: c for p, c in clusters.items() if p in localized}, neurons


def _python_masks(clusters: dict[str, int], neurons: dict[str, set[tuple[int, int]]], q: float | None) -> set[tuple[int, int, int]]:
    out = set()
    for c in set(clusters.values()):
        members = [p for p, pc in clusters.items() if pc == c]
        counts: dict[tuple[int, int], int] = {}
        for p in members:
            for key in neurons[p]:
                counts[key] = counts.get(key, 0) + 1
        out |= {(c, layer, n) for (layer, n), k in counts.items() if q is None or k >= q * len(members)}
    return out


@pytest.mark.parametrize("q", [None, 0.1, 0.25, 0.5, 1.0])
def test_sql_masks_match_python(workspace: Workspace, q: float | None) -> None:
    clusters, neurons = _random_layout(workspace, seed=7)
    mask_id = build_cluster_masks(workspace, CLUSTERING, LOC, q=q)
    rows = workspace.sql("SELECT cluster, layer, neuron, n_prompts FROM cluster_masks WHERE mask_id = $m", {"m": mask_id}).to_pylist()
    assert {(r["cluster"], r["layer"], r["neuron"]) for r in rows} == _python_masks(clusters, neurons, q)
    sizes = {c: sum(1 for pc in clusters.values() if pc == c) for c in set(clusters.values())}
    assert all(r["n_prompts"] == sizes[r["cluster"]] for r in rows)
    if q is None:
        assert {r["cluster"] for r in rows} >= {10, 11} & set(clusters.values())
    # Idempotent: the same mask again writes nothing.
    build_cluster_masks(workspace, CLUSTERING, LOC, q=q)
    assert workspace.sql("SELECT count(*) AS n FROM cluster_masks WHERE mask_id = $m", {"m": mask_id}).column("n")[0].as_py() == len(rows)


def test_mask_errors(workspace: Workspace) -> None:
    _random_layout(workspace, seed=1)
    with pytest.raises(InputError, match="q must be"):
        build_cluster_masks(workspace, CLUSTERING, LOC, q=0)
    with pytest.raises(InputError, match="localized"):
        build_cluster_masks(workspace, CLUSTERING, "nope")


def test_kmeans_fixed_and_auto() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 8)) * 10
    x = np.concatenate([c + rng.normal(size=(20, 8)) for c in centers]).astype(np.float32)
    labels, k, sil = kmeans_labels(x, 3)
    assert k == 3 and len(set(labels.tolist())) == 3 and sil is not None and sil > 0.5
    again, _, _ = kmeans_labels(x, 3)
    assert (labels == again).all()  # random_state=1: deterministic
    _, k_auto, _ = kmeans_labels(x, "auto", k_range=range(2, 7))
    assert k_auto == 3
    with pytest.raises(InputError):
        kmeans_labels(x[:2], 5)


def test_cluster_prompts_flat_embeddings(workspace: Workspace) -> None:
    import torch

    from fbmem_data.nemo.clusters import cluster_prompts, prompt_embeddings
    from fbmem_data.testing.pipelines import tiny_sd_pipeline

    torch.set_num_threads(1)
    pipe = tiny_sd_pipeline(seed=0)
    texts = [f"a {c} {s}" for c in ("red", "blue", "green") for s in ("cube", "ball", "cone")]
    flat = prompt_embeddings(pipe, texts[:2], "flat")
    assert flat.shape == (2, 77 * 32)  # tokens x dim, flattened, no pooling
    assert prompt_embeddings(pipe, texts[:2], "pooled").shape == (2, 32)
    workspace.write("prompts", [{"prompt_id": f"p{i}", "prompt_set": "s", "text": t, "source_key": str(i)} for i, t in enumerate(texts)])
    cid = cluster_prompts(workspace, pipe, "m", "s", k=3)
    sizes = workspace.sql("SELECT cluster, count(*) AS n FROM prompt_clusters WHERE clustering_id = $c GROUP BY 1", {"c": cid}).to_pylist()
    assert sum(r["n"] for r in sizes) == 9 and len(sizes) == 3
    assert cluster_prompts(workspace, pipe, "m", "s", k=3) == cid  # re-run is a no-op
    assert workspace.count("prompt_clusters") == 9


def test_flat_embeddings_are_computed_in_float32_for_a_half_precision_pipeline(tmp_path: Path) -> None:
    import torch
    from diffusers import StableDiffusionPipeline

    from fbmem_data.nemo.activations import encode_prompts
    from fbmem_data.nemo.clusters import prompt_embeddings
    from fbmem_data.testing.pipelines import tiny_sd_pipeline

    torch.set_num_threads(1)
    texts = ["a red cube on a table", "a blue ball in the grass"]
    pipe = tiny_sd_pipeline(seed=0)
    full = prompt_embeddings(pipe, texts, "flat")
    pipe.save_pretrained(tmp_path / "model")
    half_pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "model", dtype=torch.float16, local_files_only=True)
    half = prompt_embeddings(half_pipe, texts, "flat")
    assert half_pipe.text_encoder.dtype == torch.float16  # the pipeline itself is left as it was
    assert abs(half - full).max() < 1e-6  # the paper clusters float32 embeddings
    rounded = encode_prompts(half_pipe, texts).float().flatten(1).numpy()
    assert abs(rounded - full).max() > 1e-4  # what the half-precision pipeline alone would give
