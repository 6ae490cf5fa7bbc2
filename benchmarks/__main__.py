"""Run every fbmem benchmark stage and write one JSON file and one markdown table of the figures.

    python -m benchmarks [--quick] [--only NAME ...] [--device cpu|cuda] [--suite cpu|gpu] [--tag TAG]
                         [--results-dir DIR]

Each stage (benchmarks/stages.py) runs in a child process with the sizes chosen for this entry point
(`--quick`: the smallest, for the smoke test). Writes RESULTS_DIR/benchmarks-<device>[-<tag>][-quick].json
(machine, versions, date, every stage's raw JSON and every figure with its baseline from the same run)
and the same name .md. A failing stage is recorded and the others still run; the exit status is 1 then.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from benchmarks.stages import STAGES, Figure, Stage, stages_for

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
PACKAGES = ("torch", "diffusers", "transformers", "torchmetrics", "duckdb", "polars", "pyarrow", "pandas", "numpy",
            "usearch", "scikit-learn", "ray")


def machine_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(), "memory_gib": _memory_gib(), "device": device,
    }
    if device != "cpu":
        code = "import torch; p = torch.cuda.get_device_properties(0); print(p.name, '|', round(p.total_memory / 2**30, 1))"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        name, _, mem = done.stdout.strip().partition(" | ")
        info["device_name"], info["device_memory_gib"] = name or done.stderr.strip()[-300:], mem
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _memory_gib() -> float | None:
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        return round(kb / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return None


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    done = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=REPO)
    return done.stdout.strip() or None


def run_stage(stage: Stage, mode: str, device: str, workdir: Path, timeout: float) -> dict[str, Any]:
    """Run one stage in a child process; returns its record (status, seconds, raw result, figures)."""
    args = stage.args(mode, device)
    record: dict[str, Any] = {"name": stage.name, "title": stage.title, "module": stage.module, "args": args}
    if args is None:
        return {**record, "status": "skipped", "reason": f"not run on {device}"}
    if importlib.util.find_spec(stage.module) is None:
        return {**record, "status": f"skipped: {stage.module} is not in this checkout"}
    how, name = stage.output
    out_dir = workdir / stage.name
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir if how == "dir" else out_dir / f"{stage.name}.json"
    cmd = [sys.executable, "-c", "from benchmarks.stages import run_child; run_child()",
           stage.module, stage.entry, how, name, str(out_path), device, *args]
    env = {**os.environ, "FBMEM_BENCH_DEVICE": device, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    print(f"== {stage.name}: {stage.module} {' '.join(args)}", flush=True)
    start = time.perf_counter()
    log = out_dir / "log.txt"
    try:
        with log.open("w") as fh:
            done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env, timeout=timeout)
        status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
    except subprocess.TimeoutExpired:
        status = f"failed (over {timeout:.0f} s)"
    record["seconds"] = round(time.perf_counter() - start, 1)
    record["status"] = status
    tail = log.read_text(errors="replace").splitlines()[-15:]
    found = sorted(out_dir.glob("*.json")) if how == "dir" else [out_path] if out_path.exists() else []
    if status != "ok" or not found:
        record["status"] = status if status != "ok" else "failed (no JSON written)"
        record["log_tail"] = tail
        print("\n".join(tail), flush=True)
        return record
    record["result"] = json.loads(found[0].read_text())
    try:
        record["figures"] = [asdict(f) for f in stage.summarise(record["result"], device)]
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:  # a stage's JSON changed shape
        record["status"] = f"ok, figures unreadable: {type(exc).__name__}: {exc}"
        record["figures"] = []
    print(f"   {record['status']} in {record['seconds']} s, {len(record['figures'])} figures", flush=True)
    return record


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    else:
        text = str(value)
    return f"{text} {unit}".strip()


def markdown(report: dict[str, Any]) -> str:
    m, lines = report["machine"], []
    partial = "" if report.get("complete", True) else " (INCOMPLETE: the run stopped or is still running)"
    lines.append(f"# fbmem benchmarks: {report['device']}{' (quick sizes)' if report['quick'] else ''}{partial}\n")
    lines.append(f"- date: {report['date']} (total {report['total_seconds']} s); commit {report['commit']}")
    lines.append(f"- machine: {m['cpu_model']}, {m['cpus']} CPUs, {m['memory_gib']} GiB, {m['platform']}; Python {m['python']}")
    if m.get("device_name"):
        lines.append(f"- device: {m['device_name']} ({m.get('device_memory_gib')} GiB)")
    lines.append(f"- load average before / after: {report['loadavg_before']} / {report['loadavg_after']}")
    lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v))
    lines.append("\nEvery ratio compares two measurements of the same run on the same data; > 1 favours fbmem "
                 "unless the column says otherwise.\n")
    lines.append("| Stage | Figure | fbmem | Baseline (same run) | Baseline | Ratio | Target | Met | Note |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for stage in report["stages"]:
        if stage["status"] != "ok" and not stage.get("figures"):
            lines.append(f"| {stage['name']} | {stage['title']} | {stage['status']} | | | | | | |")
            continue
        for f in stage.get("figures", []):
            met = "-" if f["met"] is None else ("yes" if f["met"] else "**no**")
            ratio = "-" if f["ratio"] is None else f"{f['ratio']:g} {f['ratio_label']}"
            lines.append(
                f"| {f['stage']} | {f['name']} | {_fmt(f['value'], f['unit'])} | {f['baseline']} | "
                f"{_fmt(f['baseline_value'], f['unit'])} | {ratio} | {f['target'] or '-'} | {met} | {f['note']} |"
            )
    lines.append("\n| Stage | Status | Seconds | Arguments |\n|---|---|---|---|")
    for stage in report["stages"]:
        args = " ".join(stage["args"]) if stage.get("args") is not None else "-"
        lines.append(f"| {stage['name']} | {stage['status']} | {stage.get('seconds', '-')} | `{args}` |")
    return "\n".join(lines) + "\n"


def result_stem(device: str, tag: str | None, quick: bool) -> str:
    return "-".join(["benchmarks", device, *([tag] if tag else []), *(["quick"] if quick else [])])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smallest sizes (smoke test)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"stages to run (default all: {', '.join(STAGES)})")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--suite", choices=["cpu", "gpu"], help="which stage set (default: cpu on cpu, gpu on cuda)")
    parser.add_argument("--tag", help="added to the result file names (e.g. the GPU model)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--stage-timeout", type=float, default=900.0, help="seconds before a stage is stopped")
    args = parser.parse_args(argv)
    suite = args.suite or ("cpu" if args.device == "cpu" else "gpu")
    stages = stages_for("cpu" if suite == "cpu" else "cuda")
    unknown = sorted(set(args.only or []) - set(stages))
    if unknown:
        parser.error(f"unknown stage(s) {unknown}; known: {', '.join(stages)}")
    chosen = [s for name, s in stages.items() if not args.only or name in args.only]
    mode = "quick" if args.quick else "full"

    started = time.perf_counter()
    report: dict[str, Any] = {
        "device": args.device, "suite": suite, "quick": args.quick,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": git_commit(),
        "machine": machine_info(args.device), "versions": versions(), "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "stages": [],
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stem = result_stem(args.device, args.tag, args.quick)
    json_path, md_path = args.results_dir / f"{stem}.json", args.results_dir / f"{stem}.md"
    with tempfile.TemporaryDirectory(prefix="fbmem-bench-") as tmp:
        for i, stage in enumerate(chosen):
            report["stages"].append(run_stage(stage, mode, args.device, Path(tmp), args.stage_timeout))
            # written after every stage, so an interrupted run keeps what it measured
            report["complete"] = i == len(chosen) - 1
            report["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
            report["total_seconds"] = round(time.perf_counter() - started, 1)
            report["figures"] = [f for s in report["stages"] for f in s.get("figures", [])]
            json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
            md_path.write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {json_path} and {md_path} in {report['total_seconds']} s")
    failed = [s["name"] for s in report["stages"] if not s["status"].startswith(("ok", "skipped"))]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Figure", "main", "markdown"]
