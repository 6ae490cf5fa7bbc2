"""FB-Mem labels: the rule, tau, best match, top-k, scoring choice, rates and one-to-many views."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from fbmem_data.errors import QueryError
from fbmem_data.fbmem import label_rows, labels
from fbmem_data.fbmem.labelling import label_of
from fbmem_data.workspace import Workspace

TRUTH_TABLE = [
    # fg, bg, label at tau 0.8
    (0.9, 0.9, "VM"),
    (0.8, 0.8, "VM"),  # >= on both sides
    (0.5, 0.9, "BM"),
    (0.9, 0.5, "FM"),
    (0.79, 0.79, "NM"),
    (0.0, 0.0, "NM"),
]


@pytest.mark.parametrize(("fg", "bg", "label"), TRUTH_TABLE)
def test_label_rule(fg: float, bg: float, label: str) -> None:
    assert label_of(fg, bg) == label


def test_label_rule_order_over_a_grid() -> None:
    for fg, bg, tau in itertools.product([0.0, 0.5, 0.7, 0.8, 0.95], [0.0, 0.5, 0.7, 0.8, 0.95], [0.5, 0.8]):
        expected = "VM" if fg >= tau and bg >= tau else "BM" if bg >= tau else "FM" if fg >= tau else "NM"
        assert label_of(fg, bg, tau) == expected


def _score_row(sid: str, g: str, t: str, fg: float, bg: float, run_id: str = "r1") -> dict[str, object]:
    return {
        "scoring_id": sid,
        "generated_image_id": g,
        "train_image_id": t,
        "segmenter": "saliency",
        "metric": "msssim",
        "preset": "paper",
        "size": 512,
        "fg_score": fg,
        "bg_score": bg,
        "pair_score": 0.5 * fg + 0.5 * bg,
        "degenerate_rule": "none",
        "status": "ok",
        "run_id": run_id,
    }


def _run_row(run_id: str, minute: int) -> dict[str, object]:
    t = dt.datetime(2026, 1, 1, 0, minute, tzinfo=dt.timezone.utc)
    return {"run_id": run_id, "command": "score", "config": "{}", "config_hash": "x", "fbmem_version": "0", "started_at": t, "status": "ok"}


def test_sql_labels_match_python_rule_and_tau(workspace: Workspace) -> None:
    rows = [_score_row("S", f"g{i}", "t", fg, bg) for i, (fg, bg, _) in enumerate(TRUTH_TABLE)]
    workspace.write("region_scores", rows)
    got = {r["generated_image_id"]: r["label"] for r in label_rows(workspace).to_pylist()}
    assert got == {f"g{i}": label for i, (_, _, label) in enumerate(TRUTH_TABLE)}
    for tau in (0.5, 0.85, 0.95):
        got = {r["generated_image_id"]: r["label"] for r in label_rows(workspace, tau=tau).to_pylist()}
        assert got == {f"g{i}": label_of(fg, bg, tau) for i, (fg, bg, _) in enumerate(TRUTH_TABLE)}
    # the variable also reaches the views through plain SQL parameters
    n_vm = workspace.sql("SELECT count(*) AS n FROM fbmem_labels WHERE label = 'VM'", {"tau": 0.0}).column("n")[0].as_py()
    assert n_vm == len(TRUTH_TABLE)


def test_best_match_and_top_k(workspace: Workspace) -> None:
    workspace.write(
        "region_scores",
        [
            _score_row("S", "g1", "a", 0.9, 0.1),  # pair 0.5
            _score_row("S", "g1", "b", 0.3, 0.95),  # pair 0.625 <- best
            _score_row("S", "g1", "c", 0.2, 0.2),
            _score_row("S", "g2", "a", 0.4, 0.4),
            _score_row("S", "g2", "b", 0.4, 0.4),  # tie: train id order decides -> a
            {**_score_row("S", "g1", "err", 0.0, 0.0), "status": "error", "fg_score": None, "bg_score": None, "pair_score": None},
        ],
    )
    best = {r["generated_image_id"]: (r["train_image_id"], r["label"]) for r in label_rows(workspace).to_pylist()}
    assert best == {"g1": ("b", "BM"), "g2": ("a", "NM")}
    top = workspace.sql("SELECT generated_image_id, match_rank, train_image_id FROM top_k_matches ORDER BY 1, 2", {"k": 2})
    assert top.to_pylist() == [
        {"generated_image_id": "g1", "match_rank": 1, "train_image_id": "b"},
        {"generated_image_id": "g1", "match_rank": 2, "train_image_id": "a"},
        {"generated_image_id": "g2", "match_rank": 1, "train_image_id": "a"},
        {"generated_image_id": "g2", "match_rank": 2, "train_image_id": "b"},
    ]
    assert workspace.sql("SELECT count(*) AS n FROM top_k_matches").column("n")[0].as_py() == 5  # default k=5, error row excluded


def test_scoring_choice_variable_or_most_recent(workspace: Workspace) -> None:
    workspace.write("runs", [_run_row("old", 1), _run_row("new", 2)])
    workspace.write("region_scores", [_score_row("OLD", "g", "t", 0.9, 0.9, "old"), _score_row("NEW", "g", "t", 0.1, 0.1, "new")])
    assert [r["label"] for r in label_rows(workspace).to_pylist()] == ["NM"]  # most recent run wins
    assert [r["label"] for r in label_rows(workspace, scoring_id="OLD").to_pylist()] == ["VM"]
    with pytest.raises(QueryError, match="unknown scoring_id 'nope'") as err:  # was: an empty table
        label_rows(workspace, scoring_id="nope")
    assert "NEW, OLD" in str(err.value)


def test_rates_and_one_to_many(workspace: Workspace) -> None:
    workspace.write(
        "prompts",
        [
            {"prompt_id": "p1", "prompt_set": "mem", "text": "a", "source_key": "0"},
            {"prompt_id": "p2", "prompt_set": "mem", "text": "b", "source_key": "1"},
        ],
    )
    gens = []
    scores = []
    # p1: 3 generations, all best-matching training image A (VM, VM, BM); p2: 2 generations, 2 distinct (FM, NM)
    plan = [("p1", "A", 0.9, 0.9), ("p1", "A", 0.95, 0.9), ("p1", "A", 0.1, 0.9), ("p2", "A", 0.9, 0.1), ("p2", "B", 0.1, 0.1)]
    for i, (prompt, train, fg, bg) in enumerate(plan):
        gens.append({"generation_id": f"gen{i}", "image_id": f"img{i}", "prompt_id": prompt, "model_id": "sd14", "mitigation": "none"})
        scores.append(_score_row("S", f"img{i}", train, fg, bg))
    workspace.write("generations", gens)
    workspace.write("region_scores", scores)
    rates = labels(workspace).to_pylist()
    assert len(rates) == 1
    r = rates[0]
    assert (r["prompt_set"], r["model_id"], r["mitigation"], r["n"], r["vm"], r["bm"], r["fm"], r["nm"]) == ("mem", "sd14", "none", 5, 2, 1, 1, 1)
    assert r["vm_share"] == pytest.approx(0.4)
    otm = {row["prompt_id"]: row for row in workspace.sql("SELECT * FROM one_to_many").to_pylist()}
    assert (otm["p1"]["generations"], otm["p1"]["n_distinct_best"], otm["p1"]["vm"], otm["p1"]["bm"]) == (3, 1, 2, 1)
    assert (otm["p2"]["generations"], otm["p2"]["n_distinct_best"], otm["p2"]["fm"], otm["p2"]["nm"]) == (2, 2, 1, 1)
    hist = workspace.sql("SELECT n_distinct_best, prompts, generations, vm, bm, fm, nm FROM one_to_many_histogram").to_pylist()
    assert hist == [
        {"n_distinct_best": 1, "prompts": 1, "generations": 3, "vm": 2, "bm": 1, "fm": 0, "nm": 0},
        {"n_distinct_best": 2, "prompts": 1, "generations": 2, "vm": 0, "bm": 0, "fm": 1, "nm": 1},
    ]
