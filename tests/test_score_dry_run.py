"""`fbmem score --dry-run`: the pending work and an estimate, and nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fbmem_data.errors import InputError
from fbmem_data.fbmem.scoring import COST_S_PER_IMAGE_512, COST_S_PER_PAIR_512, score_pairs
from fbmem_data.workspace import Workspace


def _fbmem(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fbmem_data", *args], capture_output=True, text=True)


def _written(ws: Workspace) -> tuple[int, int, int]:
    runs = ws.sql("SELECT count(*) AS n FROM runs WHERE command = 'score'").column("n")[0].as_py()
    return ws.count("region_scores"), ws.count("masks"), runs


def test_score_dry_run_writes_nothing_and_counts_what_is_pending(
    workspace: Workspace, tmp_path: Path
) -> None:
    ws = str(workspace.root)
    rng = np.random.default_rng(0)
    gen_dir = tmp_path / "gen"
    gen_dir.mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(gen_dir / f"g{i}.png")
    for args in (
        ("ingest", "images", str(gen_dir), "--role", "generated"),
        ("ingest", "images", str(gen_dir / "g0.png"), "--role", "train"),
    ):
        assert _fbmem(*args, "-w", ws).returncode == 0
    # no candidates yet: a dry run does not create exhaustive ones
    with pytest.raises(InputError, match="cannot show exhaustive candidates"):
        score_pairs(workspace, create_exhaustive=True, dry_run=True)
    assert workspace.count("candidates") == 0
    assert _fbmem("pair", "--method", "exhaustive", "-w", ws).returncode == 0
    n_pairs = workspace.count("candidates")
    assert n_pairs == 2

    plan = score_pairs(workspace, dry_run=True, size=256)
    assert plan["pending"] == n_pairs and plan["images"] == 2 and plan["images_without_masks"] == 2
    expected = (2 * COST_S_PER_IMAGE_512 + n_pairs * COST_S_PER_PAIR_512) * (256 / 512) ** 2
    assert plan["estimated_cpu_s"] == pytest.approx(expected, abs=0.05) and "ok" not in plan
    assert _written(workspace) == (0, 0, 0)

    seg = _fbmem("segment", "--dry-run", "-w", ws)
    assert seg.returncode == 0 and "pending=2" in seg.stdout and "dry_run=True" in seg.stdout, seg.stderr
    assert _written(workspace) == (0, 0, 0)
    out = _fbmem("score", "--dry-run", "--size", "256", "-w", ws)
    assert out.returncode == 0 and "pending=2" in out.stdout and "estimated_cpu_s=" in out.stdout, out.stderr
    assert _written(workspace) == (0, 0, 0)
    # after a real run nothing is pending under the same settings
    assert _fbmem("score", "--size", "176", "-w", ws).returncode == 0
    assert score_pairs(workspace, dry_run=True, size=176)["pending"] == 0
