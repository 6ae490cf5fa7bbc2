"""`nemo` and `nemo-c` mitigations: zero NeMo neurons with forward hooks on the layers' `attn2.to_v`.

- `nemo`: each prompt's own refined neurons (nemo_neurons, one localization).
- `nemo-c`: the cluster mask (cluster_masks) of the prompt's NeMo-C cluster.

The hooks act on every token, every denoising step and both guidance branches; in a mixed batch each
image gets its own mask (fbmem_data.nemo.hooks). See docs/nemo.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from fbmem_data.errors import InputError
from fbmem_data.mitigate.protocol import GenerationBatch, Mitigation

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from fbmem_data.workspace import Workspace


def _require_ws(ws: Workspace | None, name: str) -> Workspace:
    if ws is None:
        raise InputError(f"mitigation {name!r} reads its neurons from a workspace; none was given")
    return ws


def _group(rows: list[dict[str, Any]], key: str) -> dict[Any, dict[int, list[int]]]:
    out: dict[Any, dict[int, list[int]]] = {}
    for row in rows:
        out.setdefault(row[key], {}).setdefault(int(row["layer"]), []).append(int(row["neuron"]))
    return out


class _NeuronMitigation(Mitigation):
    """Shared part: per-prompt neuron sets -> hooks for one batch."""

    def __init__(self) -> None:
        self._neurons: dict[str, dict[int, list[int]]] = {}

    def neurons_for(self, prompt_id: str) -> dict[int, list[int]]:
        return self._neurons.get(prompt_id, {})

    @contextlib.contextmanager
    def apply(self, pipe: DiffusionPipeline, batch: GenerationBatch) -> Iterator[GenerationBatch]:
        from fbmem_data.nemo.hooks import blocked_neurons, keep_masks
        from fbmem_data.nemo.layers import discover_nemo_layers

        layers = discover_nemo_layers(pipe.unet)
        sets = [self.neurons_for(pid) for pid in batch.prompt_ids]
        masks = keep_masks(layers, sets, device=pipe.unet.device)
        out = batch.replace()
        for detail, neuron_set in zip(out.details, sets, strict=True):
            detail["neurons_zeroed"] = sum(len(v) for v in neuron_set.values())
        with blocked_neurons(layers, masks):
            yield out


class NemoMitigation(_NeuronMitigation):
    """Zero each prompt's NeMo neurons.

    Args:
        localization: nemo_neurons.localization_id to use; None picks, in prepare, the localization
            covering most of the run's prompts for the model (pass it explicitly for stable ids).
        stage: 'refined' (NeMo) or 'initial'.
    """

    name = "nemo"

    def __init__(self, localization: str | None = None, stage: str = "refined") -> None:
        super().__init__()
        if stage not in ("refined", "initial"):
            raise InputError(f"nemo stage must be 'refined' or 'initial', got {stage!r}")
        self.localization = localization
        self.stage = stage

    def params(self) -> dict[str, Any]:
        return {"localization": self.localization, "stage": self.stage}

    def prepare(self, ws: Workspace | None, model_id: str, prompt_ids: Sequence[str]) -> None:
        ws = _require_ws(ws, self.name)
        ids = list(prompt_ids)
        if self.localization is None:
            found = ws.sql(
                "SELECT localization_id, count(*) AS n FROM nemo_summary WHERE model_id = $model "
                "AND prompt_id IN (SELECT unnest($ids::VARCHAR[])) GROUP BY 1 ORDER BY n DESC, 1 LIMIT 1",
                {"model": model_id, "ids": ids},
            ).to_pylist()
            if not found:
                raise InputError(
                    f"no NeMo localization stored for model {model_id!r} and these prompts",
                    hint="run `fbmem nemo localize` (or `fbmem nemo import`) first",
                )
            self.localization = found[0]["localization_id"]
        rows = ws.sql(
            "SELECT prompt_id, layer, neuron FROM nemo_neurons WHERE localization_id = $loc AND stage = $stage "
            "AND prompt_id IN (SELECT unnest($ids::VARCHAR[])) ORDER BY prompt_id, layer, neuron",
            {"loc": self.localization, "stage": self.stage, "ids": ids},
        ).to_pylist()
        self._neurons = _group(rows, "prompt_id")

    @staticmethod
    def contract_setup(ws: Workspace, model_id: str, prompt_ids: Sequence[str], pipe: DiffusionPipeline) -> None:
        _write_contract_neurons(ws, model_id, prompt_ids, pipe)


class NemoClusterMitigation(_NeuronMitigation):
    """Zero the NeMo-C mask of each prompt's cluster.

    Args:
        mask: cluster_masks.mask_id; None picks the newest-written mask whose clustering holds most of
            the run's prompts (pass it explicitly for stable ids).
    """

    name = "nemo-c"

    def __init__(self, mask: str | None = None) -> None:
        super().__init__()
        self.mask = mask

    def params(self) -> dict[str, Any]:
        return {"mask": self.mask}

    def prepare(self, ws: Workspace | None, model_id: str, prompt_ids: Sequence[str]) -> None:
        ws = _require_ws(ws, self.name)
        ids = list(prompt_ids)
        if self.mask is None:
            found = ws.sql(
                "SELECT m.mask_id, count(DISTINCT c.prompt_id) AS n FROM cluster_masks m "
                "JOIN prompt_clusters c USING (clustering_id) WHERE m.model_id = $model "
                "AND c.prompt_id IN (SELECT unnest($ids::VARCHAR[])) GROUP BY 1 ORDER BY n DESC, 1 LIMIT 1",
                {"model": model_id, "ids": ids},
            ).to_pylist()
            if not found:
                raise InputError(
                    f"no NeMo-C cluster mask stored for model {model_id!r} covering these prompts",
                    hint="run `fbmem nemo-c cluster` and `fbmem nemo-c masks` first",
                )
            self.mask = found[0]["mask_id"]
        rows = ws.sql(
            "SELECT c.prompt_id, m.layer, m.neuron FROM cluster_masks m "
            "JOIN prompt_clusters c ON c.clustering_id = m.clustering_id AND c.cluster = m.cluster "
            "WHERE m.mask_id = $mask AND c.prompt_id IN (SELECT unnest($ids::VARCHAR[])) ORDER BY 1, 2, 3",
            {"mask": self.mask, "ids": ids},
        ).to_pylist()
        self._neurons = _group(rows, "prompt_id")

    @staticmethod
    def contract_setup(ws: Workspace, model_id: str, prompt_ids: Sequence[str], pipe: DiffusionPipeline) -> None:
        from fbmem_data.nemo.clusters import build_cluster_masks

        loc = _write_contract_neurons(ws, model_id, prompt_ids, pipe)
        rows = [
            {"clustering_id": "contract", "prompt_id": pid, "model_id": model_id, "cluster": i % 2, "k": 2,
             "embedding": "flat", "params": "{}"}
            for i, pid in enumerate(prompt_ids)
        ]
        ws.write("prompt_clusters", rows)
        build_cluster_masks(ws, "contract", loc)


def _write_contract_neurons(ws: Workspace, model_id: str, prompt_ids: Sequence[str], pipe: DiffusionPipeline) -> str:
    """A few seeded-random neurons per prompt under localization 'contract' (for random pipelines)."""
    import random

    from fbmem_data.nemo.layers import discover_nemo_layers

    layers = discover_nemo_layers(pipe.unet)
    loc = "contract"
    neuron_rows, summary_rows = [], []
    for pid in prompt_ids:
        rng = random.Random(pid)
        for layer in layers:
            for neuron in sorted(rng.sample(range(layer.width), k=max(1, layer.width // 4))):
                neuron_rows.append({"localization_id": loc, "prompt_id": pid, "model_id": model_id, "stage": "refined",
                                    "layer": layer.index, "neuron": neuron})
        summary_rows.append({"localization_id": loc, "prompt_id": pid, "model_id": model_id, "status": "imported"})
    ws.write("nemo_neurons", neuron_rows)
    ws.write("nemo_summary", summary_rows)
    return loc
