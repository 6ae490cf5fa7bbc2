from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fbmem_data.errors import InputError
from fbmem_data.ids import prompt_id
from fbmem_data.ingest.prompts import ingest_prompts, ingest_reference_prompts
from fbmem_data.workspace import Workspace


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fbmem_data", *args], capture_output=True, text=True)


def test_reference_files_give_expected_rows(workspace: Workspace, reference_dir: Path) -> None:
    reports = ingest_reference_prompts(workspace, reference_dir)
    assert [r.written["prompts"] for r in reports] == [500, 500, 500, 10_000]
    counts = workspace.sql(
        "SELECT prompt_set, count(*) AS n, count(DISTINCT prompt_id) AS ids, count(DISTINCT text) AS texts "
        "FROM prompts GROUP BY 1 ORDER BY 1"
    ).to_pylist()
    assert counts == [
        {"prompt_set": "additional", "n": 500, "ids": 500, "texts": 500},
        # COCO repeats 34 captions on distinct rows: they stay distinct prompts.
        {"prompt_set": "coco", "n": 10_000, "ids": 10_000, "texts": 9_966},
        {"prompt_set": "memorized", "n": 500, "ids": 500, "texts": 500},
        {"prompt_set": "unmemorized", "n": 500, "ids": 500, "texts": 500},
    ]
    again = ingest_reference_prompts(workspace, reference_dir)
    assert [r.written["prompts"] for r in again] == [0, 0, 0, 0]
    assert [r.already_stored for r in again] == [500, 500, 500, 10_000]
    assert workspace.count("prompts") == 11_500


def test_memorized_columns_and_quoting(workspace: Workspace, reference_dir: Path) -> None:
    ingest_prompts(workspace, reference_dir / "memorized_laion_prompts.csv", prompt_set="memorized")
    row = workspace.sql("SELECT * FROM prompts WHERE source_key = '3'").to_pylist()[0]
    # The CSV field is """Watch: Passion Pit's New Video, """"Lifted Up (1985)""""""" (doubled quotes).
    assert row["text"] == "\"Watch: Passion Pit's New Video, \"\"Lifted Up (1985)\"\"\""
    assert row["source_index"] == 567947515
    assert row["memorization_type"] == "VM"
    assert row["url"].startswith("http://cdn.pastemagazine.com/")
    assert set(json.loads(row["extra"])) == {"mean_sscd", "max_sscd"}
    assert row["prompt_id"] == prompt_id("memorized", "3", row["text"])
    first = workspace.sql("SELECT source_key, source_index FROM prompts WHERE source_key = '0'").to_pylist()
    assert first == [{"source_key": "0", "source_index": 1030727993}]


def test_cli_memorized_types_and_idempotence(tmp_path: Path, reference_dir: Path) -> None:
    ws = str(tmp_path / "ws")
    assert run_cli("init", ws).returncode == 0
    src = str(reference_dir / "memorized_laion_prompts.csv")
    first = run_cli("ingest", "prompts", src, "--set", "memorized", "-w", ws)
    assert first.returncode == 0, first.stderr
    assert "written: prompts 500" in first.stdout
    query = "select memorization_type, count(*) as n from prompts where prompt_set='memorized' group by 1 order by 1"
    out = run_cli("sql", query, "-w", ws, "-f", "csv")
    assert out.stdout.splitlines() == ['"memorization_type","n"', '"TM",388', '"VM",112']
    second = run_cli("ingest", "prompts", src, "--set", "memorized", "-w", ws)
    assert second.returncode == 0 and "nothing new" not in second.stdout
    assert "written: prompts 0" in second.stdout and "already stored 500" in second.stdout
    assert run_cli("sql", "select count(*) as n from prompts", "-w", ws, "-f", "csv").stdout.splitlines()[1] == "500"


def test_jsonl_is_the_memorized_csv_in_order(workspace: Workspace, reference_dir: Path) -> None:
    ingest_prompts(workspace, reference_dir / "memorized_laion_prompts.csv", prompt_set="memorized")
    report = ingest_prompts(workspace, reference_dir / "sdv1_500_memorized.jsonl", prompt_set="wen")
    assert report.written["prompts"] == 500
    rows = workspace.sql(
        "SELECT c.text AS csv_text, j.text AS json_text, c.source_index AS ci, j.source_index AS ji "
        "FROM prompts c JOIN prompts j USING (source_key) "
        "WHERE c.prompt_set = 'memorized' AND j.prompt_set = 'wen' ORDER BY source_key::INT"
    ).to_pylist()
    assert len(rows) == 500
    assert all(r["csv_text"] == r["json_text"] and r["ci"] == r["ji"] for r in rows)
    # Row order is the id: the JSONL into the same set is the very same 500 prompts.
    same = ingest_prompts(workspace, reference_dir / "sdv1_500_memorized.jsonl", prompt_set="memorized")
    assert same.written["prompts"] == 0 and same.already_stored == 500


