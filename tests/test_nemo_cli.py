"""`fbmem nemo` / `fbmem nemo-c` commands on the shared reference files (no model needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_nemo_import import NEMO_CSV, STATS_FILE, write_memorized_prompts

from fbmem_data.workspace import Workspace


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
    """In-process (CliRunner): each error is an FbmemError whose message says what is missing."""
    from typer.testing import CliRunner

    from fbmem_data.cli.app import build_app
    from fbmem_data.errors import FbmemError

    app, ws = build_app(), str(workspace.root)
    cases = [
        (["nemo", "import-stats", str(tmp_path / "none.pt"), "-w", ws], "does not exist"),
        (["nemo-c", "masks", "--clustering", "x", "--localization", "y", "-w", ws], "localized"),
        (["nemo", "calibrate", "--prompts", "control", "--model", "m", "-w", ws], "detection"),
        (["nemo", "localize", "--model", "m", "-w", ws, "--algorithm", "greedy", "--prompts", "s"], "batched or sequential"),
    ]
    for args, needle in cases:
        result = CliRunner().invoke(app, args)
        assert isinstance(result.exception, FbmemError), (args, result.output)
        assert needle in str(result.exception)
