"""Smoke tests of the benchmark entry point (`python -m benchmarks`), its scripts, and the SQL it times.

Timings are never asserted here (benchmarks measure, tests check): only that the entry point runs,
writes valid JSON and markdown with a baseline for every figure, and that the scripts parse.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from benchmarks.__main__ import markdown, result_stem
from benchmarks.bench_sql import shape_for_rows
from benchmarks.stages import STAGES, Figure, stages_for
from fbmem_data.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # ~25 s on a 2-core CPU
def test_quick_entry_point_writes_json_and_markdown_with_baselines(tmp_path: Path) -> None:
    """The fast stages at their quick sizes, through the real entry point, in a child process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "sql", "ingest", "pairing", "--results-dir", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "benchmarks-cpu-quick.json").read_text())
    assert [s["name"] for s in report["stages"]] == ["pairing", "sql", "ingest"]
    assert all(s["status"] == "ok" for s in report["stages"]), [s["status"] for s in report["stages"]]
    assert report["versions"]["duckdb"] and report["machine"]["cpus"] and report["date"]
    figures = report["figures"]
    assert {f["stage"] for f in figures} == {"pairing", "sql", "ingest"}
    for f in figures:
        assert f["value"] is not None and f["baseline_value"] is not None and f["baseline"], f
    sql_rates = [f for f in figures if f["name"].startswith("fbmem_rates over")]
    assert len(sql_rates) == 1 and sql_rates[0]["value"] > 0
    md = (tmp_path / "benchmarks-cpu-quick.md").read_text()
    assert md.count("\n| sql |") == len([f for f in figures if f["stage"] == "sql"]) + 1  # + the status row
    assert "Baseline (same run)" in md


def test_markdown_marks_missed_targets_and_failed_stages() -> None:
    fig = Figure("scorer", "msssim pairs/s", 3.0, "pairs/s", "reference", 1.0, 3.0, target=">= 10x", met=False)
    report = {
        "device": "cpu", "quick": False, "date": "d", "total_seconds": 1, "commit": "c", "loadavg_before": [1], "loadavg_after": [2],
        "versions": {"duckdb": "2"}, "machine": {"cpu_model": "x", "cpus": 2, "memory_gib": 1, "platform": "p", "python": "3"},
        "stages": [
            {"name": "scorer", "title": "t", "status": "ok", "seconds": 1, "args": ["--a"], "figures": [fig.__dict__]},
            {"name": "nemo", "title": "NeMo", "status": "failed (exit 1)", "seconds": 2, "args": []},
        ],
    }
    md = markdown(report)
    assert "| scorer | msssim pairs/s | 3 pairs/s | reference | 1 pairs/s | 3 x the baseline | >= 10x | **no** |" in md
    assert "| nemo | NeMo | failed (exit 1) |" in md


def test_result_names_and_stage_sets() -> None:
    assert result_stem("cpu", None, False) == "benchmarks-cpu"
    assert result_stem("cuda", "h100", True) == "benchmarks-cuda-h100-quick"
    assert set(stages_for("cuda")) == {"scorer", "pairing", "nemo"}
    assert {"scorer", "pairing", "sql", "nemo", "ingest", "generate"} <= set(STAGES)
    for stage in STAGES.values():  # every stage has a quick configuration on the CPU (or is skipped there)
        args = stage.args("quick", "cpu")
        assert args is None or isinstance(args, list)


def test_sql_bench_shapes_follow_the_paper_setting() -> None:
    assert shape_for_rows(1_000_000) == (100, 1)  # 100 prompts x 20 seeds x 500 training images
    assert shape_for_rows(10_000_000) == (500, 2)  # the paper's 500 prompts x 20 seeds, twice (none, nemo)


@pytest.mark.parametrize("script", ["benchmarks/gpu.sh", "benchmarks/fetch_gpu_wheels.sh"])
def test_shell_scripts_parse(script: str) -> None:
    done = subprocess.run(["bash", "-n", str(REPO / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_best_match_is_the_window_rank_one_row(workspace: Workspace) -> None:
    """best_match (an arg_min aggregate) returns exactly fbmem_ranked_matches' match_rank = 1 rows:
    ties broken by train_image_id, NaN first and NULL last as DuckDB orders them, error rows ignored."""
    cases = {  # generated image -> [(train image, pair score, status)]
        "g-tie": [("t2", 0.5, "ok"), ("t1", 0.5, "ok"), ("t3", 0.4, "ok")],
        "g-null": [("t2", None, "ok"), ("t1", None, "ok")],
        "g-some-null": [("t9", None, "ok"), ("t8", 0.1, "ok")],
        "g-nan": [("t2", math.nan, "ok"), ("t1", 0.9, "ok"), ("t3", math.nan, "ok")],
        "g-error-best": [("t1", 0.99, "error"), ("t2", 0.2, "ok")],
        "g-negative": [("t1", -0.3, "ok"), ("t2", -0.1, "ok")],
    }
    rows = [
        {"scoring_id": "s1", "generated_image_id": g, "train_image_id": t, "segmenter": "saliency", "metric": "msssim",
         "preset": "paper", "size": 256, "fg_score": score, "bg_score": score, "pair_score": score, "status": status}
        for g, pairs in cases.items() for t, score, status in pairs
    ]
    workspace.write("region_scores", pa.Table.from_pylist(rows))
    best = workspace.sql("SELECT generated_image_id, train_image_id FROM best_match ORDER BY 1").to_pylist()
    assert {r["generated_image_id"]: r["train_image_id"] for r in best} == {
        "g-tie": "t1", "g-null": "t1", "g-some-null": "t8", "g-nan": "t2", "g-error-best": "t2", "g-negative": "t2",
    }
    diff = workspace.sql(
        "SELECT (SELECT count(*) FROM (FROM best_match EXCEPT ALL "
        "  SELECT generated_image_id, train_image_id, fg_score, bg_score, pair_score, degenerate_rule, scoring_id, metric, "
        "         preset, size, segmenter FROM fbmem_ranked_matches WHERE match_rank = 1)) AS extra, "
        "(SELECT count(*) FROM best_match) AS n"
    ).to_pylist()[0]
    assert diff == {"extra": 0, "n": len(cases)}
