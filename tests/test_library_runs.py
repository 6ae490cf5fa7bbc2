"""NeMo, NeMo-C and lab library calls record their own `runs` row, with no CLI around them."""

from __future__ import annotations

import dataclasses
import json

import pytest
from test_lab_dataset import SMALL

from fbmem_data.errors import InputError
from fbmem_data.runs import recorded
from fbmem_data.workspace import Workspace


def _runs(ws: Workspace) -> list[dict]:
    return ws.sql(
        "SELECT run_id, command, config, status, error FROM runs ORDER BY started_at, run_id"
    ).to_pylist()


def _scored_control_set(ws: Workspace) -> None:
    """Three prompts of a non-memorized set with stored detection scores (what `nemo calibrate` reads)."""
    ws.write(
        "prompts",
        [
            {"prompt_id": f"c{i}", "prompt_set": "control", "text": f"caption {i}", "source_key": str(i)}
            for i in range(3)
        ],
    )
    ws.write(
        "detection_scores",
        [
            {
                "model_id": "m",
                "prompt_id": f"c{i}",
                "method": "nemo_msssim",
                "config_hash": "h",
                "score": score,
                "params": "{}",
                "error": None,
                "run_id": None,
            }
            for i, score in enumerate([0.1, 0.2, 0.3])
        ],
    )


def test_a_library_call_records_its_run(workspace: Workspace) -> None:
    from fbmem_data.nemo.detect import calibrate

    _scored_control_set(workspace)
    row = calibrate(workspace, "m", "control", n_std=2.0)
    (run,) = _runs(workspace)
    assert (run["command"], run["status"], run["error"]) == ("nemo calibrate", "ok", None)
    assert json.loads(run["config"]) == {
        "model_id": "m",
        "prompt_set": "control",
        "method": "nemo_msssim",
        "config_hash": None,
        "n_std": 2.0,
    }
    # the row written carries that run's id
    assert row["run_id"] == run["run_id"]
    assert workspace.sql("SELECT run_id FROM nemo_calibration").column("run_id").to_pylist() == [
        run["run_id"]
    ]
    assert row["tau"] == pytest.approx(0.2 + 2.0 * 0.1)


def test_a_failing_library_call_records_a_failed_run(workspace: Workspace) -> None:
    from fbmem_data.nemo.clusters import build_cluster_masks

    with pytest.raises(InputError, match="localized"):
        build_cluster_masks(workspace, "no-clustering", "no-localization", q=0.5)
    (run,) = _runs(workspace)
    assert (run["command"], run["status"]) == ("nemo-c masks", "failed")
    assert "no-localization" in run["error"]
    assert json.loads(run["config"]) == {
        "clustering": "no-clustering",
        "localization": "no-localization",
        "q": 0.5,
    }


def test_a_caller_held_run_is_not_recorded_twice(workspace: Workspace) -> None:
    from fbmem_data.lab.dataset import make_lab_dataset
    from fbmem_data.lab.ingest import write_lab_dataset

    ds = make_lab_dataset(3, SMALL)
    with workspace.run("my notebook", {"step": 1}) as outer:
        write_lab_dataset(workspace, ds, run_id=outer.run_id)
    assert [(r["command"], r["status"]) for r in _runs(workspace)] == [("my notebook", "ok")]
    write_lab_dataset(workspace, ds)  # its own run this time (nothing new to write)
    runs = _runs(workspace)
    # SMALL is not v1's layout, so the run records the whole data-set config (v1's records only its seed)
    assert [(r["command"], r["status"], json.loads(r["config"])) for r in runs[1:]] == [
        ("lab dataset", "ok", {"seed": 3, "lab_config": json.loads(json.dumps(dataclasses.asdict(dataclasses.replace(SMALL, seed=3))))})
    ]
    stored = workspace.sql("SELECT DISTINCT run_id FROM lab_truth").column("run_id").to_pylist()
    assert stored == [outer.run_id]


def test_recorded_needs_a_run_id_parameter() -> None:
    with pytest.raises(TypeError, match="run_id"):

        @recorded("x", lambda a: {})
        def no_run_id(ws: Workspace) -> None:
            del ws


def test_the_nemo_cli_records_no_run_of_its_own(workspace: Workspace) -> None:
    """`fbmem nemo calibrate` leaves exactly the library's one row (the CLI no longer wraps it in another)."""
    from typer.testing import CliRunner

    from fbmem_data.cli.app import build_app

    _scored_control_set(workspace)
    args = ["nemo", "calibrate", "--prompts", "control", "--model", "m", "-w", str(workspace.root)]
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    assert [(r["command"], r["status"]) for r in _runs(workspace)] == [("nemo calibrate", "ok")]
