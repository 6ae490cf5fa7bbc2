"""`fbmem runs list|show`: what ran, with which settings."""

from __future__ import annotations

import json
import subprocess
import sys

from fbmem_data.runs import RunRecorder
from fbmem_data.workspace import Workspace


def _fbmem(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fbmem_data", *args], capture_output=True, text=True)


def test_runs_list_and_show(workspace: Workspace) -> None:
    first = RunRecorder(workspace, "generate", {"model": "lab", "steps": 50, "seeds": [0, 1]})
    first.start()
    first.finish("ok")
    second = RunRecorder(workspace, "score", {"preset": "paper"})
    second.start()
    second.finish("failed", "boom")
    ws = str(workspace.root)

    listed = _fbmem("runs", "list", "-w", ws, "-f", "json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["run_id"] for r in rows] == [second.run_id, first.run_id]  # newest first
    assert (
        rows[1]["config"] == {"model": "lab", "seeds": [0, 1], "steps": 50} and rows[0]["status"] == "failed"
    )
    only = json.loads(_fbmem("runs", "list", "--command", "generate", "-w", ws, "-f", "json").stdout)
    assert [r["run_id"] for r in only] == [first.run_id]

    shown = _fbmem("runs", "show", first.run_id[:-3], "-w", ws, "-f", "json")
    assert shown.returncode == 0, shown.stderr
    kv = {r["key"]: r["value"] for r in json.loads(shown.stdout)}
    assert kv["command"] == "generate" and kv["config.steps"] == "50" and kv["config.seeds"] == "[0, 1]"
    assert kv["status"] == "ok" and "package_versions.duckdb" in kv

    unknown = _fbmem("runs", "show", "zzz", "-w", ws)
    assert unknown.returncode == 1 and unknown.stderr.startswith("Error: no run with id 'zzz'")
    assert first.run_id in unknown.stderr  # the hint lists the recent ones
    ambiguous = _fbmem("runs", "show", "0", "-w", ws)
    assert ambiguous.returncode == 1 and "2 runs with id '0'" in ambiguous.stderr
