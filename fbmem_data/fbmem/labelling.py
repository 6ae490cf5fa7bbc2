"""FB-Mem labels: the rule in Python (for tests and notebooks) and the SQL views behind `fbmem labels`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from fbmem_data.workspace import Workspace

DEFAULT_TAU = 0.8
LABELS = ("VM", "BM", "FM", "NM")


def label_of(fg_score: float, bg_score: float, tau: float = DEFAULT_TAU) -> str:
    """The paper's rule, in this order: VM (bg and fg >= tau), BM (bg >= tau), FM (fg >= tau), NM."""
    if bg_score >= tau and fg_score >= tau:
        return "VM"
    if bg_score >= tau:
        return "BM"
    if fg_score >= tau:
        return "FM"
    return "NM"


def _params(tau: float, scoring_id: str | None) -> dict[str, object]:
    params: dict[str, object] = {"tau": tau}  # checked (number in [0, 1]) by Workspace.sql
    if scoring_id is not None:
        params["scoring_id"] = scoring_id
    return params


def label_rows(ws: Workspace, tau: float = DEFAULT_TAU, scoring_id: str | None = None) -> pa.Table:
    """The `fbmem_labels` view: one row per generated image (per generation) with its label.

    scoring_id picks the scoring configuration; default the most recent (see sql/20_fbmem_1_scores.sql).
    """
    return ws.sql("SELECT * FROM fbmem_labels ORDER BY generated_image_id, generation_id", _params(tau, scoring_id))


def labels(ws: Workspace, tau: float = DEFAULT_TAU, scoring_id: str | None = None) -> pa.Table:
    """The `fbmem_rates` view: label counts and shares by prompt set, model and mitigation."""
    return ws.sql("SELECT * FROM fbmem_rates", _params(tau, scoring_id))


def scoring_text(row: dict[str, Any]) -> str:
    """`scoring 4eb5…: metric msssim, size 512, segmenter birefnet, preset paper`."""
    return (f"scoring {row['scoring_id']}: metric {row['metric']}, size {row['size']}, "
            f"segmenter {row['segmenter']}, preset {row['preset']}")


def describe_scoring(ws: Workspace, scoring_id: str | None = None) -> str:
    """Which scoring configuration the labels come from, and how it was chosen when there are several.

    Raises:
        QueryError: scoring_id is not a stored configuration (the message lists the known ones).
    """
    params: dict[str, object] = {} if scoring_id is None else {"scoring_id": scoring_id}
    rows = ws.sql("SELECT * FROM scoring_configurations", params).to_pylist()
    chosen = [r for r in rows if r["chosen"]]
    if not chosen:
        return "no scoring stored yet (run `fbmem score`)"
    text = scoring_text(chosen[0])
    if len(rows) > 1:
        how = "chosen with --scoring-id" if scoring_id is not None else f"the latest of {len(rows)} scorings"
        others = "; ".join(scoring_text(r) for r in rows if not r["chosen"])
        text += f" ({how}; others: {others}; pick one with --scoring-id ID or -p scoring_id ID)"
    return text