def test_plain_csv_parquet_and_columns(workspace: Workspace, tmp_path: Path) -> None:
    plain = tmp_path / "mine.csv"
    plain.write_text('id,text,score\na,"a cat, sitting",1\nb,a dog,2\n', encoding="utf-8")
    report = ingest_prompts(workspace, plain)
    assert report.prompt_set == "mine" and report.written["prompts"] == 2
    row = workspace.sql("SELECT * FROM prompts WHERE source_key = 'a'").to_pylist()[0]
    assert row["text"] == "a cat, sitting" and json.loads(row["extra"]) == {"score": "1"}

    table = pa.table({"prompt": ["x", "y", "x"], "k": [10, 11, 12], "index": [5, None, 7]})
    pq.write_table(table, tmp_path / "p.parquet")
    report = ingest_prompts(workspace, tmp_path / "p.parquet", prompt_set="pq")
    assert report.written["prompts"] == 3
    keys = workspace.sql("SELECT source_key, source_index FROM prompts WHERE prompt_set='pq' ORDER BY 1").to_pylist()
    assert keys == [{"source_key": "0", "source_index": 5}, {"source_key": "1", "source_index": None},
                    {"source_key": "2", "source_index": 7}]

    custom = tmp_path / "custom.tsv"
    custom.write_text("key\tdescription\nk1\tfirst\nk2\tsecond\n", encoding="utf-8")
    ingest_prompts(workspace, custom, text_column="description", id_column="key")
    got = workspace.sql("SELECT source_key, text FROM prompts WHERE prompt_set='custom' ORDER BY 1").to_pylist()
    assert got == [{"source_key": "k1", "text": "first"}, {"source_key": "k2", "text": "second"}]


def _write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("name", "content", "kwargs", "expected"),
    [
        ("bad.jsonl", '{"caption": "a"}\n{"caption": "b"\n', {}, r"bad\.jsonl, line 2: invalid JSON"),
        ("nocap.csv", "id;title\n1;x\n", {}, r"nocap\.csv: no caption column: the file has columns \['id', 'title'\]"),
        ("empty_cap.csv", ";Caption;URL\n0;a cat;u\n1;  ;u\n", {}, r"empty_cap\.csv, line 3: empty caption in column 'Caption'"),
        ("x.csv", "caption\na\n", {"fmt": "xml"}, r"unknown prompt file format 'xml'"),
        ("notes.docx", "caption\na\n", {}, r"cannot tell the format of .*notes\.docx"),
        ("dups.csv", ";Caption\n0;a\n1;b\n0;c\n1;d\n2;e\n", {},
         r"dups\.csv: 2 duplicated id\(s\) in column '': '0' at line 2, line 4; '1' at line 3, line 5"),
        ("garbage.csv", b"\x89\x00\xff\xfe\x00\x01binary\x00", {}, r"garbage\.csv: binary data \(NUL bytes\)"),
        ("latin.csv", "caption\ncaf\xe9\n".encode("latin-1"), {}, r"latin\.csv, line 2: not UTF-8 text"),
        ("fields.csv", ";Caption;URL\n0;a;u\n1;b\n", {}, r"fields\.csv, line 3: 2 field\(s\) but the header has 3"),
        ("idx.csv", ";Caption;Index\n0;a;12\n1;b;twelve\n", {}, r"idx\.csv, line 3: LAION index 'twelve'"),
        ("header.csv", ";Caption\n", {}, r"header\.csv: no prompt rows"),
        ("arr.jsonl", '{"caption": "a"}\n[1, 2]\n', {}, r"arr\.jsonl, line 2: expected a JSON object"),
        ("nocol.csv", "caption\na\n", {"text_column": "body"}, r"no column 'body' \(--text-column\)"),
    ],
)
def test_malformed_files_name_file_line_and_problem(
    workspace: Workspace, tmp_path: Path, name: str, content: str | bytes, kwargs: dict, expected: str
) -> None:
    path = _write(tmp_path / name, content)
    with pytest.raises(InputError, match=expected):
        ingest_prompts(workspace, path, **kwargs)
    assert workspace.count("prompts") == 0


def test_missing_file_and_cli_exit_code(workspace: Workspace, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"prompt file .*nowhere\.csv does not exist"):
        ingest_prompts(workspace, tmp_path / "nowhere.csv")
    out = run_cli("ingest", "prompts", str(tmp_path / "nowhere.csv"), "-w", str(workspace.root))
    assert out.returncode == 1 and "does not exist" in out.stderr
