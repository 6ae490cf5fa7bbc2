"""Size, build time and browser load/filter time of `fbmem report` for 10,000 generations.

Usage: nice -n 10 .venv/bin/python benchmarks/bench_report.py [--prompts 1250] [--seeds 4] [--workspace DIR]

One process, one sample workspace (fbmem_data.testing.sample_workspace: 64x64 planted scenes, drawn scores, top-5,
prompts x seeds x {none, nemo} generations):
- build: the report with thumbnails embedded (one file) and with thumbnails in the folder beside it; the
  baseline is reading the same views without building anything (gather only);
- browser (headless Chromium over DevTools): navigate -> load event, the page's own parse + first render,
  then a label filter, a select filter, a column sort and a page turn, each timed inside the page; the
  baseline is the same steps on a 96-generation report in the same browser.
Writes benchmarks/results/report.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from fbmem_data.report.builder import build_report_summary
from fbmem_data.report.gather import gather
from fbmem_data.testing.browser import HeadlessChromium
from fbmem_data.testing.sample_workspace import SampleSpec, write_sample_workspace
from fbmem_data.workspace import Workspace

RESULTS = Path(__file__).resolve().parent / "results" / "report.json"

# Steps a reader takes, in this order (filters accumulate); each is timed in the page until the next frame.
STEP_JS = {
    "next_card_page": "document.querySelector('#card-pager button:last-child').click()",
    "filter_label_nm_only": (
        "for (const l of ['VM', 'BM', 'FM']) { const c = document.getElementById('filter-label-' + l); "
        "c.checked = false; c.dispatchEvent(new Event('change')); }"
    ),
    "filter_labels_back": (
        "for (const l of ['VM', 'BM', 'FM']) { const c = document.getElementById('filter-label-' + l); "
        "c.checked = true; c.dispatchEvent(new Event('change')); }"
    ),
    "filter_mitigation": (
        "(() => { const s = document.getElementById('filter-mitigation'); s.value = 'nemo'; s.dispatchEvent(new Event('change')); })()"
    ),
    "filter_text": (
        "(() => { const s = document.getElementById('filter-text'); s.value = 'prompt 1'; s.dispatchEvent(new Event('input')); })()"
    ),
    "sort_by_prompt_column": "document.querySelector('#gen-table th[data-key=prompt]').click()",
}


def time_steps(browser: HeadlessChromium, path: Path) -> dict[str, Any]:
    load_s = browser.open(path)
    out: dict[str, Any] = {
        "load_event_s": round(load_s, 3),
        "page_parse_ms": round(browser.evaluate("window.fbmemReport.parseMs"), 1),
        "page_init_ms": round(browser.evaluate("window.fbmemReport.initMs"), 1),
    }
    browser.call("HeapProfiler.collectGarbage", session=True)
    out["js_heap_mb"] = round(browser.call("Runtime.getHeapUsage", session=True)["usedSize"] / 1e6, 1)
    for name, js in STEP_JS.items():
        # Until the next frame is drawn: the handler, style, layout and paint of the new cards and rows.
        timed = (
            f"(async () => {{ const t = performance.now(); {js}; "
            "await new Promise(r => requestAnimationFrame(() => setTimeout(r, 0))); return performance.now() - t; })()"
        )
        out[f"{name}_ms"] = round(browser.evaluate(timed), 1)
    out["count_after_steps"] = browser.evaluate("document.getElementById('match-count').textContent")
    out["console_errors"] = list(browser.errors)
    return out


def median_steps(browser: HeadlessChromium, path: Path, repeat: int) -> dict[str, Any]:
    """time_steps `repeat` times (the machine is shared: single runs are noisy); the median of each figure."""
    runs = [time_steps(browser, path) for _ in range(repeat)]
    out = {k: statistics.median(r[k] for r in runs) if isinstance(v, (int, float)) else v for k, v in runs[-1].items()}
    out["console_errors"] = sorted({e for r in runs for e in r["console_errors"]})
    out["repeats"] = repeat
    return out


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=1250)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--workspace", type=Path, help="reuse (or create) the sample workspace here")
    parser.add_argument("--repeat", type=int, default=3, help="browser runs per report (the median is kept)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (reports, sample workspace)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-report-"))
    try:
        run(args, tmp)
    finally:
        if args.keep:
            print(f"scratch kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)  # ~140 MB of reports and thumbnails per run


def run(args: argparse.Namespace, tmp: Path) -> None:
    ws_dir = args.workspace or tmp / "ws"
    spec = SampleSpec(n_prompts=args.prompts, seeds=args.seeds, k=5)
    fresh = not (ws_dir / "fbmem.json").exists()
    ws = Workspace.open_or_init(ws_dir)
    t = time.perf_counter()
    sample: dict[str, Any] = write_sample_workspace(ws, spec) if fresh else {"reused_workspace": str(ws_dir)}
    sample["write_s"] = round(time.perf_counter() - t, 1) if fresh else None
    small_ws = Workspace.init(tmp / "small")
    write_sample_workspace(small_ws, SampleSpec(n_prompts=24, seeds=2))

    t = time.perf_counter()
    data = gather(ws, k=5)
    gather_s = time.perf_counter() - t
    n = data.n_generations
    builds: dict[str, Any] = {}
    for mode in ("embed", "folder"):
        t = time.perf_counter()
        summary = build_report_summary(ws, tmp / f"report_{mode}.html", k=5, images=mode)
        elapsed = time.perf_counter() - t
        builds[mode] = {
            "build_s": round(elapsed, 2),
            "ratio_to_gather": round(elapsed / gather_s, 1),
            "html_mb": round(summary.html_bytes / 1e6, 2),
            "beside_mb": round(folder_bytes(summary.files_dir) / 1e6, 2),
            "images": summary.images,
            "path": summary.path,
        }
    small = build_report_summary(small_ws, tmp / "small.html", k=5)

    t = time.perf_counter()
    with HeadlessChromium(width=1280, height=1000, timeout=120) as browser:
        start_s = time.perf_counter() - t
        browser_results = {"small_baseline": median_steps(browser, small.path, args.repeat)}
        for mode in ("embed", "folder"):
            browser_results[mode] = median_steps(browser, builds[mode]["path"], args.repeat)
    for b in builds.values():
        b["path"] = str(b["path"])

    result = {
        "benchmark": "report",
        "machine": {"cpu_count": __import__("os").cpu_count(), "platform": platform.platform(), "note": "shared 2-core CPU, other jobs running"},
        "generations": n,
        "small_baseline_generations": small.generations,
        "sample": {**sample, "spec": spec.__dict__ | {"mitigations": list(spec.mitigations)}},
        "gather_s": round(gather_s, 2),
        "build": builds,
        "chromium_start_s": round(start_s, 2),
        "browser": browser_results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
