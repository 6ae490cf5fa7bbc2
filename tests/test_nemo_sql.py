"""Mitigation evaluation SQL: transitions before -> after for the same prompt and seed, and the score."""

from __future__ import annotations

import itertools

import pyarrow as pa

from fbmem_data.workspace import Workspace

WEIGHTS = {
    "VM": {"VM": 0, "BM": 1.5, "FM": 0.5, "NM": 2},
    "BM": {"VM": -1.5, "BM": 0, "FM": -0.5, "NM": 0.5},
    "FM": {"VM": -0.5, "BM": 1, "FM": 0, "NM": 1.5},
    "NM": {"VM": -2, "BM": -0.5, "FM": -1.5, "NM": 0},
}


def test_weight_table_is_the_papers(workspace: Workspace) -> None:
    rows = workspace.sql("SELECT * FROM mitigation_score_weights").to_pylist()
    assert len(rows) == 16
    assert {(r["label_before"], r["label_after"]): r["weight"] for r in rows} == {
        (b, a): float(w) for b, row in WEIGHTS.items() for a, w in row.items()
    }


def test_transitions_and_score(workspace: Workspace) -> None:
    """Labels injected through a stand-in fbmem_labels (the real one needs segmentations)."""
    gens = []
    expected = {"nemo": 0.0, "rta": 0.0}
    for i, (before, after) in enumerate(itertools.product(WEIGHTS, WEIGHTS)):
        for method in ("nemo", "rta"):
            after_label = after if method == "nemo" else before
            gens.append((f"n{i}", f"p{i % 5}", i, "none", before))
            gens.append((f"{method}{i}", f"p{i % 5}", i, method, after_label))
            expected[method] += WEIGHTS[before][after_label]
    gens = list(dict.fromkeys(gens))
    # An unmatched 'after' (different seed) must not pair.
    gens.append(("x", "p0", 999, "nemo", "NM"))
    workspace.write("generations", [
        {"generation_id": g, "image_id": f"img-{g}", "prompt_id": p, "model_id": "m", "seed": s, "steps": 50,
         "guidance": 7.0, "height": 64, "width": 64, "mitigation": m}
        for g, p, s, m, _ in gens
    ])
    # A method that draws exactly the baseline's image (same image_id) must not duplicate the baseline's row.
    workspace.write("generations", [
        {"generation_id": "same", "image_id": "img-n0", "prompt_id": "p0", "model_id": "m", "seed": 0, "steps": 50,
         "guidance": 7.0, "height": 64, "width": 64, "mitigation": "wen"}
    ])
    gens.append(("same", "p0", 0, "wen", next(lab for g, _, _, _, lab in gens if g == "n0")))
    # fbmem_labels has one row per generation (the real view joins best_match to generations)
    con = workspace.connection()
    con.register("label_rows", pa.table({
        "generation_id": [g for g, *_ in gens], "generated_image_id": ["img-n0" if g == "same" else f"img-{g}" for g, *_ in gens],
        "label": [lab for *_, lab in gens],
    }))
    con.execute("CREATE OR REPLACE VIEW fbmem_labels AS SELECT generation_id, generated_image_id, label FROM label_rows")
    score = {r["method"]: r for r in workspace.sql("SELECT * FROM mitigation_score").to_pylist()}
    assert score["nemo"]["score"] == expected["nemo"] and score["nemo"]["n_pairs"] == 16
    assert score["rta"]["score"] == 0.0
    counts = workspace.sql("SELECT * FROM mitigation_transition_counts WHERE method = 'nemo'").to_pylist()
    assert len(counts) == 16 and all(r["n"] == 1 for r in counts)
    rates = {r["method"]: r for r in workspace.sql("SELECT * FROM fbmem_rates_by_method").to_pylist()}
    assert rates["none"]["n"] == 16 and abs(rates["none"]["vm_rate"] - 0.25) < 1e-12
    assert rates["wen"]["n"] == 1
    assert rates["nemo"]["n"] == 17
    # Per planted group (lab_truth): p0..p4 alternate between two groups.
    workspace.write("lab_truth", [
        {"prompt_id": f"p{i}", "planted_group": "VM" if i % 2 == 0 else "control", "group_key": f"k{i}",
         "prompt_set": "lab-memorized", "dataset_seed": 0, "train_image_ids": [], "repeats": 1}
        for i in range(5)
    ])
    by_group = workspace.sql("SELECT * FROM fbmem_rates_by_group WHERE method = 'nemo'").to_pylist()
    assert {r["planted_group"] for r in by_group} == {"VM", "control"}
    assert sum(r["mitigation_score"] for r in by_group) == expected["nemo"]
    assert sum(r["n"] for r in by_group) == 17
