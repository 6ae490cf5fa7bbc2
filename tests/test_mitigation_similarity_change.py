"""Average change in foreground (and background) similarity under a mitigation, over matched generations."""

from __future__ import annotations

import pytest
from support.rows import region_score_row as _score

from fbmem_data.workspace import Workspace


def _gen(gid: str, prompt: str, seed: int, mitigation: str, *, steps: int = 50) -> dict[str, object]:
    return {
        "generation_id": gid,
        "image_id": f"img-{gid}",
        "prompt_id": prompt,
        "model_id": "m",
        "seed": seed,
        "steps": steps,
        "guidance": 7.0,
        "height": 64,
        "width": 64,
        "mitigation": mitigation,
    }



def test_matched_pairs_and_means(workspace: Workspace) -> None:
    workspace.write(
        "generations",
        [
            _gen("n1", "p1", 1, "none"),
            _gen("n2", "p1", 2, "none"),
            _gen("n3", "p2", 1, "none"),
            _gen("a1", "p1", 1, "nemo"),
            _gen("a2", "p1", 2, "nemo"),
            _gen("a3", "p2", 1, "nemo"),
            # no twin: another seed, and the same seed under other sampler settings
            _gen("a4", "p2", 9, "nemo"),
            _gen("a5", "p1", 1, "nemo", steps=20),
        ],
    )
    workspace.write(
        "region_scores",
        [
            _score("n1", "t1", 0.90, 0.85),
            _score("n2", "t1", 0.80, 0.50),
            _score("n3", "t2", 0.70, 0.90),
            # a1's own best match is t9; it was also scored against n1's best match t1
            _score("a1", "t9", 0.60, 0.70),
            _score("a1", "t1", 0.55, 0.65),
            _score("a2", "t1", 0.85, 0.40),
            _score("a3", "t2", 0.70, 0.95),
            _score("a4", "t2", 0.10, 0.10),
            _score("a5", "t1", 0.10, 0.10),
        ],
    )
    pairs = workspace.sql("SELECT * FROM mitigation_similarity_pairs ORDER BY generation_after").to_pylist()
    assert [(p["generation_before"], p["generation_after"]) for p in pairs] == [
        ("n1", "a1"),
        ("n2", "a2"),
        ("n3", "a3"),
    ]
    assert pairs[0]["train_after"] == "t9" and pairs[0]["fg_change_same_train"] == pytest.approx(0.55 - 0.90)
    assert pairs[1]["fg_change_same_train"] == pytest.approx(0.05)  # same best match: both changes agree
    (row,) = workspace.sql("SELECT * FROM mitigation_similarity_change").to_pylist()
    assert row["method"] == "nemo" and row["n_pairs"] == 3
    assert row["fg_change"] == pytest.approx(((0.60 - 0.90) + (0.85 - 0.80) + 0.0) / 3)
    assert row["bg_change"] == pytest.approx(((0.70 - 0.85) + (0.40 - 0.50) + (0.95 - 0.90)) / 3)
    assert row["fg_down_share"] == pytest.approx(1 / 3) and row["n_same_train"] == 3
    by_label = {
        r["label_before"]: r
        for r in workspace.sql("SELECT * FROM mitigation_similarity_change_by_label").to_pylist()
    }
    assert set(by_label) == {"VM", "FM", "BM"}  # n1 VM, n2 FM (bg 0.5), n3 BM (fg 0.7) at tau 0.8
    assert by_label["VM"]["fg_change"] == pytest.approx(-0.30)


def test_best_match_score_histogram(workspace: Workspace) -> None:
    workspace.write(
        "prompts",
        [
            {"prompt_id": "p1", "prompt_set": "memorized", "text": "a", "source_key": "1"},
            {"prompt_id": "p2", "prompt_set": "control", "text": "b", "source_key": "2"},
        ],
    )
    workspace.write(
        "generations", [_gen("g1", "p1", 1, "none"), _gen("g2", "p1", 2, "none"), _gen("g3", "p2", 1, "none")]
    )
    workspace.write(
        "region_scores",
        [
            _score("g1", "t1", 1.0, 0.905),
            _score("g1", "t2", 0.1, 0.1),  # only the best match counts
            _score("g2", "t1", 0.999, 0.2),
            _score("g3", "t1", 0.3, 0.3),
        ],
    )
    rows = workspace.sql("SELECT prompt_set, score, bin_lo, n FROM best_match_score_histogram").to_pylist()
    got = {(r["prompt_set"], r["score"], round(r["bin_lo"], 2)): r["n"] for r in rows}
    assert got[("memorized", "fg", 0.99)] == 2  # 1.0 lands in the last bin with 0.999
    assert got[("memorized", "bg", 0.9)] == 1 and got[("memorized", "bg", 0.2)] == 1
    assert got[("memorized", "pair", 0.95)] == 1 and got[("control", "pair", 0.3)] == 1
    assert sum(n for (s, kind, _), n in got.items() if kind == "pair") == 3
