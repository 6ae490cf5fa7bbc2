"""The lab's mitigation comparison: none / NeMo / NeMo-C / Wen / RTA on the planted prompts.

Every step is the library call a user makes on Stable Diffusion:
- NeMo neurons: `fbmem nemo import` of the lab model's neuron lists shipped in data/lab/ (NeMo's CSV
  format, written by `fbmem nemo export` after `fbmem nemo localize` on the lab: localization takes
  minutes per prompt on a CPU, too long for the demo);
- NeMo-C: `cluster_prompts` over the planted captions with the lab's own text encoder (k clusters)
  and union masks built in SQL (`build_cluster_masks`);
- Wen: target loss calibrated on the lab's non-memorized captions (`calibrate_target_loss`): SD's 3
  is a 512x512 SD v1.4 figure;
- RTA: 4 random tokens.
Then generation under each mitigation with the baseline's seeds, pairing, scoring and labels, the
`lab-colours` utility, and `mitigation_comparison` (sql/56_mitigation_comparison.sql).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fbmem_data.workspace import Workspace

NEURONS_FILE = "nemo_neurons.csv"


def shipped_neurons_path(weights_dir: Path | None = None) -> Path:
    from fbmem_data.lab.pipeline import default_weights_dir

    return (weights_dir or default_weights_dir()) / NEURONS_FILE


def prepare_mitigations(
    ws: Workspace,
    pipe: Any,
    model_id: str,
    methods: Sequence[str],
    *,
    k: int | str = 4,
    steps: int = 20,
    neurons_csv: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[list[str], dict[str, Any], list[str]]:
    """Everything the mitigations need before generating.

    Returns:
        (methods that can run, generate()'s mitigation_params, notes on methods left out and why).
    """
    from fbmem_data.lab.dataset import MEMORIZED_SET, UNIQUE_SET
    from fbmem_data.mitigate.wen import calibrate_target_loss
    from fbmem_data.nemo.clusters import build_cluster_masks, cluster_prompts
    from fbmem_data.nemo.import_csv import import_nemo_csv

    params: dict[str, Any] = {}
    notes: list[str] = []
    runnable: list[str] = []
    localization_id = None
    if {"nemo", "nemo-c"} & set(methods):
        path = neurons_csv or shipped_neurons_path()
        if path.is_file():
            localization_id = import_nemo_csv(ws, path, model_id=model_id, prompt_set=MEMORIZED_SET).localization_id
        else:
            notes.append(f"nemo, nemo-c: no neuron lists at {path} (run `fbmem nemo localize` + `fbmem nemo export`)")
    for method in methods:
        if method == "nemo" and localization_id:
            params["nemo.localization"] = localization_id
            runnable.append(method)
        elif method == "nemo-c" and localization_id:
            clustering_id = cluster_prompts(ws, pipe, model_id, MEMORIZED_SET, k=k if k == "auto" else int(k))
            params["nemo-c.mask"] = build_cluster_masks(ws, clustering_id, localization_id)
            runnable.append(method)
        elif method == "wen":
            texts = ws.sql("SELECT text FROM prompts WHERE prompt_set = $s ORDER BY prompt_id LIMIT 32",
                           {"s": UNIQUE_SET}).column("text").to_pylist()
            params["wen.target_loss"] = round(calibrate_target_loss(pipe, texts, seeds=(0, 1), steps=steps), 4)
            params["wen.stack"] = 1  # the calibrated target is a per-image norm
            if log:
                log(f"wen: target loss {params['wen.target_loss']} (mean first-step norm of {len(texts)} unique captions)")
            runnable.append(method)
        elif method in ("rta", "none"):
            runnable.append(method)
        elif method not in ("nemo", "nemo-c"):
            notes.append(f"{method}: not part of the lab comparison")
    return runnable, params, notes


def comparison_table(ws: Workspace, scoring_id: str, utility_id: str | None) -> Any:
    """`mitigation_comparison` for one scoring (and utility configuration) as a pyarrow Table."""
    params: dict[str, Any] = {"scoring_id": scoring_id}
    if utility_id:
        params["utility_id"] = utility_id
    return ws.sql("SELECT * FROM mitigation_comparison ORDER BY method = 'none' DESC, method", params)


def format_comparison(table: Any, notes: Sequence[str] = ()) -> str:
    lines = ["", "Mitigations on the planted prompts (same prompts and seeds for every method):", ""]
    rows = table.to_pylist()
    # the per-seed score and its seed-to-seed spread, where the table has them (two seeds or more)
    spread = any((r.get("seeds") or 0) > 1 for r in rows)
    lines.append(f"{'method':<8}{'n':>5}{'VM':>7}{'FM':>7}{'BM':>7}{'NM':>7}{'score':>8}"
                 + (f"{'per seed':>16}" if spread else "") + f"{'utility':>9}{'change':>8}{'neurons':>9}")
    for r in rows:
        def pct(v: Any) -> str:
            return f"{100 * v:6.0f}%" if v is not None else "      -"
        score = f"{r['mitigation_score']:8.1f}" if r["mitigation_score"] is not None else "       -"
        util = f"{r['utility']:9.3f}" if r["utility"] is not None else "        -"
        change = f"{100 * r['utility_change']:+7.0f}%" if r["utility_change"] is not None else "       -"
        neurons = f"{r['mean_neurons']:9.1f}" if r["mean_neurons"] is not None else "        -"
        per_seed = ""
        if spread:
            sd = r.get("score_per_seed_sd")
            per_seed = (f"{r['score_per_seed']:9.1f} ± {sd:4.1f}" if r.get("score_per_seed") is not None and sd is not None
                        else f"{'-':>16}")
        lines.append(f"{r['method']:<8}{r['n']:>5}{pct(r['vm_rate'])}{pct(r['fm_rate'])}{pct(r['bm_rate'])}{pct(r['nm_rate'])}"
                     f"{score}{per_seed}{util}{change}{neurons}")
    lines += ["", "score = the paper's mitigation score (sum of label-transition weights, higher = more removed);"]
    if spread:
        lines.append("per seed = the score of one seed's generations, mean ± sample sd over seeds (mitigation_seed_spread);")
    lines += [
              "utility = lab-colours (share of the colours a caption names that the image shows); change vs none;",
              "neurons = mean neurons deactivated per prompt (NeMo: refined; NeMo-C: the prompt's cluster mask)."]
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)
