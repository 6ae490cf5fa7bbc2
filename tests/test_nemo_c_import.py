"""`fbmem nemo-c import`: the paper's released cluster CSVs and union-mask .npz files, on tiny stand-ins."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fbmem_data.cli.app import build_app
from fbmem_data.errors import InputError
from fbmem_data.ids import prompt_id
from fbmem_data.mitigate.nemo import NemoClusterMitigation
from fbmem_data.nemo.import_clusters import (
    import_cluster_files,
    import_cluster_masks,
    mask_cluster,
    read_mask_file,
)
from fbmem_data.nemo.layers import SD_V1_WIDTHS
from fbmem_data.workspace import Workspace

SD = "CompVis/stable-diffusion-v1-4"
# captions as the memorized prompt file holds them; one with quotes, written back the way pandas does
CAPTIONS = {
    "Living in the Light with Ann Graham Lotz": 1,
    '"A Body Without Spirit" Phone Case': 10,
    "Green Sea Horse Phone Case": 10,
    "The No Limits Business Woman Podcast": 11,
    "Anne Graham Lotz (Author)": 1,
}


def _csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if '"' in text or ";" in text else text


def _setup(ws: Workspace, tmp_path: Path) -> Path:
    ws.write(
        "prompts",
        [
            {
                "prompt_id": prompt_id("memorized", str(i), c),
                "prompt_set": "memorized",
                "text": c,
                "source_key": str(i),
                "source_index": i,
                "url": f"https://x/{i}.jpg",
                "memorization_type": "TM",
            }
            for i, c in enumerate(CAPTIONS)
        ],
    )
    path = tmp_path / "memorized_laion_prompts_cluster_all_embeddings.csv"
    lines = ["Caption;cluster;URL;type;mean_sscd;max_sscd;Index"]
    lines += [
        f"{_csv_field(c)};{k};https://x/{i}.jpg;TM;0.1;0.2;{1000 + i}"
        for i, (c, k) in enumerate(CAPTIONS.items())
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _npz(path: Path, layers: list[list[int]]) -> Path:
    np.savez(path, *[np.asarray(v, dtype=np.int64) for v in layers])
    return path


def test_clusters_come_from_the_column_and_masks_from_the_whole_number(
    workspace: Workspace, tmp_path: Path
) -> None:
    csv_path = _setup(workspace, tmp_path)
    report = import_cluster_files(workspace, [csv_path])
    assert report.matched == 5 and not report.unmatched and report.clusters == {1: 2, 10: 2, 11: 1}
    assert (
        import_cluster_files(workspace, [csv_path]).clustering_id == report.clustering_id
    )  # re-import: no-op
    assert workspace.count("prompt_clusters") == 5
    one = _npz(tmp_path / "neurons_cluster_1.npz", [[3, 3, 1], [], [], [], [], [], [1279]])
    eleven = _npz(tmp_path / "neurons_cluster_11.npz", [[7], [8], [], [], [], [], []])
    assert mask_cluster(eleven) == 11 and read_mask_file(one)[0] == [1, 3]  # duplicates dropped, sorted
    masks = import_cluster_masks(workspace, report.clustering_id, {1: one, 11: eleven}, widths=SD_V1_WIDTHS)
    assert masks.neurons == {1: 3, 11: 2} and masks.clusters_without_mask == [10]
    # NeMo-C with the imported mask: cluster 11's prompt gets cluster 11's neurons (the reference code
    # parsed "1" from neurons_cluster_11 and ran cluster 1's), cluster 10's prompts get none
    mit = NemoClusterMitigation(mask=masks.mask_id)
    ids = workspace.sql("SELECT prompt_id, text FROM prompts").to_pylist()
    mit.prepare(workspace, SD, [r["prompt_id"] for r in ids])
    by_text = {r["text"]: mit._neurons.get(r["prompt_id"]) for r in ids}
    assert by_text["The No Limits Business Woman Podcast"] == {0: [7], 1: [8]}
    assert by_text["Anne Graham Lotz (Author)"] == {0: [1, 3], 6: [1279]}
    assert by_text["Green Sea Horse Phone Case"] is None


def test_import_errors(workspace: Workspace, tmp_path: Path) -> None:
    csv_path = _setup(workspace, tmp_path)
    clash = tmp_path / "clash.csv"
    clash.write_text("Caption;cluster\nGreen Sea Horse Phone Case;3\n", encoding="utf-8")
    with pytest.raises(InputError, match="cluster 10 and 3"):
        import_cluster_files(workspace, [csv_path, clash])
    nothing = tmp_path / "nothing.csv"
    nothing.write_text("Caption;cluster\nno such caption;0\n", encoding="utf-8")
    with pytest.raises(InputError, match="matches a prompt"):
        import_cluster_files(workspace, [nothing])
    bad = tmp_path / "bad.csv"
    bad.write_text("Caption;group\nx;0\n", encoding="utf-8")
    with pytest.raises(InputError, match="lacks column"):
        import_cluster_files(workspace, [bad])
    cid = import_cluster_files(workspace, [csv_path]).clustering_id
    with pytest.raises(InputError, match="does not have"):
        import_cluster_masks(workspace, cid, {4: _npz(tmp_path / "neurons_cluster_4.npz", [[1]] * 7)})
    wide = _npz(tmp_path / "neurons_cluster_1.npz", [[320], [], [], [], [], [], []])
    with pytest.raises(InputError, match="beyond its width"):
        import_cluster_masks(workspace, cid, {1: wide}, widths=SD_V1_WIDTHS)
    with pytest.raises(InputError, match="layers"):
        read_mask_file(_npz(tmp_path / "neurons_cluster_1.npz", [[1]]), SD_V1_WIDTHS)
    assert workspace.count("cluster_masks") == 0


def test_cli(workspace: Workspace, tmp_path: Path) -> None:
    csv_path = _setup(workspace, tmp_path)
    one = _npz(tmp_path / "neurons_cluster_1.npz", [[5], [], [], [], [], [], []])
    eleven = _npz(tmp_path / "eleven.npz", [[6], [7], [], [], [], [], []])
    result = CliRunner().invoke(
        build_app(),
        [
            "nemo-c",
            "import",
            "--clusters",
            str(csv_path),
            "--mask",
            str(one),
            "--mask",
            f"11={eleven}",
            "-w",
            str(workspace.root),
            "-f",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["cluster"], r["n_prompts"], r["mask_neurons"]) for r in rows] == [
        (1, 2, 1),
        (10, 2, None),
        (11, 1, 2),
    ]
    assert "[10] have no mask" in result.stderr
    result = CliRunner().invoke(build_app(), ["nemo-c", "import", "-w", str(workspace.root)])
    assert "nothing to import" in str(result.exception)
