"""Import the paper's released NeMo-C clusters and union masks, so its clusters can be used as they are.

Released files (the FB-Mem paper's repository):
- the cluster assignment `memorized_laion_prompts_cluster_all_embeddings.csv` (and one
  `memorized_laion_prompts_cluster_<N>_embeddings.csv` per cluster): `;`-separated, columns
  Caption;cluster;URL;type;mean_sscd;max_sscd;Index. The cluster id is the `cluster` column; rows
  are matched to ingested prompts by caption (and URL when captions repeat), as `fbmem nemo import`;
- the union masks `neurons_cluster_<N>.npz`: numpy archives arr_0 .. arr_6, the neuron indices of
  each NeMo layer (layer order of fbmem_data.nemo.layers).

The cluster of a mask file is the whole number in its name (or given as CLUSTER=FILE). The reference
code took the first digit of the name, so its clusters 10 and 11 ran with cluster 1's mask; only ten
mask files (clusters 0-9) were released, and fbmem never substitutes one cluster's mask for another:
prompts of a cluster without a mask generate unmitigated under `nemo-c` (the import reports them).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fbmem_data.errors import InputError
from fbmem_data.ids import params_hash
from fbmem_data.runs import recorded

if TYPE_CHECKING:
    from fbmem_data.workspace import Workspace

SD_V14 = "CompVis/stable-diffusion-v1-4"
CLUSTER_COLUMNS = ("Caption", "cluster")
_MASK_NAME = re.compile(r"(\d+)\D*$")


@dataclass
class ClusterImport:
    clustering_id: str
    rows: int = 0
    matched: int = 0
    clusters: dict[int, int] = field(default_factory=dict)  # cluster -> prompts
    unmatched: list[str] = field(default_factory=list)


@dataclass
class MaskImport:
    mask_id: str
    clustering_id: str
    neurons: dict[int, int] = field(default_factory=dict)  # cluster -> mask size
    clusters_without_mask: list[int] = field(default_factory=list)


def _read_cluster_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise InputError(f"cluster file {path} does not exist")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter=";")
        missing = [c for c in CLUSTER_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(
                f"{path} lacks column(s) {missing}",
                hint="expected the released format Caption;cluster;URL;type;...",
            )
        return list(reader)


@recorded(
    "nemo-c import clusters",
    lambda a: {"files": [str(p) for p in a["paths"]], "model_id": a["model_id"], "prompt_set": a["prompt_set"]},
)
def import_cluster_files(
    ws: Workspace,
    paths: Sequence[Path],
    *,
    model_id: str = SD_V14,
    prompt_set: str = "memorized",
    run_id: str | None = None,
) -> ClusterImport:
    """Read released cluster CSVs (the all-prompts file, per-cluster files, or both) into prompt_clusters.

    clustering_id = "import:" + a hash of the (prompt, cluster) assignment, so a re-import is a no-op.

    Raises:
        InputError: a file is missing or lacks a column, a cluster id is not an integer, one prompt gets
            two different clusters, or no caption matches a prompt of the set.
    """
    prompts = ws.sql(
        "SELECT prompt_id, text, url FROM prompts WHERE prompt_set = $set", {"set": prompt_set}
    ).to_pylist()
    if not prompts:
        raise InputError(
            f"no prompts in set {prompt_set!r}",
            hint="ingest memorized_laion_prompts.csv first (fbmem ingest prompts)",
        )
    by_text: dict[str, list[dict[str, str]]] = {}
    for p in prompts:
        by_text.setdefault(p["text"], []).append(p)
        if p["text"].strip() != p["text"]:
            by_text.setdefault(p["text"].strip(), []).append(p)
    assignment: dict[str, int] = {}
    unmatched: list[str] = []
    n_rows = 0
    for path in paths:
        for line, rec in enumerate(_read_cluster_rows(path), start=2):
            n_rows += 1
            try:
                cluster = int(str(rec["cluster"]).strip())
            except ValueError as exc:
                raise InputError(
                    f"{path.name} line {line}: cluster {rec['cluster']!r} is not an integer"
                ) from exc
            caption = rec["Caption"]
            candidates = by_text.get(caption) or by_text.get(caption.strip()) or []
            if len(candidates) > 1 and rec.get("URL"):
                candidates = [p for p in candidates if p["url"] == rec["URL"]] or candidates
            if not candidates:
                unmatched.append(caption)
                continue
            pid = candidates[0]["prompt_id"]
            if assignment.get(pid, cluster) != cluster:
                raise InputError(
                    f"{path.name} line {line}: prompt {caption[:50]!r} is in cluster {assignment[pid]} and {cluster}",
                    hint="import one clustering at a time",
                )
            assignment[pid] = cluster
    if not assignment:
        raise InputError(
            f"none of the {n_rows} captions matches a prompt of set {prompt_set!r}",
            hint="ingest memorized_laion_prompts.csv as --set memorized, or pass --prompts SET",
        )
    clusters = sorted(set(assignment.values()))
    clustering_id = "import:" + params_hash({"model_id": model_id, "assignment": sorted(assignment.items())})
    params = {
        "source": "import",
        "files": [p.name for p in paths],
        "prompt_set": prompt_set,
        "model_id": model_id,
    }
    ws.write(
        "prompt_clusters",
        [
            {
                "clustering_id": clustering_id,
                "prompt_id": pid,
                "model_id": model_id,
                "cluster": cluster,
                "k": len(clusters),
                "embedding": "flat",
                "silhouette": None,
                "params": json.dumps(params),
                "run_id": run_id,
            }
            for pid, cluster in sorted(assignment.items())
        ],
    )
    report = ClusterImport(
        clustering_id=clustering_id, rows=n_rows, matched=len(assignment), unmatched=unmatched
    )
    for cluster in assignment.values():
        report.clusters[cluster] = report.clusters.get(cluster, 0) + 1
    return report


def mask_cluster(path: Path) -> int:
    """The cluster a released mask file holds: the whole number at the end of its name (neurons_cluster_11.npz -> 11).

    Raises:
        InputError: the name holds no number.
    """
    found = _MASK_NAME.search(path.stem)
    if not found:
        raise InputError(f"cannot tell the cluster of mask file {path.name}", hint="pass it as CLUSTER=FILE")
    return int(found.group(1))


def read_mask_file(path: Path, widths: Sequence[int] | None = None) -> dict[int, list[int]]:
    """{layer: sorted unique neurons} from a released .npz (arr_0 .. arr_{L-1}, one per NeMo layer).

    Raises:
        InputError: missing or unreadable file, arrays not named arr_0.., non-integer or negative
            indices, or an index beyond the layer's width (when widths are known).
    """
    import numpy as np

    if not path.is_file():
        raise InputError(f"mask file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: np.asarray(npz[name]) for name in npz.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"{path.name}: not a readable .npz of neuron index arrays: {exc}") from exc
    expected = [f"arr_{i}" for i in range(len(arrays))]
    if sorted(arrays) != sorted(expected) or not arrays:
        raise InputError(
            f"{path.name}: expected arrays arr_0..arr_N (one per NeMo layer), found {sorted(arrays)}"
        )
    if widths is not None and len(arrays) != len(widths):
        raise InputError(f"{path.name}: {len(arrays)} layers, the model has {len(widths)} NeMo layers")
    out: dict[int, list[int]] = {}
    for layer in range(len(arrays)):
        values = arrays[f"arr_{layer}"].ravel()
        if values.size and (not np.issubdtype(values.dtype, np.integer) or values.min() < 0):
            raise InputError(f"{path.name}: layer {layer} holds non-integer or negative neuron indices")
        neurons = sorted({int(v) for v in values})
        if widths is not None and neurons and neurons[-1] >= widths[layer]:
            raise InputError(
                f"{path.name}: layer {layer} has neuron {neurons[-1]}, beyond its width {widths[layer]}"
            )
        out[layer] = neurons
    return out


@recorded(
    "nemo-c import masks",
    lambda a: {"clustering": a["clustering_id"], "masks": {c: str(p) for c, p in a["files"].items()},
               "widths": list(a["widths"]) if a["widths"] is not None else None},
)
def import_cluster_masks(
    ws: Workspace,
    clustering_id: str,
    files: Mapping[int, Path],
    *,
    widths: Sequence[int] | None = None,
    run_id: str | None = None,
) -> MaskImport:
    """Write released union masks ({cluster: file}) into cluster_masks under one mask_id.

    mask_id = "import:" + a hash of the clustering and the files' bytes; localization_id is the same
    string (an imported mask has no localization in this workspace), mask_rule 'union', and the
    per-neuron prompt counts are null (the files do not hold them).

    Raises:
        InputError: unknown clustering, a cluster that the clustering does not have, or a bad file.
    """
    clusters = ws.sql(
        "SELECT cluster, any_value(model_id) AS model_id, count(*) AS n FROM prompt_clusters WHERE clustering_id = $c GROUP BY 1",
        {"c": clustering_id},
    ).to_pylist()
    if not clusters:
        raise InputError(
            f"no clustering {clustering_id!r}",
            hint="import the cluster assignment first (fbmem nemo-c import --clusters FILE)",
        )
    known = {r["cluster"]: r for r in clusters}
    unknown = sorted(set(files) - set(known))
    if unknown:
        raise InputError(
            f"mask file(s) for cluster(s) {unknown}, which clustering {clustering_id} does not have",
            hint=f"its clusters: {sorted(known)}",
        )
    if not files:
        raise InputError("no mask files given")
    digests = {c: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "" for c, p in files.items()}
    masks = {c: read_mask_file(p, widths) for c, p in files.items()}
    mask_id = "import:" + params_hash({"clustering_id": clustering_id, "files": sorted(digests.items())})
    rows = [
        {
            "mask_id": mask_id,
            "clustering_id": clustering_id,
            "localization_id": mask_id,
            "model_id": known[cluster]["model_id"],
            "mask_rule": "union",
            "q": None,
            "cluster": cluster,
            "layer": layer,
            "neuron": neuron,
            "n_prompts_with": None,
            "n_prompts": None,
            "run_id": run_id,
        }
        for cluster, layers in sorted(masks.items())
        for layer, neurons in layers.items()
        for neuron in neurons
    ]
    ws.write("cluster_masks", rows)
    return MaskImport(
        mask_id=mask_id,
        clustering_id=clustering_id,
        neurons={c: sum(len(n) for n in layers.values()) for c, layers in masks.items()},
        clusters_without_mask=sorted(set(known) - set(files)),
    )
