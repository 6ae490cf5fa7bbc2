"""Everything the report shows, read from the workspace through the SQL views (sql/20_fbmem_*,
sql/50_nemo_mitigation.sql, sql/60_report_views.sql). No scores are computed here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fbmem_data.errors import InputError

if TYPE_CHECKING:
    import pyarrow as pa

    from fbmem_data.workspace import Workspace

#: A view or table of this name, if the workspace defines one, gives the utility of each mitigation
#: for the mitigation comparison. Columns: method, utility (required); mitigation_params, model_id,
#: utility_metric, n (optional). The shipped view averages matched generations only (sql/55_utility.sql).
UTILITY_RELATION = "mitigation_utility"


@dataclass
class ReportData:
    """The report's inputs as Arrow tables (rows in display order) plus the provenance of the labels."""

    provenance: dict[str, Any]
    generations: pa.Table
    top_k: pa.Table
    prompt_matches: pa.Table
    rates: pa.Table
    histogram: pa.Table
    mitigation: list[dict[str, Any]] = field(default_factory=list)
    utility_metric: str | None = None
    image_files: dict[str, str] = field(default_factory=dict)
    masks: dict[str, bytes] = field(default_factory=dict)

    @property
    def n_generations(self) -> int:
        return self.generations.num_rows


def _relation_exists(ws: Workspace, name: str) -> bool:
    found = ws.sql("SELECT count(*) AS n FROM information_schema.tables WHERE table_name = $name", {"name": name})
    return bool(found.column("n")[0].as_py())


def _mitigation_rows(ws: Workspace, params: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """mitigation_score per method with its seed-to-seed spread (mitigation_seed_spread), joined with the
    utility relation when the workspace has one."""
    scores = ws.sql(
        "SELECT s.*, sp.seeds, sp.score_per_seed, sp.score_per_seed_sd FROM mitigation_score s "
        "LEFT JOIN mitigation_seed_spread sp ON sp.method = s.method AND sp.model_id = s.model_id "
        "AND sp.mitigation_params IS NOT DISTINCT FROM s.mitigation_params ORDER BY s.score DESC, s.method",
        params,
    ).to_pylist()
    if not _relation_exists(ws, UTILITY_RELATION):
        return scores, None
    utility = ws.sql(f"SELECT * FROM {UTILITY_RELATION}", params).to_pylist()
    if utility and not {"method", "utility"} <= set(utility[0]):
        raise InputError(f"view {UTILITY_RELATION} needs columns method and utility, has {sorted(utility[0])}")
    keys = [k for k in ("method", "mitigation_params", "model_id") if utility and k in utility[0]]

    def key(row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(row.get(k) for k in keys)

    by_key = {key(u): u for u in utility}
    metric = next((u.get("utility_metric") for u in utility if u.get("utility_metric")), None) or "utility"
    rows = [{**s, "utility": by_key.get(key(s), {}).get("utility"), "utility_n": by_key.get(key(s), {}).get("n")}
            for s in scores]
    # No mitigation: score 0 by definition (nothing changes), utility as measured on the generations
    # the mitigations are compared on (mitigation_utility matches them).
    for u in utility:
        if u["method"] == "none":
            rows.append({"method": "none", "mitigation_params": None, "model_id": u.get("model_id"), "n_pairs": None,
                         "score": 0.0, "utility": u["utility"], "utility_n": u.get("n")})
    return rows, metric


def gather(
    ws: Workspace,
    *,
    tau: float = 0.8,
    scoring_id: str | None = None,
    k: int = 5,
    limit: int | None = None,
) -> ReportData:
    """Read the report's tables.

    Args:
        ws: the workspace.
        tau: label threshold (the fbmem_labels view's `tau`).
        scoring_id: which scoring configuration; default the latest (sql/20_fbmem_1_scores.sql).
        k: top-k matches kept per generation.
        limit: keep only the `limit` worst generations (highest pair score) as cards and table rows;
            the summary plots always cover every generation.

    Raises:
        InputError: nothing is scored yet (no labels to report).
    """
    params: dict[str, Any] = {"tau": float(tau), "k": int(k)}
    if scoring_id is not None:
        params["scoring_id"] = scoring_id
    provenance_rows = ws.sql("SELECT * FROM report_provenance", params).to_pylist()
    if not provenance_rows:
        raise InputError(
            "the workspace has no FB-Mem scores to report"
            + (f" for scoring_id {scoring_id!r}" if scoring_id else ""),
            hint="run `fbmem segment` and `fbmem score` first (or `fbmem demo`)",
        )
    configurations = ws.sql("SELECT * FROM scoring_configurations", params).to_pylist()
    provenance = {
        **provenance_rows[0],
        "k": int(k),
        "scorings": len(configurations),
        "scoring_choice": "chosen with scoring_id" if scoring_id is not None else "the latest",
        "other_scorings": [c["scoring_id"] for c in configurations if not c["chosen"]],
    }
    limit_sql = f" LIMIT {int(limit)}" if limit is not None else ""
    generations = ws.sql(f"SELECT * FROM report_generations{limit_sql}", params)
    top_k = ws.sql(
        "SELECT generated_image_id, match_rank, train_image_id, fg_score, bg_score, pair_score FROM top_k_matches "
        "WHERE match_rank > 1 ORDER BY generated_image_id, match_rank",
        params,
    )
    prompt_matches = ws.sql("SELECT * FROM report_prompt_matches", params)
    rates = ws.sql("SELECT * FROM fbmem_rates", params)
    histogram = ws.sql("SELECT * FROM one_to_many_histogram", params)
    mitigation, utility_metric = _mitigation_rows(ws, params)
    files = ws.sql("SELECT image_id, store_path FROM report_image_files").to_pydict()
    image_files = dict(zip(files["image_id"], files["store_path"], strict=True))
    mask_rows = ws.sql("SELECT image_id, mask FROM report_masks", params).to_pydict()
    masks = dict(zip(mask_rows["image_id"], mask_rows["mask"], strict=True))
    return ReportData(
        provenance=provenance,
        generations=generations,
        top_k=top_k,
        prompt_matches=prompt_matches,
        rates=rates,
        histogram=histogram,
        mitigation=mitigation,
        utility_metric=utility_metric,
        image_files=image_files,
        masks=masks,
    )
