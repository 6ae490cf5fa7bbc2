"""Seconds and peak memory of the FB-Mem SQL views over 1 and 10 million synthetic `region_scores` rows.

Usage: nice -n 10 .venv/bin/python -m benchmarks.bench_sql [--rows 1000000 10000000] [--repeat 3]
       [--pandas-max-rows 10000000] [--out benchmarks/results/sql.json]

Data (written through `Workspace.write`, the real schema and part layout, in a temporary workspace):
prompts x 20 seeds x mitigations generated images, each scored against 500 training images (the paper's
setting is 500 prompts x 20 seeds x 500 training images = 5 M rows); one Parquet part per 1,000
generated images; one in 1,000 rows has status 'error'; scores rounded to 3 decimals so that ties
(broken by train_image_id) really occur. `generations`, `prompts` and the scoring run are written too.

Each query runs in a fresh child process that opens the workspace (views defined outside the clock),
runs the query `--repeat` times and reports the first and the best time, the rows returned, and its
peak RSS (ru_maxrss) next to the RSS it had before the first query (the floor: Python, DuckDB, views).
Baselines from the same run and data: a plain scan (count + sum of pair_score) and a group-by max
(the least work any best-match query must do), and the same labels/rates computed with pandas.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

RESULTS = Path(__file__).resolve().parent / "results" / "sql.json"
N_TRAIN = 500
SEEDS = 20
GENERATIONS_PER_PART = 1000
MITIGATIONS = ("none", "nemo", "wen", "rta")

# Each view is materialised in full (DuckDB's arrow result), as `fbmem sql` would.
QUERIES: dict[str, str] = {
    "baseline_scan": "SELECT count(*), sum(pair_score) FROM region_scores WHERE status = 'ok'",
    "baseline_group_max": "SELECT generated_image_id, max(pair_score) FROM region_scores WHERE status = 'ok' GROUP BY 1",
    "fbmem_labels": "SELECT * FROM fbmem_labels",
    "fbmem_rates": "SELECT * FROM fbmem_rates",
    "one_to_many": "SELECT * FROM one_to_many",
}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def shape_for_rows(rows: int) -> tuple[int, int]:
    """(prompts, mitigations) so that prompts x 20 seeds x mitigations x 500 training images = rows."""
    generated = max(1, rows // N_TRAIN)
    per_prompt = SEEDS
    n_mitigations = 1
    while generated // (per_prompt * n_mitigations) > 500 and n_mitigations < len(MITIGATIONS):
        n_mitigations *= 2  # 1 M rows: 100 prompts, none; 10 M: 500 prompts x {none, nemo}
    return max(1, generated // (per_prompt * n_mitigations)), n_mitigations


def region_score_part(gen_ids: list[str], train_ids: list[str], rng: np.random.Generator, scoring_id: str, run_id: str) -> pa.Table:
    """Scores of every (generated, training) pair for these generated images: each generated image
    has one source training image whose fg/bg depend on a drawn label; the rest are low."""
    n_g, n_t = len(gen_ids), len(train_ids)
    n = n_g * n_t
    fg = rng.beta(2.0, 5.0, size=(n_g, n_t))
    bg = rng.beta(2.0, 5.0, size=(n_g, n_t))
    source = rng.integers(0, n_t, size=n_g)
    label = rng.integers(0, 4, size=n_g)  # 0 VM, 1 BM, 2 FM, 3 NM
    rows = np.arange(n_g)
    fg[rows, source] = np.where((label == 0) | (label == 2), rng.uniform(0.8, 1.0, n_g), rng.uniform(0.3, 0.79, n_g))
    bg[rows, source] = np.where(label <= 1, rng.uniform(0.8, 1.0, n_g), rng.uniform(0.3, 0.79, n_g))
    fg, bg = np.round(fg.ravel(), 3), np.round(bg.ravel(), 3)
    pair = np.round(0.5 * fg + 0.5 * bg, 4)
    error = rng.random(n) < 0.001
    gen_col = pa.array(gen_ids).take(pa.array(np.repeat(np.arange(n_g), n_t)))
    train_col = pa.array(train_ids).take(pa.array(np.tile(np.arange(n_t), n_g)))

    def scores(values: np.ndarray) -> pa.Array:
        return pa.array(values, mask=error)

    def const(value: str) -> pa.Array:
        return pa.array([value]).take(pa.array(np.zeros(n, dtype=np.int64)))

    return pa.table({
        "scoring_id": const(scoring_id),
        "generated_image_id": gen_col,
        "train_image_id": train_col,
        "segmenter": const("birefnet"),
        "metric": const("msssim"),
        "preset": const("paper"),
        "size": pa.array(np.full(n, 512, dtype=np.int32)),
        "fg_score": scores(fg),
        "bg_score": scores(bg),
        "pair_score": scores(pair),
        "raw_fg_score": scores(fg),
        "raw_bg_score": scores(bg),
        "degenerate_rule": pa.array(np.where(error, None, "none").tolist()),
        "status": pa.array(np.where(error, "error", "ok").tolist()),
        "error": pa.array(np.where(error, "synthetic failure", None).tolist()),
        "run_id": const(run_id),
    })


def build_workspace(root: Path, rows: int, seed: int = 0) -> dict[str, Any]:
    """A workspace whose region_scores hold `rows` rows (prompts x seeds x mitigations x 500)."""
    from fbmem_data.ids import params_hash, prompt_id
    from fbmem_data.workspace import Workspace

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    n_prompts, n_mitigations = shape_for_rows(rows)
    ws = Workspace.init(root)
    prompts = [
        {"prompt_id": prompt_id("memorized", str(i), f"synthetic prompt {i}"), "prompt_set": "memorized",
         "text": f"synthetic prompt {i}", "source_key": str(i), "memorization_type": "VM" if i % 5 == 0 else "TM"}
        for i in range(n_prompts)
    ]
    ws.write("prompts", prompts, on_conflict="append")
    train_ids = [sha(f"train {j}") for j in range(N_TRAIN)]
    generations = []
    for p in prompts:
        for mitigation in MITIGATIONS[:n_mitigations]:
            for s in range(SEEDS):
                settings = {"prompt_id": p["prompt_id"], "model_id": "sd-v1-4", "seed": s, "mitigation": mitigation}
                generations.append({"generation_id": params_hash(settings), "image_id": sha(json.dumps(settings)), "seed": s,
                                    "prompt_id": p["prompt_id"], "model_id": "sd-v1-4", "steps": 50, "guidance": 7.5,
                                    "height": 512, "width": 512, "mitigation": mitigation})
    ws.write("generations", generations, on_conflict="append")
    scoring_id = params_hash({"metric": "msssim", "size": 512, "preset": "paper"})
    with ws.run("score", {"synthetic": True}) as run:
        gen_ids = [g["image_id"] for g in generations]
        for i in range(0, len(gen_ids), GENERATIONS_PER_PART):
            part = region_score_part(gen_ids[i : i + GENERATIONS_PER_PART], train_ids, rng, scoring_id, run.run_id)
            ws.write("region_scores", part, on_conflict="append")
    ws.close()
    stored = sum(p.stat().st_size for p in ws.parts("region_scores"))
    return {
        "rows": len(gen_ids) * N_TRAIN, "prompts": n_prompts, "seeds": SEEDS, "mitigations": n_mitigations,
        "generated_images": len(gen_ids), "train_images": N_TRAIN, "parts": len(ws.parts("region_scores")) - 1,
        "parquet_mb": round(stored / 2**20, 1), "build_seconds": round(time.perf_counter() - start, 1),
    }


def rss_mb() -> float:
    """Current resident set size (Linux /proc), in MiB."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of this process (VmHWM; unlike ru_maxrss it is not inherited across exec)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmHWM in /proc/self/status")


