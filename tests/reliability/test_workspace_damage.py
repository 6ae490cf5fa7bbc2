"""Damaged workspaces (case 6 of docs/reliability.md): truncated, misplaced and foreign parts, a
removed or invalid fbmem.json. Each ends in one `Error:` line naming the problem and the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fbmem_data.check import check_workspace
from fbmem_data.errors import WorkspaceError
from fbmem_data.workspace import EMPTY_PART, Workspace

from .conftest import CliResult, run_cli


def fbmem(*args: str) -> CliResult:
    return run_cli(*args)


def assert_one_error_line(out: CliResult, *needles: str) -> None:
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, out.stderr
    assert "hint:" in out.stderr
    for needle in needles:
        assert needle in out.stderr, out.stderr


def sql_count(root: Path | str, table: str) -> int:
    out = fbmem("sql", "-w", str(root), f"SELECT count(*) AS n FROM {table}", "-f", "json")
    assert out.returncode == 0, out.stderr
    return int(json.loads(out.stdout)[0]["n"])


def _prompts(ws: Workspace, n: int, start: int = 0) -> None:
    ws.write(
        "prompts",
        [
            {"prompt_id": f"p{i}", "prompt_set": "s", "text": f"t{i}", "source_key": str(i)}
            for i in range(start, start + n)
        ],
    )


def _image_row(ws: Workspace, image_id: str) -> None:
    import datetime as dt

    store = ws.images_dir / image_id[:2] / f"{image_id}.png"
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_bytes(b"not checked here")
    ws.write(
        "images",
        [
            {
                "image_id": image_id,
                "role": "train",
                "store_path": store.relative_to(ws.root).as_posix(),
                "status": "ok",
                "ingested_at": dt.datetime.now(dt.timezone.utc),
            }
        ],
    )


def _data_parts(ws: Workspace, table: str) -> list[Path]:
    return [p for p in ws.parts(table) if p.name != EMPTY_PART]


def test_truncated_part_is_named_and_quarantined_by_check(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    _prompts(ws, 3)
    _prompts(ws, 2, start=3)
    bad = _data_parts(ws, "prompts")[0]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # a killed copy
    ws.close()

    out = fbmem("sql", "-w", str(ws.root), "SELECT count(*) FROM prompts")
    assert_one_error_line(out, f"tables/prompts/{bad.name}", "fbmem check")
    assert "LINE 1" not in out.stderr  # DuckDB's multi-line report is cut to its first line

    out = fbmem("check", "-w", str(ws.root))
    assert_one_error_line(out, "1 bad or stray file(s)", "--repair")
    assert "unreadable" in out.stdout and bad.name in out.stdout

    out = fbmem("check", "-w", str(ws.root), "--repair", "-f", "csv")
    assert out.returncode == 0, out.stderr
    assert not bad.exists() and len(list((ws.root / "quarantine").rglob(bad.name))) == 1
    assert sql_count(ws.root, "prompts") == 2


def test_misplaced_and_foreign_parts_are_refused_not_counted(workspace: Workspace) -> None:
    _prompts(workspace, 4)
    workspace.write("train_links", [{"image_id": "a" * 64, "prompt_id": "p0", "relation": "url"}])
    _image_row(workspace, "a" * 64)
    # A prompts part copied into images, and a Parquet file fbmem did not write: both used to be
    # unioned into the table (wrong counts, columns of nulls).
    shutil.copy(_data_parts(workspace, "prompts")[0], workspace.table_dir("images") / "part-copied.parquet")
    pq.write_table(
        pa.table({"url": ["x"], "n": [1]}), workspace.table_dir("train_links") / "part-foreign.parquet"
    )
    workspace.close()
    with pytest.raises(
        WorkspaceError, match=r"tables/images/part-copied.parquet holds rows of table 'prompts'"
    ):
        workspace.count("images")
    workspace.close()

    report = check_workspace(workspace)
    found = {(p.table, Path(p.path).name): p.problem for p in report.problems}
    assert found == {
        ("images", "part-copied.parquet"): "misplaced",
        ("train_links", "part-foreign.parquet"): "schema",
    }
    assert report.rows["prompts"] == 4 and report.rows["train_links"] == 1 and report.rows["images"] == 1

    report = check_workspace(workspace, repair=True)
    assert report.ok and all(p.moved_to for p in report.problems)
    assert workspace.count("images") == 1 and workspace.count("train_links") == 1
    assert check_workspace(workspace).problems == []


def test_deleted_part_leaves_dangling_rows_that_check_reports(workspace: Workspace) -> None:
    _prompts(workspace, 1)
    workspace.write("train_links", [{"image_id": "b" * 64, "prompt_id": "p0", "relation": "url"}])
    _image_row(workspace, "b" * 64)
    assert check_workspace(workspace).problems == []
    _data_parts(workspace, "images")[0].unlink()  # a deleted part: its rows silently gone
    workspace.close()
    out = fbmem("check", "-w", str(workspace.root))
    assert_one_error_line(out, "dangling")
    assert "train_links" in out.stdout and "1 row(s) name images with no images row" in out.stdout


def test_removed_or_invalid_marker_is_repaired_by_init_repair(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    _prompts(ws, 2)
    root = str(ws.root)
    ws.close()
    (ws.root / "fbmem.json").unlink()
    out = fbmem("sql", "-w", root, "SELECT 1")
    assert_one_error_line(out, "fbmem init --repair")
    out = fbmem("init", root)  # used to say: non-empty directory, choose another
    assert_one_error_line(out, "fbmem init --repair")

    (ws.root / "fbmem.json").write_text("[1]")  # valid JSON, not a marker: was a traceback
    out = fbmem("tables", "-w", root)
    assert_one_error_line(out, "fbmem.json is damaged", "fbmem init --repair")

    out = fbmem("init", "--repair", root)
    assert out.returncode == 0, out.stderr
    assert json.loads((ws.root / "fbmem.json").read_text())["format"] == 1
    assert [p.read_text() for p in ws.root.glob("fbmem.json.damaged-*")] == ["[1]"]  # kept, not lost
    assert sql_count(root, "prompts") == 2

    stranger = tmp_path / "photos"
    stranger.mkdir()
    (stranger / "cat.jpg").write_bytes(b"x")
    assert_one_error_line(fbmem("init", "--repair", str(stranger)), "not an fbmem workspace")
