"""Write a localization's neurons in NeMo's released CSV format (the inverse of import_csv).

Caption;URL;Initial Neurons;Initial SSIM;Refined Neurons;Refined SSIM, `;`-separated, one row per
localized prompt that has neurons, neuron columns as one Python-literal list per NeMo layer. Results
shared this way import into any workspace with `fbmem nemo import` (matched by caption).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

from fbmem_data.errors import InputError
from fbmem_data.nemo.import_csv import REQUIRED_COLUMNS

if TYPE_CHECKING:
    from fbmem_data.workspace import Workspace


def _lists(rows: list[dict], stage: str, n_layers: int) -> str:
    layers: list[list[int]] = [[] for _ in range(n_layers)]
    for r in rows:
        if r["stage"] == stage:
            layers[r["layer"]].append(int(r["neuron"]))
    return str([sorted(layer) for layer in layers])


def export_nemo_csv(ws: Workspace, localization_id: str, path: Path, *, prompt_set: str | None = None,
                    n_layers: int = 7) -> int:
    """Write the localization's prompts with neurons to `path` (atomically); returns rows written.

    Args:
        prompt_set: only the prompts of this set (one localization can span several sets).

    Raises:
        InputError: no prompt of that localization (and set) has neurons.
    """
    summary = ws.sql(
        "SELECT s.prompt_id, p.text, coalesce(p.url, '') AS url, s.initial_score, s.refined_score "
        "FROM nemo_summary s JOIN prompts p USING (prompt_id) WHERE s.localization_id = $l "
        "AND ($set IS NULL OR p.prompt_set = $set) "
        "AND EXISTS (SELECT 1 FROM nemo_neurons n WHERE n.localization_id = s.localization_id AND n.prompt_id = s.prompt_id) "
        "ORDER BY p.text, s.prompt_id",
        {"l": localization_id, "set": prompt_set},
    ).to_pylist()
    if not summary:
        where = f" in prompt set {prompt_set!r}" if prompt_set is not None else ""
        raise InputError(f"localization {localization_id!r} has no prompt with neurons{where}", hint="see `fbmem sql \"SELECT * FROM nemo_summary\"`")
    neurons = ws.sql(
        "SELECT prompt_id, stage, layer, neuron FROM nemo_neurons WHERE localization_id = $l", {"l": localization_id}
    ).to_pylist()
    by_prompt: dict[str, list[dict]] = {}
    for n in neurons:
        by_prompt.setdefault(n["prompt_id"], []).append(n)
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=";", lineterminator="\n")
    writer.writerow(REQUIRED_COLUMNS)
    for s in summary:
        rows = by_prompt.get(s["prompt_id"], [])
        writer.writerow([
            s["text"], s["url"], _lists(rows, "initial", n_layers),
            "" if s["initial_score"] is None else repr(float(s["initial_score"])),
            _lists(rows, "refined", n_layers),
            "" if s["refined_score"] is None else repr(float(s["refined_score"])),
        ])
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    os.replace(tmp, path)
    return len(summary)