def child_query(ws_root: str, name: str, repeat: int) -> dict[str, Any]:
    """Runs in the child: time one named query (or the pandas reference) `repeat` times."""
    if name == "pandas_rates":
        return child_pandas(ws_root, repeat)
    from fbmem_data.workspace import Workspace

    ws = Workspace.open(ws_root)
    con = ws.connection()
    floor = rss_mb()
    times, n_rows = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        n_rows = con.sql(QUERIES[name]).to_arrow_table().num_rows
        times.append(time.perf_counter() - start)
    return {"first_s": round(times[0], 3), "best_s": round(min(times), 3), "rows_out": n_rows,
            "rss_floor_mb": round(floor, 1), "peak_rss_mb": peak_rss_mb(),
            "duckdb_threads": int(con.sql("SELECT current_setting('threads')").fetchall()[0][0])}


def pandas_rates(ws_root: str) -> Any:
    """The reference way: load the scores into pandas, sort for the best match (ties by train id),
    label at tau 0.8, join generations and prompts, count per prompt set, model and mitigation."""
    import pandas as pd

    tables = Path(ws_root) / "tables"
    scores = pd.read_parquet(tables / "region_scores", columns=["generated_image_id", "train_image_id", "fg_score", "bg_score", "pair_score", "status"])
    scores = scores[scores["status"] == "ok"]
    best = (scores.sort_values(["generated_image_id", "pair_score", "train_image_id"], ascending=[True, False, True], na_position="last")
            .drop_duplicates("generated_image_id"))
    tau = 0.8
    best["label"] = np.select([(best.bg_score >= tau) & (best.fg_score >= tau), best.bg_score >= tau, best.fg_score >= tau], ["VM", "BM", "FM"], "NM")
    gens = pd.read_parquet(tables / "generations", columns=["image_id", "prompt_id", "model_id", "mitigation"])
    prompts = pd.read_parquet(tables / "prompts", columns=["prompt_id", "prompt_set"])
    labelled = best.merge(gens, left_on="generated_image_id", right_on="image_id", how="left").merge(prompts, on="prompt_id", how="left")
    return labelled.groupby(["prompt_set", "model_id", "mitigation"], dropna=False)["label"].value_counts().unstack(fill_value=0)


