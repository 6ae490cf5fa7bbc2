"""The worked example runs, cell by cell, against a small demo-like workspace."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

from fbmem_data.testing.sample_workspace import SampleSpec, write_sample_workspace
from fbmem_data.workspace import Workspace

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "analysis.py"


def test_analysis_example_runs(tmp_path: Path, monkeypatch, capsys) -> None:
    ws = Workspace.init(tmp_path / "ws")
    write_sample_workspace(ws, SampleSpec(n_prompts=8, seeds=2, size=32))
    monkeypatch.setenv("FBMEM_WORKSPACE", str(ws.root))
    source = EXAMPLE.read_text()
    assert source.count("# %%") >= 5  # cells, for notebook tools
    namespace = runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert "vm_share" in capsys.readouterr().out
    assert (
        namespace["rates"].height > 0 and namespace["hist"]["generations"].sum() == 16
    )  # 8 prompts x 2 seeds
    assert namespace["evidence"].height == 32
    assert set(namespace["per_method"]["mitigation"]) == {"none", "nemo"}
    assert os.environ["FBMEM_WORKSPACE"] == str(ws.root)
