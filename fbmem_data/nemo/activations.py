"""NeMo activations: mean |to_v(E)| per output channel over all token positions.

E is the text encoder's last hidden state exactly as the pipeline builds it for generation
(`pipe.encode_prompt`), so the padding positions count too, as in NeMo. No UNet pass is needed:
the activation depends only on the text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fbmem_data.nemo.layers import NemoLayer, discover_nemo_layers
from fbmem_data.runs import recorded

if TYPE_CHECKING:
    import torch

    from fbmem_data.workspace import Workspace


def encode_prompts(pipe: Any, texts: Sequence[str]) -> torch.Tensor:
    """(len(texts), tokens, dim) prompt embeddings as the pipeline conditions its UNet on them."""
    import torch

    device = pipe.unet.device
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(list(texts), device, 1, False)
    return embeds


def layer_activations(layers: Sequence[NemoLayer], embeds: torch.Tensor) -> list[torch.Tensor]:
    """Per layer a (prompts, width) tensor: |to_v(E)| averaged over the token axis."""
    import torch

    with torch.no_grad():
        out = []
        for layer in layers:
            weight = layer.to_v.weight
            values = layer.to_v(embeds.to(device=weight.device, dtype=weight.dtype))
            out.append(values.abs().float().mean(dim=1).cpu())
    return out


def prompt_activations(pipe: Any, texts: Sequence[str]) -> list[torch.Tensor]:
    """Activations of every NeMo layer for the given prompt texts."""
    return layer_activations(discover_nemo_layers(pipe.unet), encode_prompts(pipe, texts))


@recorded("nemo activations", lambda a: {"model_id": a["model_id"], "prompt_set": a["prompt_set"], "batch_size": a["batch_size"]})
def compute_activations(
    ws: Workspace,
    pipe: Any,
    model_id: str,
    prompt_set: str,
    *,
    batch_size: int = 32,
    run_id: str | None = None,
) -> int:
    """Write `activations` rows for every prompt of a set not yet stored for this model; returns rows written.

    Re-runs resume: prompts already stored are skipped, and each batch is written as it finishes.
    """
    todo = ws.sql(
        "SELECT p.prompt_id, p.text FROM prompts p WHERE p.prompt_set = $set AND p.prompt_id NOT IN "
        "(SELECT prompt_id FROM activations WHERE model_id = $model) ORDER BY p.source_index NULLS LAST, p.prompt_id",
        {"set": prompt_set, "model": model_id},
    ).to_pylist()
    layers = discover_nemo_layers(pipe.unet)
    written = 0
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        acts = layer_activations(layers, encode_prompts(pipe, [r["text"] for r in chunk]))
        rows = [
            {
                "model_id": model_id,
                "prompt_id": row["prompt_id"],
                "layer": layer.index,
                "layer_name": layer.name,
                "activation": acts[layer.index][i].tolist(),
                "run_id": run_id,
            }
            for i, row in enumerate(chunk)
            for layer in layers
        ]
        written += ws.write("activations", rows)
    return written


def load_activations(ws: Workspace, model_id: str, prompt_ids: Sequence[str]) -> dict[str, list[torch.Tensor]]:
    """{prompt_id: [per-layer activation tensors]} for stored rows (prompts without rows are absent)."""
    import torch

    rows = ws.sql(
        "SELECT prompt_id, layer, activation FROM activations WHERE model_id = $model "
        "AND prompt_id IN (SELECT unnest($ids::VARCHAR[])) ORDER BY prompt_id, layer",
        {"model": model_id, "ids": list(prompt_ids)},
    ).to_pylist()
    out: dict[str, list[torch.Tensor]] = {}
    for row in rows:
        out.setdefault(row["prompt_id"], []).append(torch.tensor(row["activation"], dtype=torch.float32))
    return out
