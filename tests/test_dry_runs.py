"""`fbmem generate --dry-run` and `fbmem pair --dry-run`: the pending work by the stage's own resume rule,
nothing written, and the counts equal to what a real run then does."""

from __future__ import annotations

import datetime as dt
import json
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from fbmem_data.errors import InputError
from fbmem_data.generate import generate, wrap_pipeline
from fbmem_data.generate.dry_run import plan_generation, unet_evaluations
from fbmem_data.ids import prompt_id
from fbmem_data.pairing import pair_with_summary
from fbmem_data.pairing.dry_run import EMBED_S, plan_pairing
from fbmem_data.testing import tiny_sd_pipeline
from fbmem_data.workspace import Workspace

FAST = {"steps": 2, "guidance": 7.0, "height": 64, "width": 64}
TABLES = ("images", "generations", "embeddings", "candidates", "runs")


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _counts(ws: Workspace) -> dict[str, int]:
    return {t: ws.count(t) for t in TABLES}


def _prompts(ws: Workspace, texts: list[str]) -> list[str]:
    rows = [
        {"prompt_id": prompt_id("t", str(i), s), "prompt_set": "t", "text": s, "source_key": str(i)}
        for i, s in enumerate(texts)
    ]
    ws.write("prompts", rows)
    return [r["prompt_id"] for r in rows]


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> subprocess.CompletedProcess[str]:
    """`fbmem ARGS` in this process (torch and the models are imported already; a subprocess costs seconds)."""
    from fbmem_data.cli.app import main

    capsys.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def test_generate_dry_run_counts_what_generate_then_does(workspace: Workspace) -> None:
    tiny = wrap_pipeline(tiny_sd_pipeline(seed=0), "tiny-sd")
    _prompts(workspace, ["a red cat", "a blue dog"])
    generate(workspace, tiny, prompt_set="t", seeds="0", **FAST)  # some of the work is stored already
    before = _counts(workspace)
    plan = plan_generation(
        workspace, tiny, prompt_set="t", seeds="0..1", mitigations=["none", "rta"], **FAST
    ).to_pylist()
    assert _counts(workspace) == before  # nothing written, no runs row
    assert [(p["mitigation"], p["planned"], p["already_stored"], p["pending"]) for p in plan] == [
        ("none", 4, 2, 2),
        ("rta", 4, 0, 4),
    ]
    assert plan[0]["unet_evaluations"] == unet_evaluations(2, 2, 7.0) == 2 * 2 * 2
    assert plan[0]["estimated_cpu_s"] is None  # no measured rate for an ad-hoc pipeline
    done = generate(
        workspace, tiny, prompt_set="t", seeds="0..1", mitigations=["none", "rta"], **FAST
    ).to_pylist()
    assert [(d["mitigation"], d["already_stored"], d["generated"]) for d in done] == [
        (p["mitigation"], p["already_stored"], p["pending"]) for p in plan
    ]
    assert [d["mitigation_params"] for d in done] == [p["mitigation_params"] for p in plan]
    again = plan_generation(
        workspace, tiny, prompt_set="t", seeds="0..1", mitigations=["none", "rta"], **FAST
    )
    assert again.column("pending").to_pylist() == [0, 0]
    with pytest.raises(InputError, match="no prompts selected"):
        plan_generation(workspace, tiny)


