from __future__ import annotations

import datetime as dt
import subprocess
import sys

import duckdb
import polars as pl
import pyarrow as pa
import pytest

from fbmem_data.errors import QueryError, SchemaError, WorkspaceError
from fbmem_data.schemas import all_schemas, get_schema
from fbmem_data.workspace import Workspace


def _prompt(pid: str = "p1", **kw: object) -> dict[str, object]:
    row = {"prompt_id": pid, "prompt_set": "s", "text": "a cat", "source_key": "0"}
    row.update(kw)
    return row


def test_init_creates_layout_and_empty_tables(workspace: Workspace) -> None:
    for name in all_schemas():
        assert workspace.count(name) == 0
        assert workspace.parts(name), f"{name} has no empty part"
    assert workspace.catalog_path.exists()


def test_open_rejects_non_workspace(tmp_path) -> None:
    with pytest.raises(WorkspaceError, match="not an fbmem workspace"):
        Workspace.open(tmp_path)
    (tmp_path / "x").write_text("1")
    with pytest.raises(WorkspaceError, match="non-empty directory"):
        Workspace.init(tmp_path)


def test_write_skips_stored_keys(workspace: Workspace) -> None:
    assert workspace.write("prompts", [_prompt("p1"), _prompt("p2")]) == 2
    assert workspace.write("prompts", [_prompt("p1"), _prompt("p3")]) == 1
    assert workspace.count("prompts") == 3
    with pytest.raises(SchemaError, match="repeat a stored primary key"):
        workspace.write("prompts", [_prompt("p1")], on_conflict="error")


def test_write_checks_schema(workspace: Workspace) -> None:
    with pytest.raises(SchemaError, match="missing required column"):
        workspace.write("prompts", [{"prompt_id": "x"}])
    with pytest.raises(SchemaError, match="not in"):
        workspace.write("prompts", [_prompt(memorization_type="XX")])
    with pytest.raises(SchemaError, match="not valid JSON"):
        workspace.write("prompts", [_prompt(extra="{bad")])
    with pytest.raises(SchemaError, match="repeat the primary key"):
        workspace.write("prompts", [_prompt("a"), _prompt("a")])
    with pytest.raises(SchemaError, match="unknown column"):
        workspace.write("prompts", [_prompt(colour="red")])
    assert workspace.count("prompts") == 0


def test_parts_carry_schema_version(workspace: Workspace) -> None:
    import pyarrow.parquet as pq

    workspace.write("prompts", [_prompt()])
    meta = pq.read_schema(workspace.parts("prompts")[-1]).metadata
    assert meta[b"fbmem.schema_version"] == str(get_schema("prompts").version).encode()


def test_sql_params_polars_and_duckdb_catalog(workspace: Workspace) -> None:
    workspace.write("prompts", [_prompt("p1"), _prompt("p2", text="a dog")])
    out = workspace.sql("SELECT count(*) AS n FROM prompts WHERE text = $t", {"t": "a dog"})
    assert out.column("n").to_pylist() == [1]
    assert isinstance(workspace.sql("SELECT 1 AS x", output="polars"), pl.DataFrame)
    assert workspace.table("prompts").select(pl.len()).collect().item() == 2
    # the catalog file works without fbmem: plain duckdb sees the views over the parts
    con = duckdb.connect(str(workspace.catalog_path), read_only=True)
    assert con.sql("SELECT count(*) FROM prompts").fetchall() == [(2,)]
    con.close()
    with pytest.raises(QueryError, match="no value"):
        workspace.sql("SELECT $missing")


def test_runs_rewritten_in_place(workspace: Workspace) -> None:
    with workspace.run("demo", {"k": 1}) as run:
        mid = workspace.sql("SELECT status FROM runs WHERE run_id = $r", {"r": run.run_id})
        assert mid.column("status").to_pylist() == ["running"]
    end = workspace.sql("SELECT status, ended_at FROM runs")
    assert end.column("status").to_pylist() == ["ok"]
    assert isinstance(end.column("ended_at")[0].as_py(), dt.datetime)
    with pytest.raises(RuntimeError), workspace.run("boom", {}):
        raise RuntimeError("x")
    assert sorted(workspace.sql("SELECT status FROM runs").column("status").to_pylist()) == ["failed", "ok"]


def test_same_bytes_in_two_roles(workspace: Workspace) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    row = {"image_id": "ab" * 32, "status": "ok", "ingested_at": now}
    workspace.write("images", [{**row, "role": "train"}, {**row, "role": "generated"}])
    assert workspace.count("images") == 2


def test_store_image_is_content_addressed(workspace: Workspace) -> None:
    iid, path = workspace.store_image(b"bytes", "PNG")
    iid2, path2 = workspace.store_image(b"bytes", "png")
    assert iid == iid2 and path == path2 and path.read_bytes() == b"bytes"
    assert path.parent.name == iid[:2]
    assert workspace.image_path(iid) == path


def test_every_view_compiles_on_empty_workspace(workspace: Workspace) -> None:
    import re

    from fbmem_data.resources import sql_dir

    views = workspace.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal").column("view_name").to_pylist()
    declared = {m for f in sql_dir().glob("*.sql") for m in re.findall(r"CREATE OR REPLACE VIEW (\w+)", f.read_text())}
    # every view of sql/ is defined (a vacuous loop over no views would pass otherwise), the lab's included
    assert {"fbmem_labels", "lab_confusion", "fbmem_rates_by_group", "mitigation_utility_by_group"} <= declared
    assert declared <= set(views), declared - set(views)
    for name in views:
        workspace.sql(f"SELECT * FROM {name} LIMIT 0")


def test_conform_casts_and_orders() -> None:
    schema = get_schema("prompts")
    t = pa.table({"text": ["t"], "prompt_id": ["p"], "prompt_set": ["s"], "source_key": ["0"], "source_index": [5]})
    out = schema.conform(t)
    assert out.column_names == schema.column_names
    assert out.schema.field("source_index").type == pa.int64()


def test_sql_command_does_not_import_torch(tmp_path) -> None:
    Workspace.init(tmp_path / "ws")
    code = (
        "import sys\n"
        "from fbmem_data.cli.app import main\n"
        "try:\n"
        f"    main(['sql', 'select 1', '-w', {str(tmp_path / 'ws')!r}])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'cv2', 'sklearn') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def _write_prompts_repeatedly(root: str, start: int, rounds: int) -> None:
    ws = Workspace.open(root)
    for r in range(rounds):
        # overlapping key ranges: every key is offered by both processes
        ws.write("prompts", [_prompt(f"p{(start + r + i) % 40}") for i in range(10)])


def test_concurrent_writers_never_store_a_key_twice(workspace: Workspace) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write_prompts_repeatedly, args=(str(workspace.root), start, 30)) for start in (0, 5)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    counts = workspace.sql("SELECT prompt_id, count(*) AS n FROM prompts GROUP BY 1").to_pylist()
    assert counts and all(r["n"] == 1 for r in counts)
    expected = {f"p{(start + r + i) % 40}" for start in (0, 5) for r in range(30) for i in range(10)}
    assert {r["prompt_id"] for r in counts} == expected
