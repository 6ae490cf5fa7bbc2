"""Outputs a user can trust: matched comparisons, parameters that keep their type, the configuration named,
generation ids that cover every setting, output formats for every column type, a catalog that follows its
workspace. Each test failed before the behaviour it checks was built."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fbmem_data.errors import InputError, QueryError, WorkspaceError
from fbmem_data.fbmem import labels
from fbmem_data.generate.planning import generation_id, plan_jobs
from fbmem_data.testing.sample_workspace import SampleSpec, write_sample_workspace
from fbmem_data.workspace import EMPTY_PART, CatalogWarning, Workspace

DIGITS = "2572104171727124"  # a prompt id of digits only (19 of the reference prompt ids are)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """`fbmem ARGS` in this process (through main: the -p NAME VALUE rewrite and the error mapping)."""
    from fbmem_data.cli.app import main

    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


def _prompts(ws: Workspace) -> None:
    ws.write(
        "prompts",
        [
            {"prompt_id": DIGITS, "prompt_set": "s", "text": "digits", "source_key": "1"},
            {"prompt_id": "0012", "prompt_set": "s", "text": "leading zeros", "source_key": "2"},
        ],
    )


# -- parameters keep their type -------------------------------------------------------------------------
def test_parameter_values_keep_their_type(workspace: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    _prompts(workspace)
    q = "SELECT text FROM prompts WHERE prompt_id = $p"
    assert workspace.sql(q, {"p": DIGITS}).column("text").to_pylist() == ["digits"]
    assert workspace.sql(q, {"p": "0012"}).column("text").to_pylist() == ["leading zeros"]
    out = run_cli(capsys, "sql", q, "-w", str(workspace.root), "-p", "p", DIGITS, "-f", "csv")
    assert out.returncode == 0 and out.stdout.splitlines()[1:] == ['"digits"'], out
    # A model id that reads as a number: the resume lookup of generate finds its rows.
    from fbmem_data.generate.generator import stored_generation_ids

    workspace.write(
        "generations",
        [
            {
                "generation_id": "g1",
                "image_id": "i",
                "prompt_id": DIGITS,
                "model_id": "1.4",
                "mitigation": "none",
            }
        ],
    )
    assert stored_generation_ids(workspace, "1.4") == {"g1"}
    # numbers the views need are cast there
    assert (
        run_cli(
            capsys, "sql", "SELECT $n::INT + 1 AS v", "-w", str(workspace.root), "-p", "n", "41", "-f", "csv"
        ).stdout.splitlines()[1]
        == "42"
    )


def test_parameter_names_are_identifiers_in_the_library(workspace: Workspace) -> None:
    with pytest.raises(QueryError, match="not an identifier"):
        workspace.sql("SELECT 1", {"tau = 0.5; CREATE TABLE pwned AS SELECT 1; SET VARIABLE x": 1})
    assert (
        workspace.sql("SELECT count(*) AS n FROM duckdb_tables() WHERE table_name = 'pwned'")
        .column("n")[0]
        .as_py()
        == 0
    )


@pytest.mark.parametrize(
    ("value", "message"), [("abc", "must be a number"), ("1.5", r"\[0, 1\]"), ("nan", "must be a number")]
)
def test_unusable_tau_is_an_error(
    workspace: Workspace, capsys: pytest.CaptureFixture[str], value: str, message: str
) -> None:
    out = run_cli(capsys, "sql", "SELECT * FROM fbmem_rates", "-w", str(workspace.root), "-p", "tau", value)
    assert out.returncode == 1 and out.stderr.startswith("Error:") and "Traceback" not in out.stderr
    with pytest.raises(QueryError, match=message):
        labels(workspace, tau=float(value) if value != "abc" else value)  # type: ignore[arg-type]
    out = run_cli(capsys, "labels", "-w", str(workspace.root), "--tau", "1.5")
    assert out.returncode == 1 and "[0, 1]" in out.stderr
    with pytest.raises(QueryError, match="k must be"):
        workspace.sql("SELECT * FROM top_k_matches", {"k": 0})


def test_guidance_nan_is_an_error(workspace: Workspace) -> None:
    from fbmem_data.generate import generate

    with pytest.raises(InputError, match="guidance must be a finite number"):
        generate(workspace, "no-such-model", prompt_set="s", guidance=float("nan"))


# -- the configuration is named; an unknown one is an error ------------------------------------------------
def _score_row(sid: str, metric: str, run_id: str) -> dict[str, object]:
    return {
        "scoring_id": sid,
        "generated_image_id": "g",
        "train_image_id": "t",
        "segmenter": "saliency",
        "metric": metric,
        "preset": "paper" if metric == "msssim" else "custom",
        "size": 512,
        "fg_score": 0.9,
        "bg_score": 0.9,
        "pair_score": 0.9,
        "degenerate_rule": "none",
        "status": "ok",
        "run_id": run_id,
    }


def _run_row(run_id: str, minute: int) -> dict[str, object]:
    return {
        "run_id": run_id,
        "command": "score",
        "config": "{}",
        "config_hash": "x",
        "fbmem_version": "0",
        "started_at": dt.datetime(2026, 1, 1, 0, minute, tzinfo=dt.timezone.utc),
        "status": "ok",
    }


def test_labels_name_their_scoring_and_reject_unknown_ids(
    workspace: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    workspace.write("runs", [_run_row("r1", 1), _run_row("r2", 2)])
    workspace.write(
        "region_scores", [_score_row("aaaa1111", "msssim", "r1"), _score_row("bbbb2222", "ssim", "r2")]
    )
    ws = str(workspace.root)
    out = run_cli(capsys, "labels", "-w", ws)
    assert out.returncode == 0
    assert "scoring bbbb2222: metric ssim, size 512, segmenter saliency, preset custom" in out.stderr
    assert (
        "the latest of 2 scorings" in out.stderr and "--scoring-id" in out.stderr and "aaaa1111" in out.stderr
    )
    assert "bbbb2222" in out.stdout  # the table names it too (scoring_id column)
    out = run_cli(capsys, "labels", "-w", ws, "--scoring-id", "aaaa1111", "-f", "json")
    assert out.returncode == 0 and json.loads(out.stdout)[0]["scoring_id"] == "aaaa1111"
    assert "scoring aaaa1111: metric msssim" in out.stderr and "chosen with --scoring-id" in out.stderr
    out = run_cli(capsys, "labels", "-w", ws, "--scoring-id", "nope")
    assert (
        out.returncode == 1
        and "unknown scoring_id 'nope'" in out.stderr
        and "aaaa1111, bbbb2222" in out.stderr
    )
    out = run_cli(capsys, "sql", "SELECT * FROM fbmem_labels", "-w", ws, "-p", "scoring_id", "nope")
    assert out.returncode == 1 and "known: aaaa1111, bbbb2222" in out.stderr


# -- matched comparisons ---------------------------------------------------------------------------------
def test_rates_and_utility_compare_matched_generations(workspace: Workspace) -> None:
    """'none' over every prompt, 'nemo' over the memorized and template ones (the demo's shape)."""
    write_sample_workspace(
        workspace,
        SampleSpec(n_prompts=16, seeds=2, k=3, mitigated_sets=("memorized", "template"), utility=True),
    )
    rates = {
        (r["prompt_set"], r["mitigation"]): r for r in workspace.sql("SELECT * FROM fbmem_rates").to_pylist()
    }
    for pset in ("memorized", "template"):
        assert rates[(pset, "none")]["n"] == rates[(pset, "nemo")]["n"] > 0
    assert (
        rates[("control", "none")]["n"] == rates[("control", "none")]["n_generated"] > 0
    )  # nothing to match against

    # One 'none' generation more in the memorized set (a seed the mitigation never ran): matched n stays.
    extra = workspace.sql(
        "SELECT * FROM generations WHERE mitigation = 'none' AND seed = 0 "
        "AND prompt_id IN (SELECT prompt_id FROM prompts WHERE prompt_set = 'memorized') LIMIT 1"
    ).to_pylist()[0]
    extra |= {"generation_id": "extra-seed", "seed": 99}
    workspace.write("generations", [extra])
    again = {
        (r["prompt_set"], r["mitigation"]): r for r in workspace.sql("SELECT * FROM fbmem_rates").to_pylist()
    }
    assert again[("memorized", "none")]["n"] == rates[("memorized", "none")]["n"]
    assert again[("memorized", "none")]["n_generated"] == rates[("memorized", "none")]["n_generated"] + 1

    comparison = {r["method"]: r for r in workspace.sql("SELECT * FROM mitigation_comparison").to_pylist()}
    utility = {r["method"]: r for r in workspace.sql("SELECT * FROM mitigation_utility").to_pylist()}
    assert utility["none"]["utility"] == pytest.approx(comparison["none"]["utility"])
    assert utility["none"]["n"] == comparison["none"]["n"] == comparison["nemo"]["n"]
    assert utility["none"]["n_generated"] > utility["none"]["n"]  # the unmatched count stays visible
    assert utility["none"]["utility_all"] != pytest.approx(utility["none"]["utility"])


def test_report_tables_and_plot_labels(tmp_path: Path) -> None:
    from fbmem_data.report.plots import method_labels
    from fbmem_data.report.render import format_number

    assert format_number(0.26041666666666663) == "0.260"
    rows = [
        {
            "method": "wen",
            "mitigation_params": json.dumps({"target_loss": 3, "localization": "0123456789abcdef"}),
        },
        {
            "method": "wen",
            "mitigation_params": json.dumps({"target_loss": 5, "localization": "0123456789abcdef"}),
        },
        {"method": "nemo", "mitigation_params": json.dumps({"localization": "0123456789abcdef"})},
    ]
    names = method_labels(rows)
    assert names[0] != names[1] and "target_loss=3" in names[0] and "…" not in names[0].split(",")[0]
    assert names[2] == "nemo"  # one parameter set: the method alone


# -- generation_id covers the sampler and precision ----------------------------------------------------
def test_generation_id_covers_scheduler_and_dtype() -> None:
    base = dict(
        prompt_id="p",
        model_id="m",
        seed=0,
        steps=50,
        guidance=7.0,
        height=64,
        width=64,
        mitigation="none",
        mitigation_params={},
    )
    old = generation_id(**base)  # how ids were made before scheduler and dtype were recorded
    assert generation_id(**base, scheduler="DDIMScheduler", dtype="fp32") == old  # stored runs still resume
    ids = {
        old,
        generation_id(**base, scheduler="PNDMScheduler", dtype="fp32"),
        generation_id(**base, scheduler="DDIMScheduler", dtype="fp16"),
        generation_id(**base, scheduler="PNDMScheduler", dtype="fp16"),
    }
    assert len(ids) == 4
    jobs = plan_jobs(
        [("p", "text")],
        [0],
        model_id="m",
        steps=50,
        guidance=7.0,
        height=64,
        width=64,
        mitigation="none",
        mitigation_params={},
        scheduler="PNDMScheduler",
        dtype="fp16",
    )
    assert (jobs[0].scheduler, jobs[0].dtype) == ("PNDMScheduler", "fp16")
    assert jobs[0].generation_id == generation_id(**base, scheduler="PNDMScheduler", dtype="fp16")


def test_a_workspace_written_before_scheduler_and_dtype_still_opens(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    tdir = ws.table_dir("generations")
    old_schema = pa.schema(
        [f for f in pq.read_schema(tdir / EMPTY_PART) if f.name not in ("scheduler", "dtype")],
        metadata={b"fbmem.table": b"generations", b"fbmem.schema_version": b"1"},
    )
    pq.write_table(old_schema.empty_table(), tdir / EMPTY_PART)
    row = {
        "generation_id": "g",
        "image_id": "i",
        "prompt_id": "p",
        "model_id": "m",
        "seed": 0,
        "steps": 10,
        "guidance": 7.0,
        "height": 64,
        "width": 64,
        "mitigation": "none",
        "mitigation_params": "{}",
        "mitigation_detail": None,
        "run_id": None,
    }
    pq.write_table(pa.Table.from_pylist([row], schema=old_schema), tdir / "part-1-old.parquet")
    reopened = Workspace.open(ws.root)
    got = reopened.sql(
        "SELECT generation_id, scheduler, dtype FROM generation_matching JOIN generations USING (generation_id)"
    )
    assert got.to_pylist() == [{"generation_id": "g", "scheduler": None, "dtype": None}]


# -- output formats ---------------------------------------------------------------------------------------
QUERY = (
    "SELECT [1, 2] AS l, {'x': 1} AS s, 'ab'::BLOB AS b, '{\"a\": 1}'::JSON AS j, "
    "'{\"k\": 2}' AS mitigation_params, 0.25::DOUBLE AS f"
)


def test_output_formats_handle_every_column_type(
    workspace: Workspace, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ws = str(workspace.root)
    out = run_cli(capsys, "sql", QUERY, "-w", ws, "-f", "csv")
    assert out.returncode == 0, out.stderr
    row = next(csv.DictReader(io.StringIO(out.stdout)))
    assert json.loads(row["l"]) == [1, 2] and json.loads(row["s"]) == {"x": 1}
    assert base64.b64decode(row["b"]) == b"ab"
    for fmt in ("json", "jsonl"):
        out = run_cli(capsys, "sql", QUERY, "-w", ws, "-f", fmt)
        rec = json.loads(out.stdout)[0] if fmt == "json" else json.loads(out.stdout.splitlines()[0])
        assert rec["j"] == {"a": 1} and rec["mitigation_params"] == {"k": 2}  # objects, not JSON strings
        assert rec["l"] == [1, 2] and rec["s"] == {"x": 1} and base64.b64decode(rec["b"]) == b"ab"
    for name, check in (
        ("x.csv", lambda p: p.read_text().startswith('"l","s"')),
        ("x.jsonl", lambda p: json.loads(p.read_text().splitlines()[0])["f"] == 0.25),
        ("x.parquet", lambda p: pq.read_table(p).num_rows == 1),
    ):
        out = run_cli(capsys, "sql", QUERY, "-w", ws, "-o", str(tmp_path / name))
        assert out.returncode == 0 and check(tmp_path / name), (name, out.stderr)
    masks = run_cli(capsys, "sql", "SELECT * FROM masks", "-w", ws, "-f", "csv")
    assert masks.returncode == 0 and masks.stdout.startswith('"image_id"')
    table = run_cli(capsys, "sql", "SELECT 0.26041666666666663::DOUBLE AS f", "-w", ws)
    assert "0.260417" in table.stdout and "0.26041666666666663" not in table.stdout


def test_sql_output_pandas(workspace: Workspace) -> None:
    import pandas as pd

    frame = workspace.sql("SELECT 1 AS a", output="pandas")
    assert isinstance(frame, pd.DataFrame) and frame["a"].tolist() == [1]


# -- the catalog follows its workspace -------------------------------------------------------------------
def _catalog_prompts_path(catalog: Path) -> str:
    import duckdb

    con = duckdb.connect(str(catalog), read_only=True)
    try:
        return con.sql("SELECT sql FROM duckdb_views() WHERE view_name = 'prompts'").fetchall()[0][0]
    finally:
        con.close()


def test_a_copied_workspace_gets_its_own_catalog(tmp_path: Path) -> None:
    Workspace.init(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert str(tmp_path / "a") in _catalog_prompts_path(
        tmp_path / "b" / "fbmem.duckdb"
    )  # the copy names a's files
    Workspace.open(tmp_path / "b")
    assert str(tmp_path / "b" / "tables") in _catalog_prompts_path(tmp_path / "b" / "fbmem.duckdb")


def _hold_catalog(path: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, sys, time; c = duckdb.connect({str(path)!r}); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_init_fails_clearly_when_the_catalog_cannot_be_rewritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Workspace.init(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    holder = _hold_catalog(tmp_path / "b" / "fbmem.duckdb")
    try:
        out = run_cli(capsys, "init", str(tmp_path / "b"))
        assert (
            out.returncode == 1
            and "another process has it open" in out.stderr
            and "Traceback" not in out.stderr
        )
        with pytest.warns(CatalogWarning, match="could not be rewritten"):
            Workspace.open(tmp_path / "b")
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    (tmp_path / "b" / "fbmem.duckdb").write_bytes(b"garbage" * 100)
    out = run_cli(capsys, "init", str(tmp_path / "b"))
    assert (
        out.returncode == 1
        and "not a valid DuckDB database" in out.stderr
        and "delete or rename" in out.stderr
    )
    with pytest.raises(WorkspaceError):
        Workspace.init(tmp_path / "b")


def test_plugin_options_keep_ids_as_text() -> None:
    from fbmem_data.keyvalues import parse_key_values

    parsed = parse_key_values(
        ["nemo.localization=1234567890123456", "code=0012", "lr=0.05", "n_tokens=4"],
        "--mitigation-param",
        example="nemo.localization=ID",
        dotted=True,
    )
    assert parsed == {"nemo.localization": "1234567890123456", "code": "0012", "lr": 0.05, "n_tokens": 4}


def test_report_names_the_scoring_and_the_rule_that_chose_it(
    workspace: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fbmem_data.report import build_report

    first = write_sample_workspace(workspace, SampleSpec(n_prompts=4, seeds=1, k=2))["scoring_id"]
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    workspace.write("runs", [_run_row("later", 0) | {"started_at": later}])
    rows = workspace.sql("SELECT * FROM region_scores").to_pylist()
    workspace.write(
        "region_scores",
        [r | {"scoring_id": "ssim0000later000", "metric": "ssim", "run_id": "later"} for r in rows],
    )
    page = build_report(workspace, tmp_path / "r.html").read_text()
    assert "scoring_id <code>ssim0000later000</code>" in page and "the latest of <b>2</b> scorings" in page
    assert f"<code>{first}</code>" in page and "--scoring-id" in page
    chosen = build_report(workspace, tmp_path / "c.html", scoring_id=first).read_text()
    assert f"scoring_id <code>{first}</code>" in chosen and "chosen with scoring_id" in chosen
    with pytest.raises(QueryError, match="unknown scoring_id"):
        build_report(workspace, tmp_path / "n.html", scoring_id="nope")
    out = run_cli(
        capsys, "report", "-w", str(workspace.root), "-o", str(tmp_path / "cli.html"), "--limit", "2"
    )
    assert out.returncode == 0 and "labels from scoring ssim0000later000: metric ssim" in out.stdout
    assert "the latest of 2 scorings" in out.stdout


def test_a_run_with_another_scheduler_is_not_already_stored(workspace: Workspace) -> None:
    import torch
    from diffusers import EulerDiscreteScheduler

    from fbmem_data.generate import generate, wrap_pipeline
    from fbmem_data.testing import tiny_sd_pipeline

    torch.set_num_threads(1)
    workspace.write(
        "prompts", [{"prompt_id": "p1", "prompt_set": "t", "text": "a red cat", "source_key": "1"}]
    )
    pipe = tiny_sd_pipeline(seed=0)
    fast = {"steps": 2, "guidance": 7.0, "height": 64, "width": 64, "seeds": "0"}
    first = generate(workspace, wrap_pipeline(pipe, "tiny"), prompt_set="t", **fast).to_pylist()[0]
    assert first["generated"] == 1
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    second = generate(workspace, wrap_pipeline(pipe, "tiny"), prompt_set="t", **fast).to_pylist()[0]
    assert (second["generated"], second["already_stored"]) == (1, 0)  # was: skipped as already stored
    rows = workspace.sql("SELECT scheduler, dtype FROM generations ORDER BY scheduler").to_pylist()
    assert rows == [
        {"scheduler": "DDIMScheduler", "dtype": "fp32"},
        {"scheduler": "EulerDiscreteScheduler", "dtype": "fp32"},
    ]
    # Two 'none' generations of one prompt and seed under different samplers are not the same match key.
    keys = (
        workspace.sql("SELECT count(DISTINCT match_key) AS n FROM generation_matching").column("n")[0].as_py()
    )
    assert keys == 2


def test_old_generations_pair_with_new_ones_of_the_default_sampler(workspace: Workspace) -> None:
    base = {
        "prompt_id": "p",
        "model_id": "m",
        "seed": 0,
        "steps": 10,
        "guidance": 7.0,
        "height": 64,
        "width": 64,
    }
    workspace.write(
        "generations",
        [
            base | {"generation_id": "old-none", "image_id": "a", "mitigation": "none"},  # written before v2
            base
            | {
                "generation_id": "new-nemo",
                "image_id": "b",
                "mitigation": "nemo",
                "scheduler": "DDIMScheduler",
                "dtype": "fp32",
            },
            base
            | {
                "generation_id": "new-euler",
                "image_id": "c",
                "mitigation": "rta",
                "scheduler": "EulerDiscreteScheduler",
                "dtype": "fp32",
            },
        ],
    )
    rows = {
        r["generation_id"]: r["compared"]
        for r in workspace.sql("SELECT * FROM generation_matching").to_pylist()
    }
    assert rows == {"old-none": True, "new-nemo": True, "new-euler": False}
