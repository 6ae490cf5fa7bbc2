"""One function per stage, any engine: the local engine, a second in-process Distributor and Ray write the
same rows through the stages' library functions; shard ids name the work, so a later run over other inputs
is never taken for a finished one."""

from __future__ import annotations

import datetime as dt
import io
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from fbmem_data.distribute import Distributor, ExtractorJob, JobSummary
from fbmem_data.distribute.shards import iter_pending, raise_failed_shards, run_shard_reporting
from fbmem_data.errors import InputError
from fbmem_data.fbmem import score_pairs, segment_images
from fbmem_data.fbmem.images import load_rgb
from fbmem_data.fbmem.masks import error_row, make_segmenter, mask_rows
from fbmem_data.fbmem.scoring import ScoreRequest
from fbmem_data.ids import params_hash
from fbmem_data.testing.scenes import planted_pair, to_uint8
from fbmem_data.workspace import Workspace

SIZE = 48


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


class BackwardsDistributor(Distributor):
    """A second in-process engine: every shard, last one first, with the model built afresh (never lent)."""

    name = "backwards"

    def run(self, ws: Workspace, job: ExtractorJob) -> JobSummary:
        started = time.perf_counter()
        summary = JobSummary(engine=self.name, extractor=job.extractor, rows_in=job.inputs.num_rows)
        todo = []
        for shard, done in iter_pending(ws.root, job):
            summary.shards += 1
            if done:
                summary.shards_skipped += 1
            else:
                todo.append(shard)
        failed: dict[str, Any] = {}
        batch_fn = job.model(ws) if todo else None
        for shard in reversed(todo):
            written, error = run_shard_reporting(ws, job, batch_fn, shard)
            if error:
                failed[shard.shard_id] = error
            for table, n in written.items():
                summary.rows_written[table] = summary.rows_written.get(table, 0) + n
        summary.shards_run = len(todo)
        raise_failed_shards(job, failed, len(todo))
        summary.seconds = time.perf_counter() - started
        return summary


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(to_uint8(arr)).save(buf, format="PNG")
    return buf.getvalue()


def _put(ws: Workspace, data: bytes, role: str) -> str:
    image_id, path = ws.store_image(data, "png")
    ws.write(
        "images",
        [
            {
                "image_id": image_id,
                "role": role,
                "store_path": str(path.relative_to(ws.root)),
                "status": "ok",
                "ingested_at": dt.datetime.now(dt.timezone.utc),
            }
        ],
    )
    return image_id


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 generated + 4 training planted scenes, one undecodable training file, exhaustive candidates."""
    ws = Workspace.init(tmp_path_factory.mktemp("engines") / "ws")
    gens, trains = [], []
    for i, label in enumerate(("VM", "BM", "FM", "NM")):
        p = planted_pair(70 + i, label, SIZE, 0.2)
        gens.append(_put(ws, _png(p.generated), "generated"))
        trains.append(_put(ws, _png(p.train), "train"))
    trains.append(_put(ws, b"\x89PNG\r\n\x1a\n broken", "train"))
    ws.write(
        "candidates",
        [
            {"pairing_id": "P", "generated_image_id": g, "train_image_id": t, "method": "exhaustive"}
            for g in gens
            for t in trains
        ],
    )
    ws.close()
    return ws.root


def _copy(source: Path, dest: Path) -> Workspace:
    shutil.copytree(source, dest)
    return Workspace.open(dest)


def _rows(ws: Workspace, table: str) -> list[dict[str, Any]]:
    """Rows without run ids; an error names the file it could not read, the same up to the workspace's place."""
    rows = ws.sql(f"SELECT * FROM {table}").to_pylist()
    root = str(ws.root)
    return sorted(
        (
            {k: v.replace(root, "<ws>") if k == "error" and v else v for k, v in r.items() if k != "run_id"}
            for r in rows
        ),
        key=repr,
    )


