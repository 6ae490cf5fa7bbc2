"""`fbmem nemo` / `fbmem nemo-c` commands on the shared reference files (no model needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fbmem_data.workspace import Workspace
from test_nemo_import import NEMO_CSV, STATS_FILE, write_memorized_prompts


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fbmem_data", *args], capture_output=True, text=True)


def test_import_commands(workspace: Workspace, reference_dir: Path) -> None:
    ws = str(workspace.root)
    out = run_cli("nemo", "import-stats", str(reference_dir / STATS_FILE), "-w", ws, "-f", "json")
    assert out.returncode == 0, out.stderr
    assert [r["width"] for r in json.loads(out.stdout)] == [320, 320, 640, 640, 1280, 1280, 1280]
    write_memorized_prompts(workspace, reference_dir)
    out = run_cli("nemo", "import", str(reference_dir / NEMO_CSV), "-w", ws, "-f", "json")
    assert out.returncode == 0, out.stderr
    refined = {r["memorization_type"]: r for r in json.loads(out.stdout) if r["stage"] == "refined"}
    assert refined["VM"]["median_neurons"] == 3 and refined["TM"]["max_neurons"] == 196
    runs = workspace.sql("SELECT command, status FROM runs ORDER BY started_at").to_pylist()
    assert [(r["command"], r["status"]) for r in runs] == [("nemo import-stats", "ok"), ("nemo import", "ok")]


def test_errors_are_clear(workspace: Workspace, tmp_path: Path) -> None:
    ws = str(workspace.root)
    out = run_cli("nemo", "import-stats", str(tmp_path / "none.pt"), "-w", ws)
    assert out.returncode == 1 and "does not exist" in out.stderr
    out = run_cli("nemo-c", "masks", "--clustering", "x", "--localization", "y", "-w", ws)
    assert out.returncode == 1 and "localized" in out.stderr
    out = run_cli("nemo", "calibrate", "--prompts", "control", "--model", "m", "-w", ws)
    assert out.returncode == 1 and "detection" in out.stderr