def child_pandas(ws_root: str, repeat: int) -> dict[str, Any]:
    """One run (repeat is ignored): the reference is slow enough that a warm second run changes little."""
    import pandas as pd  # noqa: F401  (imported before the floor is read)

    floor = rss_mb()
    times, n_rows = [], 0
    for _ in range(1):
        start = time.perf_counter()
        n_rows = len(pandas_rates(ws_root))
        times.append(time.perf_counter() - start)
    return {"first_s": round(times[0], 3), "best_s": round(min(times), 3), "rows_out": n_rows, "rss_floor_mb": round(floor, 1),
            "peak_rss_mb": peak_rss_mb()}


def run_child(ws_root: Path, name: str, repeat: int, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.bench_sql", "--child", str(ws_root), name, str(repeat)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed in its child process:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench(rows_list: list[int], repeat: int, pandas_max_rows: int, workdir: Path | None = None) -> dict[str, Any]:
    results = []
    with tempfile.TemporaryDirectory(prefix="fbmem-bench-sql-", dir=workdir) as tmp:
        for rows in rows_list:
            root = Path(tmp) / f"ws-{rows}"
            data = build_workspace(root, rows)
            print(f"{data['rows']:,} rows in {data['parts']} parts, {data['parquet_mb']} MiB, built in {data['build_seconds']}s", flush=True)
            queries = {}
            names = list(QUERIES) + (["pandas_rates"] if rows <= pandas_max_rows else [])
            for name in names:
                queries[name] = run_child(root, name, repeat, timeout=900)
                print(f"  {name}: {json.dumps(queries[name])}", flush=True)
            rates = queries["fbmem_rates"]["best_s"]
            summary = {
                "rates_vs_scan": round(rates / queries["baseline_scan"]["best_s"], 2),
                "rates_vs_group_max": round(rates / queries["baseline_group_max"]["best_s"], 2),
            }
            if "pandas_rates" in queries:
                summary["pandas_over_sql_rates"] = round(queries["pandas_rates"]["best_s"] / rates, 2)
            results.append({"data": data, "queries": queries, "ratios": summary})
    return {
        "benchmark": "FB-Mem SQL views (fbmem_labels, fbmem_rates, one_to_many) over synthetic region_scores",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "duckdb": _version("duckdb"), "pandas": _version("pandas"), "loadavg": os.getloadavg()},
        "repeat": repeat,
        "results": results,
    }


def _version(module: str) -> str:
    from importlib.metadata import version

    return version(module)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        print(json.dumps(child_query(argv[1], argv[2], int(argv[3]))))
        return None
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pandas-max-rows", type=int, default=10_000_000, help="run the pandas reference up to this size")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    report = bench(args.rows, args.repeat, args.pandas_max_rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