def test_generate_dry_run_cli_on_the_lab_model(
    workspace: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    lab = pytest.importorskip("fbmem_data.lab.pipeline")
    if not (lab.default_weights_dir() / lab.UNET_FILE).is_file():
        pytest.skip("the shipped lab weights are not in this checkout")
    _prompts(workspace, ["a small red circle on stripes", "a blue square"])
    ws = str(workspace.root)
    out = _cli(
        [
            "generate",
            "-w",
            ws,
            "--model",
            "lab",
            "--prompts",
            "t",
            "--n",
            "2",
            "--steps",
            "2",
            "--device",
            "cpu",
            "--dry-run",
            "-f",
            "json",
        ],
        capsys,
    )
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    assert (row["pending"], row["already_stored"], row["unet_evaluations"], row["dry_run"]) == (
        4,
        0,
        4 * 2 * 2,
        True,
    )
    # the lab model's measured rate: 2.11 images/s at 10 steps and 64 px, one thread; here 2 steps
    assert row["estimated_cpu_s"] == round(4 * 2 * 2 / (2.11 * 10 * 2), 1) == 0.4
    assert workspace.count("generations") == 0 and workspace.count("runs") == 0
    real = _cli(
        [
            "generate",
            "-w",
            ws,
            "--model",
            "lab",
            "--prompts",
            "t",
            "--n",
            "2",
            "--steps",
            "2",
            "--device",
            "cpu",
            "--no-progress",
            "-f",
            "json",
        ],
        capsys,
    )
    assert real.returncode == 0, real.stderr
    assert json.loads(real.stdout)[0]["generated"] == row["pending"]
    out = _cli(
        [
            "generate",
            "-w",
            ws,
            "--model",
            "lab",
            "--prompts",
            "t",
            "--n",
            "3",
            "--steps",
            "2",
            "--device",
            "cpu",
            "--dry-run",
            "-f",
            "csv",
        ],
        capsys,
    )
    assert out.returncode == 0 and "pending" in out.stdout.splitlines()[0], out.stderr
    assert out.stdout.splitlines()[1].split(",")[3:6] == ["6", "4", "2"]  # planned, already_stored, pending


def _images(ws: Workspace, tmp_path, role: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    d = tmp_path / f"{role}{seed}"
    d.mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(d / f"{i}.png")
    from fbmem_data.ingest.images import ingest_images

    ingest_images(ws, d, role=role, progress=False)


def _unreadable_train_image(ws: Workspace) -> None:
    """An ok images row whose bytes are not stored: embedding it fails (an error row, no vector)."""
    now = dt.datetime.now(dt.timezone.utc)
    ws.write(
        "images",
        [
            {
                "image_id": "f" * 64,
                "role": "train",
                "source_uri": "x",
                "store_path": None,
                "width": 8,
                "height": 8,
                "mode": "RGB",
                "format": "PNG",
                "n_bytes": 1,
                "status": "ok",
                "error": None,
                "ingested_at": now,
                "run_id": None,
            }
        ],
    )


def test_pair_dry_run_counts_what_pair_then_does(
    workspace: Workspace, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    _images(workspace, tmp_path, "generated", 3, 0)
    _images(workspace, tmp_path, "train", 4, 1)
    before = _counts(workspace)
    ex = plan_pairing(workspace, "exhaustive")
    assert (ex["n_paired_now"], ex["candidate_rows"]) == (3, 12)
    ann = plan_pairing(workspace, "ann", "thumbnail", k=2)
    assert (ann["embeddings_to_compute"], ann["n_paired_now"], ann["candidate_rows"], ann["search"]) == (
        7,
        3,
        6,
        "exact",
    )
    assert ann["estimated_cpu_s"] == pytest.approx(
        round(7 * (0.037 + EMBED_S["thumbnail"]) + 3 * 4 * 20e-9, 1)
    )
    assert _counts(workspace) == before

    s = pair_with_summary(workspace, "exhaustive")
    assert (s.n_paired_now, s.rows_written) == (ex["n_paired_now"], ex["candidate_rows"])
    s = pair_with_summary(workspace, "ann", "thumbnail", k=2)
    assert (s.pairing_id, s.n_paired_now, s.rows_written) == (
        ann["pairing_id"],
        ann["n_paired_now"],
        ann["candidate_rows"],
    )
    assert workspace.count("embeddings") == ann["embeddings_to_compute"]

    # new images: one generated, one training image (every exhaustive row lacks a partner), one unreadable
    _images(workspace, tmp_path, "generated", 1, 2)
    _images(workspace, tmp_path, "train", 1, 3)
    _unreadable_train_image(workspace)
    before = _counts(workspace)
    out = _cli(["pair", "-w", str(workspace.root), "--dry-run", "-f", "json"], capsys)
    assert out.returncode == 0, out.stderr
    (ex,) = json.loads(out.stdout)
    assert (ex["n_paired_now"], ex["candidate_rows"], ex["dry_run"]) == (4, 4 * 6 - 3 * 4, True)
    out = _cli(
        ["pair", "-w", str(workspace.root), "--method", "ann", "--k", "2", "--dry-run", "-f", "json"], capsys
    )
    assert out.returncode == 0, out.stderr
    (ann2,) = json.loads(out.stdout)
    # the new training set is another fingerprint: a new pairing, every generated image pending
    assert ann2["pairing_id"] != ann["pairing_id"]
    assert (ann2["embeddings_to_compute"], ann2["n_paired_now"], ann2["candidate_rows"]) == (3, 4, 8)
    assert _counts(workspace) == before

    s = pair_with_summary(workspace, "exhaustive")
    assert (s.n_paired_now, s.rows_written) == (ex["n_paired_now"], ex["candidate_rows"])
    s = pair_with_summary(workspace, "ann", "thumbnail", k=2)
    # the unreadable image embeds as an error row and is left out of the training set, as the plan said
    assert (s.pairing_id, s.n_paired_now, s.rows_written) == (
        ann2["pairing_id"],
        ann2["n_paired_now"],
        ann2["candidate_rows"],
    )
    assert plan_pairing(workspace, "ann", "thumbnail", k=2)["n_paired_now"] == 0
    assert plan_pairing(workspace, "exhaustive")["candidate_rows"] == 0
    with pytest.raises(InputError, match="max_pairs"):
        plan_pairing(workspace, "exhaustive", max_pairs=5)
