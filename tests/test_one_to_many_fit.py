"""The paper's one-to-many Gaussian fit (see_res.py): counts per bin from labels, the fit, the views, the CLI."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from fbmem_data.errors import InputError
from fbmem_data.fbmem.one_to_many import fit_gaussian, fit_one_to_many
from fbmem_data.workspace import Workspace

N_GEN = 10  # generations per prompt


def _label_rows(
    bin_counts: dict[int, int], model: str = "m", mitigation: str = "none"
) -> list[dict[str, object]]:
    """Prompts whose generations best-match exactly x distinct training images, with bin_counts[x]
    memorized (VM/BM/FM, in turn) generations in bin x; every prompt has N_GEN generations."""
    rows: list[dict[str, object]] = []
    for x, count in bin_counts.items():
        left, p = count, 0
        while left > 0 or p == 0:
            mem = min(left, N_GEN)
            pid = f"{model}-{mitigation}-x{x}-p{p}"
            for g in range(N_GEN):
                label = ("VM", "BM", "FM")[g % 3] if g < mem else "NM"
                rows.append(
                    {
                        "generation_id": f"{pid}-g{g}",
                        "generated_image_id": f"img-{pid}-g{g}",
                        "prompt_id": pid,
                        "prompt_set": "memorized",
                        "model_id": model,
                        "mitigation": mitigation,
                        "train_image_id": f"t{g % x}",
                        "label": label,
                        "scoring_id": "s1",
                    }
                )
            left -= mem
            p += 1
    return rows


def _install_labels(ws: Workspace, rows: list[dict[str, object]]) -> None:
    """A stand-in fbmem_labels (the real one needs images, masks and scores)."""
    con = ws.connection()
    con.register("label_rows", pa.Table.from_pylist(rows))
    con.execute("CREATE OR REPLACE VIEW fbmem_labels AS SELECT * FROM label_rows")


def _gauss(x: float, a: float, mu: float, sigma: float) -> float:
    return a * math.exp(-((x - mu) ** 2) / (2 * sigma**2))


def test_fit_recovers_a_planted_gaussian(workspace: Workspace) -> None:
    true = (40.0, 5.0, 1.5)
    counts = {x: round(_gauss(x, *true)) for x in range(1, N_GEN + 1)}
    rows = _label_rows({x: c for x, c in counts.items() if c > 0})
    rows += _label_rows({3: 7}, mitigation="nemo")  # another mitigation stays out of the 'none' fit
    _install_labels(workspace, rows)
    (fit_id,) = fit_one_to_many(workspace)
    fit = workspace.sql("SELECT * FROM one_to_many_fit").to_pylist()
    assert len(fit) == 1 and fit[0]["fit_id"] == fit_id and fit[0]["status"] == "ok"
    f = fit[0]
    assert abs(f["mean"] - 5.0) < 0.05 and abs(f["sigma"] - 1.5) < 0.05 and abs(f["amplitude"] - 40.0) < 1.0
    assert f["r2"] > 0.99 and f["n_memorized"] == sum(counts.values()) and f["n_max"] == N_GEN
    # moments from the stored counts and from the SQL view over the labels agree
    xs = list(counts)
    mean = sum(x * counts[x] for x in xs) / sum(counts.values())
    assert abs(f["moment_mean"] - mean) < 1e-9
    mom = workspace.sql("SELECT * FROM one_to_many_moments WHERE mitigation = 'none'").to_pylist()[0]
    assert abs(mom["moment_mean"] - mean) < 1e-9 and abs(mom["moment_std"] - f["moment_std"]) < 1e-9
    curve = workspace.sql("SELECT * FROM one_to_many_fit_curve ORDER BY n_distinct_best").to_pylist()
    assert [r["n_distinct_best"] for r in curve] == list(range(1, N_GEN + 1))
    assert [r["memorized"] for r in curve] == [counts[x] for x in range(1, N_GEN + 1)]
    assert all(
        abs(r["fitted"] - _gauss(r["n_distinct_best"], f["amplitude"], f["mean"], f["sigma"])) < 1e-9
        for r in curve
    )
    # the same data again: the same fit, not a second row
    assert fit_one_to_many(workspace) == [fit_id]
    assert workspace.count("one_to_many_fits") == 1


def test_empty_bins_count_as_zero_and_failures_are_rows(workspace: Workspace) -> None:
    # every prompt has 10 generations but only bins 2 and 3 hold memorized ones: bins 1 and 4..10 are 0
    _install_labels(workspace, _label_rows({2: 12, 3: 12, 9: 0}))
    fit_one_to_many(workspace)
    row = workspace.sql("SELECT counts, n_max FROM one_to_many_fits").to_pylist()[0]
    assert row["n_max"] == N_GEN and row["counts"] == [0, 12, 12, 0, 0, 0, 0, 0, 0, 0]
    nothing = fit_gaussian([0, 0, 0, 0])
    assert nothing["status"] == "failed" and "no memorized" in nothing["error"]
    few = fit_gaussian([3, 4])
    assert few["status"] == "failed" and few["moment_mean"] == pytest.approx((3 + 8) / 7)
    with pytest.raises(InputError, match="no labelled generations"):
        fit_one_to_many(workspace, mitigation="wen")


def test_cli_prints_the_fit(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from typer.testing import CliRunner

    from fbmem_data.cli.app import build_app

    _install_labels(workspace, _label_rows({x: round(_gauss(x, 30, 4, 1.2)) for x in range(1, N_GEN + 1)}))
    # the CLI opens the workspace itself: hand it this one, with the stand-in labels installed
    monkeypatch.setattr("fbmem_data.cli.analysis_cmds.open_workspace", lambda _path: workspace)
    result = CliRunner().invoke(build_app(), ["one-to-many", "-f", "json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["status"] == "ok" and abs(row["mean"] - 4) < 0.1
    result = CliRunner().invoke(build_app(), ["one-to-many", "--curve", "-f", "json"])
    assert len(json.loads(result.output)) == N_GEN
    result = CliRunner().invoke(build_app(), ["one-to-many", "--mitigation", "rta"])
    assert result.exit_code != 0 and "no labelled generations" in str(result.exception)


# The per-bin counts the paper's see_res.py lists for its 9,460 generations (x = 1..20 distinct best matches).
PAPER_VM = [985, 214, 82, 77, 12, 28, 4, 1, 9, 21, 57, 191, 426, 585, 548, 271, 104, 0, 0, 0]
PAPER_BM = [114, 97, 289, 343, 213, 237, 127, 112, 125, 120, 52, 61, 51, 88, 77, 31, 11, 0, 0, 0]
PAPER_FM = [41, 55, 31, 43, 23, 46, 83, 92, 37, 24, 6, 28, 23, 28, 39, 11, 5, 0, 0, 0]


def test_fit_of_the_papers_own_bimodal_counts() -> None:
    import numpy as np
    from scipy.optimize import curve_fit

    counts = [v + b + f for v, b, f in zip(PAPER_VM, PAPER_BM, PAPER_FM, strict=True)]
    fit = fit_gaussian(counts)
    assert fit["status"] == "ok", fit["error"]
    # independently: curve_fit started by hand at the second mode, the one start that converges
    x = np.arange(1, 21, dtype=float)
    ref, _ = curve_fit(
        lambda t, a, b, c: a * np.exp(-((t - b) ** 2) / (2 * c**2)),
        x,
        np.asarray(counts, float),
        p0=(700, 14, 2),
    )
    assert (fit["amplitude"], fit["mean"], fit["sigma"]) == pytest.approx(
        (ref[0], ref[1], abs(ref[2])), rel=1e-3
    )
    assert fit["mean"] == pytest.approx(14.14, abs=0.01) and fit["sigma"] == pytest.approx(1.58, abs=0.01)
    # the moments of the same counts sit between the two modes
    assert 8 < fit["moment_mean"] < 9


def test_fit_through_the_real_label_views(workspace: Workspace) -> None:
    """No stand-in: generations + region_scores -> best_match -> fbmem_labels -> one_to_many -> the fit."""
    gens, scores = [], []
    # prompt a: 4 generations, all VM, all on one training image; prompt b: 4 generations on 4 images, 2 FM
    for p, n_train, fgs in (("a", 1, [0.9] * 4), ("b", 4, [0.9, 0.85, 0.1, 0.2])):
        for s in range(4):
            gid = f"{p}{s}"
            gens.append(
                {
                    "generation_id": gid,
                    "image_id": f"img-{gid}",
                    "prompt_id": p,
                    "model_id": "m",
                    "seed": s,
                    "steps": 50,
                    "guidance": 7.0,
                    "height": 64,
                    "width": 64,
                    "mitigation": "none",
                }
            )
            bg = 0.9 if p == "a" else 0.1
            scores.append(
                {
                    "scoring_id": "s1",
                    "generated_image_id": f"img-{gid}",
                    "train_image_id": f"t{s % n_train}",
                    "segmenter": "x",
                    "metric": "msssim",
                    "preset": "paper",
                    "size": 64,
                    "fg_score": fgs[s],
                    "bg_score": bg,
                    "pair_score": (fgs[s] + bg) / 2,
                    "degenerate_rule": "none",
                    "status": "ok",
                }
            )
    workspace.write("generations", gens)
    workspace.write("region_scores", scores)
    (fit_id,) = fit_one_to_many(workspace)
    row = workspace.sql("SELECT * FROM one_to_many_fits").to_pylist()[0]
    assert row["fit_id"] == fit_id and row["scoring_id"] == "s1" and row["n_prompts"] == 2
    assert row["counts"] == [4, 0, 0, 2] and row["n_generations"] == 8 and row["n_memorized"] == 6
