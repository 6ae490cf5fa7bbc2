from __future__ import annotations

import json
import subprocess
import sys

from fbmem_data.workspace import Workspace


def run_cli(*args: str, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fbmem_data", *args], capture_output=True, text=True, input=input_text
    )


def test_init_sql_formats_and_errors(tmp_path) -> None:
    ws_dir = str(tmp_path / "ws")
    assert run_cli("init", ws_dir).returncode == 0
    out = run_cli("sql", "select 1 as a, 'x' as b", "-w", ws_dir, "-f", "json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"a": 1, "b": "x"}]
    out = run_cli("sql", "-", "-w", ws_dir, "-f", "csv", input_text="select $n::INT + 1 as v")
    assert out.returncode == 1 and "no value" in out.stderr
    out = run_cli("query", "select $n::INT + 1 as v", "-w", ws_dir, "-f", "csv", "-p", "n", "41")
    assert out.stdout.splitlines() == ['"v"', "42"]
    bad = run_cli("sql", "select * from nowhere", "-w", ws_dir)
    assert bad.returncode == 1 and "nowhere" in bad.stderr
    missing = run_cli("sql", "select 1", "-w", str(tmp_path / "none"))
    assert missing.returncode == 1 and "fbmem init" in missing.stderr


def test_parquet_output_needs_file(tmp_path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    out = run_cli("sql", "select 1 as a", "-w", str(ws.root), "-f", "parquet")
    assert out.returncode == 1 and "--output" in out.stderr
    target = tmp_path / "o.parquet"
    assert run_cli("sql", "select 1 as a", "-w", str(ws.root), "-f", "parquet", "-o", str(target)).returncode == 0
    import pyarrow.parquet as pq

    assert pq.read_table(target).to_pylist() == [{"a": 1}]
