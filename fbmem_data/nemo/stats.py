"""Reference activation statistics (per-neuron mean and std over non-memorized prompts)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fbmem_data.errors import InputError
from fbmem_data.runs import recorded

if TYPE_CHECKING:
    import torch

    from fbmem_data.workspace import Workspace

SD_V14_MODEL_ID = "CompVis/stable-diffusion-v1-4"


@recorded("nemo stats", lambda a: {"model_id": a["model_id"], "prompt_set": a["prompt_set"]})
def compute_stats(ws: Workspace, model_id: str, prompt_set: str, *, run_id: str | None = None) -> int:
    """Per-neuron mean and sample std of stored activations over a prompt set, into `neuron_stats`.

    The aggregation is the SQL macro nemo_activation_stats (sql/50_nemo_activations.sql).

    Raises:
        InputError: no activations are stored for that model and set (run `fbmem nemo activations`).
    """
    table = ws.sql("SELECT * FROM nemo_activation_stats($model, $set)", {"model": model_id, "set": prompt_set})
    if table.num_rows == 0:
        raise InputError(
            f"no activations stored for model {model_id!r} and prompt set {prompt_set!r}",
            hint=f"run `fbmem nemo activations --prompts {prompt_set}` first",
        )
    rows = [
        {**row, "model_id": model_id, "reference": prompt_set, "run_id": run_id, "std": row["std"] or 0.0}
        for row in table.to_pylist()
    ]
    return ws.write("neuron_stats", rows)


def read_stats_file(path: Path) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Read a NeMo statistics file: a torch-saved tuple (means, stds) of one 1-D tensor per layer.

    Raises:
        InputError: the file is missing, not loadable with weights_only=True, or not that shape.
    """
    import torch

    if not path.is_file():
        raise InputError(f"statistics file {path} does not exist")
    hint = "give the statistics .pt file NeMo's compute step saved (a (means, stds) pair), re-downloaded if truncated"
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        # A random, truncated or foreign file fails anywhere in torch's zip/pickle readers, with
        # RuntimeError, UnpicklingError, EOFError, OSError, KeyError, ...: each means "not loadable".
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path} is not a loadable torch file (weights_only=True): {first_line}", hint=hint) from exc
    if not (isinstance(loaded, tuple | list) and len(loaded) == 2):
        raise InputError(f"{path} should hold a (means, stds) pair; got {type(loaded).__name__}", hint=hint)
    try:
        means, stds = (list(part) for part in loaded)
    except TypeError as exc:
        raise InputError(f"{path}: means and stds must be lists of 1-D tensors", hint=hint) from exc
    shapes_ok = len(means) == len(stds) and all(
        isinstance(m, torch.Tensor) and isinstance(s, torch.Tensor) and m.ndim == 1 and m.shape == s.shape
        for m, s in zip(means, stds, strict=True)
    )
    if not shapes_ok or not means:
        raise InputError(f"{path}: means and stds must be equally long lists of 1-D tensors of equal shapes")
    return [m.float() for m in means], [s.float() for s in stds]


@recorded("nemo import-stats", lambda a: {"file": str(a["path"]), "model_id": a["model_id"], "reference": a["reference"]})
def import_stats_file(
    ws: Workspace, path: Path, model_id: str = SD_V14_MODEL_ID, *, reference: str | None = None, run_id: str | None = None
) -> int:
    """Import a NeMo statistics file into `neuron_stats` (reference 'file:<name>'); returns rows written."""
    means, stds = read_stats_file(path)
    reference = reference or f"file:{path.name}"
    rows = [
        {
            "model_id": model_id,
            "reference": reference,
            "layer": layer,
            "neuron": neuron,
            "mean": float(mean),
            "std": float(std),
            "n_prompts": None,
            "run_id": run_id,
        }
        for layer, (layer_means, layer_stds) in enumerate(zip(means, stds, strict=True))
        for neuron, (mean, std) in enumerate(zip(layer_means.tolist(), layer_stds.tolist(), strict=True))
    ]
    return ws.write("neuron_stats", rows)


def load_stats(ws: Workspace, model_id: str, reference: str | None = None) -> tuple[str, list[torch.Tensor], list[torch.Tensor]]:
    """(reference, means per layer, stds per layer) stored for a model.

    Raises:
        InputError: none stored, or several references and none chosen.
    """
    import torch

    refs = ws.sql(
        "SELECT DISTINCT reference FROM neuron_stats WHERE model_id = $model ORDER BY 1", {"model": model_id}
    ).column("reference").to_pylist()
    if reference is None:
        if len(refs) != 1:
            raise InputError(
                f"model {model_id!r} has {len(refs)} neuron_stats references {refs}; choose one",
                hint="pass --stats REFERENCE, or compute them with `fbmem nemo activations --stats`",
            )
        reference = refs[0]
    elif reference not in refs:
        raise InputError(f"no neuron_stats for model {model_id!r} under reference {reference!r}", hint=f"stored: {refs}")
    rows = ws.sql(
        "SELECT layer, list(mean ORDER BY neuron) AS means, list(std ORDER BY neuron) AS stds "
        "FROM neuron_stats WHERE model_id = $model AND reference = $ref GROUP BY layer ORDER BY layer",
        {"model": model_id, "ref": reference},
    ).to_pylist()
    means = [torch.tensor(r["means"], dtype=torch.float32) for r in rows]
    stds = [torch.tensor(r["stds"], dtype=torch.float32) for r in rows]
    return reference, means, stds
