"""NeMo reference data: the SD v1.4 statistics file and the released neuron CSV, through fbmem's SQL."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fbmem_data.errors import InputError
from fbmem_data.ids import prompt_id
from fbmem_data.nemo.import_csv import import_nemo_csv, parse_neuron_lists
from fbmem_data.nemo.layers import SD_V1_WIDTHS
from fbmem_data.nemo.stats import import_stats_file, load_stats, read_stats_file
from fbmem_data.workspace import Workspace

STATS_FILE = "statistics_additional_laion_prompts_v1_4.pt"
NEMO_CSV = "nemo_refined_neurons_prompts_0_250.csv"


def write_memorized_prompts(ws: Workspace, reference_dir: Path) -> None:
    """The memorized set as the ingest helper stores it (set 'memorized', VM/TM types)."""
    with open(reference_dir / "memorized_laion_prompts.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter=";"))
    ws.write(
        "prompts",
        [
            {
                "prompt_id": prompt_id("memorized", r[""], r["Caption"]),
                "prompt_set": "memorized",
                "text": r["Caption"],
                "source_key": r[""],
                "source_index": int(r["Index"]),
                "url": r["URL"],
                "memorization_type": r["type"],
            }
            for r in rows
        ],
    )


def test_stats_file_has_sd_v14_shapes(workspace: Workspace, reference_dir: Path) -> None:
    means, stds = read_stats_file(reference_dir / STATS_FILE)
    assert [m.numel() for m in means] == list(SD_V1_WIDTHS)
    assert [s.numel() for s in stds] == list(SD_V1_WIDTHS)
    written = import_stats_file(workspace, reference_dir / STATS_FILE)
    assert written == sum(SD_V1_WIDTHS) == 5760
    widths = workspace.sql("SELECT layer, width FROM nemo_stats_layers ORDER BY layer").column("width").to_pylist()
    assert widths == list(SD_V1_WIDTHS)
    reference, loaded_means, loaded_stds = load_stats(workspace, "CompVis/stable-diffusion-v1-4")
    assert reference == f"file:{STATS_FILE}"
    assert all(abs(float((a - b).abs().max())) < 1e-6 for a, b in zip(loaded_means, means, strict=True))
    assert all(float(s.min()) > 0 for s in loaded_stds)
    # Re-import writes nothing new (primary key skip).
    assert import_stats_file(workspace, reference_dir / STATS_FILE) == 0


def test_stats_file_errors(tmp_path: Path) -> None:
    import torch

    bad = tmp_path / "bad.pt"
    torch.save({"means": torch.zeros(3)}, bad)
    with pytest.raises(InputError, match="means, stds"):
        read_stats_file(bad)
    with pytest.raises(InputError, match="does not exist"):
        read_stats_file(tmp_path / "missing.pt")


def test_parse_neuron_lists() -> None:
    assert parse_neuron_lists("[[221], [], [5, 7]]", where="x") == [[221], [], [5, 7]]
    with pytest.raises(InputError):
        parse_neuron_lists("[[1], [-2]]", where="x")
    with pytest.raises(InputError):
        parse_neuron_lists("__import__('os')", where="x")


def test_nemo_csv_import_reproduces_reference_figures(workspace: Workspace, reference_dir: Path) -> None:
    write_memorized_prompts(workspace, reference_dir)
    report = import_nemo_csv(workspace, reference_dir / NEMO_CSV)
    assert report.rows == 251 and report.matched == 251 and not report.unmatched
    assert workspace.count("nemo_summary") == 251
    # Every neuron index fits its layer's width.
    over = workspace.sql(
        "SELECT count(*) AS n FROM nemo_neurons WHERE neuron >= [320, 320, 640, 640, 1280, 1280, 1280][layer + 1]"
    ).column("n")[0].as_py()
    assert over == 0
    stats = {
        r["memorization_type"]: r
        for r in workspace.sql(
            "SELECT * FROM nemo_neuron_stats WHERE stage = 'refined' AND localization_id = $id",
            {"id": report.localization_id},
        ).to_pylist()
    }
    vm, tm = stats["VM"], stats["TM"]
    assert vm["n_prompts"] == 92
    assert vm["median_neurons"] == 3 and round(vm["mean_neurons"], 1) == 13.6 and vm["max_neurons"] == 133
    assert vm["n_exactly_one"] == 26
    assert tm["median_neurons"] == 7 and round(tm["mean_neurons"], 1) == 21.6 and tm["max_neurons"] == 196
    # Idempotent: importing again adds no neuron rows.
    again = import_nemo_csv(workspace, reference_dir / NEMO_CSV)
    assert again.neurons_written == 0


def test_nemo_csv_without_matching_prompts_fails(workspace: Workspace, reference_dir: Path) -> None:
    with pytest.raises(InputError, match="no prompts in set"):
        import_nemo_csv(workspace, reference_dir / NEMO_CSV)
    workspace.write("prompts", [{"prompt_id": "p1", "prompt_set": "memorized", "text": "nothing alike", "source_key": "0"}])
    with pytest.raises(InputError, match="matches"):
        import_nemo_csv(workspace, reference_dir / NEMO_CSV)


def test_export_then_import_round_trips_the_reference_csv(workspace: Workspace, reference_dir: Path, tmp_path: Path) -> None:
    from fbmem_data.nemo.export_csv import export_nemo_csv

    write_memorized_prompts(workspace, reference_dir)
    first = import_nemo_csv(workspace, reference_dir / NEMO_CSV)
    out = tmp_path / "exported.csv"
    assert export_nemo_csv(workspace, first.localization_id, out) == 251
    other = Workspace.init(tmp_path / "other")
    write_memorized_prompts(other, reference_dir)
    second = import_nemo_csv(other, out)
    assert second.matched == 251 and not second.unmatched

    def neurons(ws: Workspace, loc: str) -> set[tuple]:
        rows = ws.sql("SELECT prompt_id, stage, layer, neuron FROM nemo_neurons WHERE localization_id = $l", {"l": loc})
        return {tuple(r.values()) for r in rows.to_pylist()}

    assert neurons(other, second.localization_id) == neurons(workspace, first.localization_id)
    scores = "SELECT prompt_id, initial_score, refined_score FROM nemo_summary WHERE localization_id = $l ORDER BY 1"
    assert (other.sql(scores, {"l": second.localization_id}).to_pylist()
            == workspace.sql(scores, {"l": first.localization_id}).to_pylist())
    with pytest.raises(InputError, match="no prompt with neurons"):
        export_nemo_csv(workspace, "no-such-localization", tmp_path / "none.csv")
    # a set filter keeps only that set's prompts
    prompt_set = workspace.sql("SELECT DISTINCT prompt_set FROM prompts").column(0).to_pylist()[0]
    assert export_nemo_csv(workspace, first.localization_id, tmp_path / "set.csv", prompt_set=prompt_set) == 251
    with pytest.raises(InputError, match="in prompt set 'no-such-set'"):
        export_nemo_csv(workspace, first.localization_id, tmp_path / "none.csv", prompt_set="no-such-set")
