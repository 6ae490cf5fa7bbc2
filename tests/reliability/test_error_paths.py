"""Bad files end in one `Error:` line with a hint, never a traceback (case 7 of docs/reliability.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fbmem_data.workspace import Workspace

from .conftest import CliResult, run_cli


def assert_one_error_line(out: CliResult, *needles: str) -> None:
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    assert len([line for line in out.stderr.splitlines() if line.startswith("Error:")]) == 1, out.stderr
    assert "hint:" in out.stderr
    for needle in needles:
        assert needle in out.stderr, out.stderr


def test_random_or_truncated_stats_file_is_an_error(workspace: Workspace, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    random_file = tmp_path / "random.pt"
    random_file.write_bytes(os.urandom(4096))
    good = tmp_path / "good.pt"
    torch.save(([torch.ones(4)], [torch.ones(4)]), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    not_a_pair = tmp_path / "int.pt"
    torch.save(7, not_a_pair)
    for path in (random_file, truncated, not_a_pair):
        out = run_cli("nemo", "import-stats", str(path), "-w", str(workspace.root))
        assert_one_error_line(out, str(path))
    assert workspace.count("neuron_stats") == 0


def test_unbalanced_csv_quote_is_an_error_naming_the_line(workspace: Workspace, tmp_path: Path) -> None:
    merged = tmp_path / "prompts.csv"
    # Line 3 opens a quote that never closes: the lenient reader swallowed lines 4-5 into it.
    merged.write_text(';caption\n0;"a fine prompt"\n1;"a broken prompt\n2;the next prompt\n3;and another\n')
    out = run_cli("ingest", "prompts", str(merged), "-w", str(workspace.root))
    assert_one_error_line(out, "line 3", "quote")
    stray = tmp_path / "stray.csv"
    stray.write_text(';caption\n0;"he said "hi" twice"\n1;ok\n')
    assert_one_error_line(run_cli("ingest", "prompts", str(stray), "-w", str(workspace.root)), "line 2")
    assert workspace.count("prompts") == 0

    fine = tmp_path / "fine.csv"  # quoted newlines and doubled quotes are still read exactly
    fine.write_text(';caption\n0;"two\nlines"\n1;"a ""quoted"" word"\n')
    out = run_cli("ingest", "prompts", str(fine), "-w", str(workspace.root))
    assert out.returncode == 0, out.stderr
    texts = sorted(workspace.sql("SELECT text FROM prompts").column("text").to_pylist())
    assert texts == ['a "quoted" word', "two\nlines"]
