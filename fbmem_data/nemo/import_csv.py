"""Import NeMo's released output (`nemo_refined_neurons_prompts_0_250.csv`) into `nemo_neurons`.

The file is `;`-separated with columns Caption;URL;Initial Neurons;Initial SSIM;Refined Neurons;
Refined SSIM; a neuron column holds a Python-literal string of one list per NeMo layer
("[[221], [], ...]"). Rows are matched to ingested prompts by caption (and URL when captions repeat).
"""

from __future__ import annotations

import ast
import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fbmem_data.errors import InputError
from fbmem_data.runs import recorded

if TYPE_CHECKING:
    from fbmem_data.workspace import Workspace

REQUIRED_COLUMNS = ("Caption", "URL", "Initial Neurons", "Initial SSIM", "Refined Neurons", "Refined SSIM")


@dataclass
class ImportReport:
    localization_id: str
    rows: int = 0
    matched: int = 0
    neurons_written: int = 0
    unmatched: list[str] = field(default_factory=list)


def parse_neuron_lists(text: str, *, where: str) -> list[list[int]]:
    """'[[221], [], [5, 7]]' -> [[221], [], [5, 7]].

    Raises:
        InputError: not a list of lists of non-negative integers.
    """
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError) as exc:
        raise InputError(f"{where}: cannot parse neuron lists {text[:60]!r}: {exc}") from exc
    ok = isinstance(value, list) and all(
        isinstance(layer, list) and all(isinstance(n, int) and n >= 0 for n in layer) for layer in value
    )
    if not ok:
        raise InputError(f"{where}: neuron lists must be a list of per-layer integer lists, got {text[:60]!r}")
    return value


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


@recorded("nemo import", lambda a: {"file": str(a["path"]), "model_id": a["model_id"], "prompt_set": a["prompt_set"]})
def import_nemo_csv(
    ws: Workspace,
    path: Path,
    *,
    model_id: str = "CompVis/stable-diffusion-v1-4",
    prompt_set: str = "memorized",
    run_id: str | None = None,
) -> ImportReport:
    """Read the CSV, write `nemo_neurons` (initial and refined) and one `nemo_summary` row per matched prompt.

    Raises:
        InputError: the file is missing, lacks a required column, holds a malformed neuron list, or no
            caption matches a prompt of `prompt_set`.
    """
    if not path.is_file():
        raise InputError(f"NeMo CSV {path} does not exist")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter=";")
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path} lacks column(s) {missing}", hint=f"expected {';'.join(REQUIRED_COLUMNS)}")
        records = list(reader)
    prompts = ws.sql(
        "SELECT prompt_id, text, url FROM prompts WHERE prompt_set = $set", {"set": prompt_set}
    ).to_pylist()
    if not prompts:
        raise InputError(f"no prompts in set {prompt_set!r}", hint="ingest the memorized prompts first (fbmem ingest prompts)")
    by_text: dict[str, list[dict[str, str]]] = {}
    for p in prompts:
        by_text.setdefault(p["text"], []).append(p)
        by_text.setdefault(p["text"].strip(), []).append(p)

    report = ImportReport(localization_id=f"import:{path.name}", rows=len(records))
    neuron_rows: list[dict[str, object]] = []
    summary_rows: list[dict[str, object]] = []
    seen: set[str] = set()
    for line, rec in enumerate(records, start=2):
        caption = rec["Caption"]
        candidates = by_text.get(caption) or by_text.get(caption.strip()) or []
        if len(candidates) > 1:
            candidates = [p for p in candidates if p["url"] == rec["URL"]] or candidates[:1]
        unique_ids = {p["prompt_id"] for p in candidates}
        if not unique_ids:
            report.unmatched.append(caption)
            continue
        pid = candidates[0]["prompt_id"]
        if pid in seen:
            continue
        seen.add(pid)
        report.matched += 1
        stages = {
            "initial": parse_neuron_lists(rec["Initial Neurons"], where=f"{path.name} line {line}"),
            "refined": parse_neuron_lists(rec["Refined Neurons"], where=f"{path.name} line {line}"),
        }
        for stage, lists in stages.items():
            for layer, neurons in enumerate(lists):
                for neuron in sorted(set(neurons)):
                    neuron_rows.append(
                        {"localization_id": report.localization_id, "prompt_id": pid, "model_id": model_id,
                         "stage": stage, "layer": layer, "neuron": neuron, "run_id": run_id}
                    )
        summary_rows.append(
            {
                "localization_id": report.localization_id,
                "prompt_id": pid,
                "model_id": model_id,
                "status": "imported",
                "algorithm": "import",
                "initial_score": _float_or_none(rec["Initial SSIM"]),
                "refined_score": _float_or_none(rec["Refined SSIM"]),
                "n_initial": sum(len(set(n)) for n in stages["initial"]),
                "n_refined": sum(len(set(n)) for n in stages["refined"]),
                "run_id": run_id,
            }
        )
    if report.matched == 0:
        raise InputError(
            f"none of the {len(records)} captions in {path.name} matches a prompt of set {prompt_set!r}",
            hint="ingest memorized_laion_prompts.csv as --set memorized, or pass --prompts SET",
        )
    report.neurons_written = ws.write("nemo_neurons", neuron_rows)
    ws.write("nemo_summary", summary_rows)
    return report