def test_segment_rows_are_the_per_image_work(source: Path, tmp_path: Path) -> None:
    """The job's rows equal the segmenter run image by image on load_rgb (errors included, message and all)."""
    ws = _copy(source, tmp_path / "ws")
    got = segment_images(ws, "saliency", device="cpu", batch_size=3, shard_rows=4)
    assert (got["pending"], got["ok"], got["error"]) == (
        8,
        7,
        1,
    ) and "engine" not in got  # the VM pair is one image
    seg = make_segmenter("saliency", "cpu")
    params = seg.params()
    expected = []
    for row in ws.sql("SELECT image_id, min(store_path) AS p FROM images GROUP BY 1").to_pylist():
        try:
            expected += mask_rows(seg, [row["image_id"]], [load_rgb(ws, row["image_id"], row["p"])], None)
        except InputError as exc:
            expected.append(error_row(row["image_id"], seg.name, params_hash(params), params, str(exc), None))
    columns = ("image_id", "status", "error", "mask", "params_hash")
    assert sorted(
        ({c: r.get(c) for c in columns} for r in ws.sql("SELECT * FROM masks").to_pylist()), key=repr
    ) == sorted(({c: r.get(c) for c in columns} for r in expected), key=repr)
    assert "does not decode: cannot identify image file '" in next(r["error"] for r in expected if r["error"])


def test_local_and_another_in_process_engine_write_the_same_rows(source: Path, tmp_path: Path) -> None:
    """score_pairs (with its segment job) on "local" and on a Distributor instance: same rows, same summary."""
    request = ScoreRequest(pairing_id="P", device="cpu", batch_size=2, shard_rows=8)
    local_ws = _copy(source, tmp_path / "local")
    local = score_pairs(local_ws, request=request)
    other_ws = _copy(source, tmp_path / "other")
    other = score_pairs(other_ws, request=request, engine=BackwardsDistributor())
    assert (local["pending"], local["ok"], local["error"]) == (20, 16, 4) and "engine" not in local
    assert (other["engine"], other["shards"], other["shards_skipped"]) == (
        "backwards",
        3,
        0,
    )  # 20 pairs, 8 per shard
    assert {k: other[k] for k in local} == local
    for table in ("masks", "region_scores"):
        assert _rows(other_ws, table) == _rows(local_ws, table)
        # one job, one shard layout: the same part files whichever engine ran it
        assert sorted(p.name for p in other_ws.parts(table)) == sorted(p.name for p in local_ws.parts(table))
    again = score_pairs(other_ws, request=request, engine=BackwardsDistributor())
    assert again["pending"] == 0
    # an error of the stage's own (bad settings) comes out as itself, with its hint, whatever the engine
    for engine in ("local", BackwardsDistributor()):
        with pytest.raises(InputError, match="too small") as info:
            score_pairs(local_ws, request=request, size=SIZE, engine=engine)
        assert "--size" in (info.value.hint or "")


def test_request_is_checked_once(source: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="batch size"):
        ScoreRequest(batch_size=0)
    with pytest.raises(InputError, match="unknown preset"):
        ScoreRequest(preset="papper")
    ws = _copy(source, tmp_path / "ws")
    with pytest.raises(InputError, match="size must be at least 16"):
        score_pairs(ws, "P", request=ScoreRequest(device="cpu"), size=8)  # keywords go through the same check


@pytest.mark.slow  # starts a local Ray instance (~10 s on 2 cores)
def test_local_and_ray_write_the_same_rows(source: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray.data", reason="the ray engine needs the optional extra fbmem[ray]")
    from fbmem_data.distribute import EngineOptions

    local_ws = _copy(source, tmp_path / "local")
    local = segment_images(local_ws, "saliency", device="cpu", batch_size=2)
    ray_ws = _copy(source, tmp_path / "ray")
    on_ray = segment_images(
        ray_ws, "saliency", device="cpu", batch_size=2, engine="ray", engine_options=EngineOptions(num_cpus=2)
    )
    assert on_ray["engine"] == "ray" and {k: on_ray[k] for k in local} == local
    assert _rows(ray_ws, "masks") == _rows(local_ws, "masks")
    assert sorted(p.name for p in ray_ws.parts("masks")) == sorted(p.name for p in local_ws.parts("masks"))
