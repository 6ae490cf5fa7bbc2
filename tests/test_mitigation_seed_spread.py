"""mitigation_seed_spread: each seed's generations scored as their own comparison, then spread over seeds."""

from __future__ import annotations

import statistics
from collections import defaultdict

import pytest

from fbmem_data.testing.sample_workspace import SampleSpec, write_sample_workspace
from fbmem_data.workspace import Workspace


def test_seed_spread_is_the_spread_of_per_seed_scores(workspace: Workspace) -> None:
    write_sample_workspace(
        workspace, SampleSpec(n_prompts=16, seeds=3, k=3, mitigated_sets=("memorized", "template"), utility=True)
    )
    transitions = workspace.sql("SELECT method, seed, weight, label_after FROM mitigation_transitions").to_pylist()
    per_seed: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for t in transitions:
        per_seed[t["method"]][t["seed"]].append(float(t["weight"]))
    spread = {r["method"]: r for r in workspace.sql("SELECT * FROM mitigation_seed_spread").to_pylist()}
    comparison = {r["method"]: r for r in workspace.sql("SELECT * FROM mitigation_comparison").to_pylist()}
    assert set(spread) == set(comparison)
    for method, seeds in per_seed.items():
        scores = [sum(w) for w in seeds.values()]
        row = spread[method]
        assert row["seeds"] == len(scores) == 3
        assert row["score_per_seed"] == pytest.approx(statistics.mean(scores))
        assert row["score_per_seed_sd"] == pytest.approx(statistics.stdev(scores))
        assert (row["score_per_seed_min"], row["score_per_seed_max"]) == (min(scores), max(scores))
        # the seeds partition the comparison: their scores add up to the paper's score
        assert row["score_per_seed"] * row["seeds"] == pytest.approx(comparison[method]["mitigation_score"])
        assert row["n"] == comparison[method]["n"]
        assert row["vm_rate"] == pytest.approx(comparison[method]["vm_rate"])  # every seed has the same n here
    none = spread["none"]
    assert none["score_per_seed"] == 0 and none["n"] == comparison["none"]["n"]


def test_one_seed_has_no_spread_and_the_demo_table_says_so(workspace: Workspace) -> None:
    from fbmem_data.lab.mitigation_demo import comparison_table, format_comparison

    write_sample_workspace(workspace, SampleSpec(n_prompts=8, seeds=1, k=2, mitigated_sets=("memorized",)))
    rows = workspace.sql("SELECT * FROM mitigation_seed_spread").to_pylist()
    assert rows and all(r["seeds"] == 1 and r["score_per_seed_sd"] is None for r in rows)
    scoring_id = workspace.sql("SELECT scoring_id FROM fbmem_scoring_choice").to_pylist()[0]["scoring_id"]
    assert "per seed" not in format_comparison(comparison_table(workspace, scoring_id, None))


def test_demo_table_prints_the_per_seed_score_and_its_spread(workspace: Workspace) -> None:
    from fbmem_data.lab.mitigation_demo import comparison_table, format_comparison

    write_sample_workspace(workspace, SampleSpec(n_prompts=8, seeds=2, k=2, mitigated_sets=("memorized",)))
    scoring_id = workspace.sql("SELECT scoring_id FROM fbmem_scoring_choice").to_pylist()[0]["scoring_id"]
    table = comparison_table(workspace, scoring_id, None)
    spread = {r["method"]: r for r in workspace.sql("SELECT * FROM mitigation_seed_spread").to_pylist()}
    text = format_comparison(table)
    assert "per seed" in text and "mean ± sample sd over seeds" in text
    for r in table.to_pylist():
        s = spread[r["method"]]
        assert r["seeds"] == 2
        line = next(x for x in text.splitlines() if x.startswith(r["method"] + " "))
        assert f"{s['score_per_seed']:9.1f} ± {s['score_per_seed_sd']:4.1f}" in line


def test_seed_contrast_pairs_methods_by_seed(workspace: Workspace) -> None:
    write_sample_workspace(
        workspace,
        SampleSpec(n_prompts=16, seeds=3, k=3, mitigations=("none", "nemo", "wen"), mitigated_sets=("memorized",)),
    )
    scores: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for t in workspace.sql("SELECT method, seed, weight FROM mitigation_transitions").to_pylist():
        scores[t["method"]][t["seed"]] += float(t["weight"])
    rows = {(r["method"], r["other_method"]): r for r in workspace.sql("SELECT * FROM mitigation_seed_contrast").to_pylist()}
    assert set(rows) == {("nemo", "wen"), ("wen", "nemo")}  # 'none' is the baseline, not a method to pair
    diffs = [scores["nemo"][s] - scores["wen"][s] for s in sorted(scores["nemo"])]
    row = rows[("nemo", "wen")]
    assert row["seeds"] == 3
    assert row["score_difference"] == pytest.approx(statistics.mean(diffs))
    assert row["score_difference_sd"] == pytest.approx(statistics.stdev(diffs))
    assert row["seeds_better"] == sum(d > 0 for d in diffs)
    back = rows[("wen", "nemo")]
    assert back["score_difference"] == pytest.approx(-row["score_difference"])
    assert back["seeds_better"] == sum(d < 0 for d in diffs)


def test_comparison_carries_the_spread_of_every_method(workspace: Workspace) -> None:
    write_sample_workspace(workspace, SampleSpec(n_prompts=8, seeds=2, k=2, mitigated_sets=("memorized",)))
    spread = {r["method"]: r for r in workspace.sql("SELECT * FROM mitigation_seed_spread").to_pylist()}
    for r in workspace.sql("SELECT * FROM mitigation_comparison").to_pylist():
        s = spread[r["method"]]  # 'none' included: its rows keep the generations' own parameters
        assert (r["seeds"], r["score_per_seed"], r["score_per_seed_sd"]) == (
            s["seeds"], s["score_per_seed"], s["score_per_seed_sd"])
