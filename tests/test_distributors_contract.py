"""One contract suite for every distributor (ibis style): each test runs against `local` and `ray`.

Every engine must write the rows the extractor's own loop writes (order and run ids aside), skip
finished shards, and lose or duplicate nothing when a worker dies mid-run and the job is run again.
Ray starts once per session (2 CPUs, no dashboard); inputs are a few 48-pixel images.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from fbmem_data.distribute import EngineOptions, ExtractorJob, make_distributor, run_job
from fbmem_data.distribute.shards import part_name, plan_shards
from fbmem_data.embed import embed_images
from fbmem_data.errors import FbmemError, InputError, PluginError
from fbmem_data.fbmem.masks import SegmentModel, segment_job
from fbmem_data.fbmem.scoring import score_pairs
from fbmem_data.pairing import pair_with_summary
from fbmem_data.testing.scenes import planted_pair, to_uint8
from fbmem_data.workspace import Workspace

# ray starts a cluster and actors: 8-16 s per test on a 2-core CPU, so its half of the suite is slow
ENGINES = ["local", pytest.param("ray", marks=pytest.mark.slow)]
SIZE = 48
VOLATILE = {"run_id"}
_SOURCE_NAME = re.compile(r"(cannot identify image file) .*")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ray_session() -> Any:
    """One local Ray instance for the whole session (starting one costs ~10 s on 2 cores)."""
    pytest.importorskip("ray.data", reason="the ray engine needs the optional extra fbmem[ray]")
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    # A starved actor pool fails the test instead of hanging it. 120 s was too short once on the 2-core
    # machine with a training job beside the suite: an actor importing torch there took longer.
    ctx.wait_for_min_actors_s = 300
    # Workers cannot import this test module (tests/ is not a package): ship its classes by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    if started:
        ray.shutdown()


def _distributor(name: str, request: pytest.FixtureRequest, concurrency: int = 1) -> Any:
    if name == "ray":
        request.getfixturevalue("ray_session")
    return make_distributor(name, EngineOptions(concurrency=concurrency))


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> Any:
    with _distributor(request.param, request) as distributor:
        yield distributor


# -- inputs -------------------------------------------------------------------------------------------
def _put(ws: Workspace, data: bytes, role: str) -> str:
    image_id, path = ws.store_image(data, "png")
    now = dt.datetime.now(dt.timezone.utc)
    ws.write("images", [{"image_id": image_id, "role": role, "store_path": str(path.relative_to(ws.root)), "status": "ok", "ingested_at": now}])
    return image_id


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(to_uint8(arr)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def source_ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 generated + 3 training images (the VM pair byte-identical), one undecodable training file,
    exhaustive candidates."""
    ws = Workspace.init(tmp_path_factory.mktemp("dist") / "ws")
    gens, trains = [], []
    for i, label in enumerate(("VM", "BM", "NM")):
        p = planted_pair(40 + i, label, SIZE, 0.2)
        gens.append(_put(ws, _png(p.generated), "generated"))
        trains.append(_put(ws, _png(p.train), "train"))
    trains.append(_put(ws, b"\x89PNG\r\n\x1a\n not an image", "train"))
    ws.write(
        "candidates",
        [{"pairing_id": "P", "generated_image_id": g, "train_image_id": t, "method": "exhaustive"} for g in gens for t in trains],
    )
    ws.close()
    return ws.root


def _copy(source: Path, tmp_path: Path) -> Workspace:
    shutil.copytree(source, tmp_path / "ws")
    return Workspace.open(tmp_path / "ws")


def _comparable(key: str, value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 5)  # batching may move the 7th digit
    if key == "error" and value:
        # PIL names what it could not read: a file path (own loop) or a BytesIO object (bytes shipped)
        return _SOURCE_NAME.sub(r"\1", value)
    return value


def _rows(ws: Workspace, table: str, where: str = "TRUE") -> list[dict[str, Any]]:
    """The table's rows without run ids, comparable across engines and workspaces, sorted."""
    rows = ws.sql(f"SELECT * FROM {table} WHERE {where}").to_pylist()
    return sorted(({k: _comparable(k, v) for k, v in row.items() if k not in VOLATILE} for row in rows), key=repr)


def _no_duplicate_keys(ws: Workspace, table: str, key: str) -> None:
    t = ws.sql(f"SELECT count(*) AS n, count(DISTINCT ({key})) AS d FROM {table}")
    assert t.column("n")[0].as_py() == t.column("d")[0].as_py()


@pytest.fixture(scope="module")
def reference(source_ws: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Rows written by the stages' library functions with their defaults (local engine, default shards
    and batches) on the same input, and a copy of the input with its masks (so the score test runs one
    job, not a segment job too)."""
    from fbmem_data.fbmem import segment_images

    torch.set_num_threads(1)
    ws = _copy(source_ws, tmp_path_factory.mktemp("reference"))
    segment_images(ws, "saliency", device="cpu", batch_size=3)
    masks = _rows(ws, "masks")
    masked = tmp_path_factory.mktemp("masked") / "ws"
    shutil.copytree(ws.root, masked)
    score_pairs(ws, "P", device="cpu", batch_size=2)
    embed_images(ws, "thumbnail", device="cpu", batch_size=4)
    pair_with_summary(ws, "ann", "thumbnail", 2, device="cpu", search="exact")
    return {
        "masks": masks,
        "region_scores": _rows(ws, "region_scores"),
        "embeddings": _rows(ws, "embeddings"),
        "candidates": _rows(ws, "candidates", "method = 'ann'"),
        "masked_ws": masked,
    }


# -- rows equal the extractor's own ---------------------------------------------------------------------
def test_segment_rows_match_reference_and_rerun_skips(engine: Any, source_ws: Path, reference: dict[str, Any], tmp_path: Path) -> None:
    ws = _copy(source_ws, tmp_path)
    job = segment_job(ws, "saliency", device="cpu", batch_size=2, shard_rows=3)
    first = engine.run(ws, job)
    # 6 distinct images (the VM copy is byte-identical to its training image), one of them undecodable
    assert (first.rows_in, first.shards, first.shards_run, first.rows_written["masks"]) == (6, 2, 2, 6)
    assert _rows(ws, "masks") == reference["masks"]
    # one part per shard, named by extractor, settings and shard
    assert len([p for p in ws.parts("masks") if p.name.startswith("part-segment-")]) == 2
    again = engine.run(ws, job)  # the same shards again: every part exists, nothing runs
    assert (again.shards_skipped, again.shards_run, again.rows_written.get("masks", 0)) == (2, 0, 0)
    assert ws.count("masks") == 6


def test_embed_and_pair_rows_match_reference(engine: Any, source_ws: Path, reference: dict[str, Any], tmp_path: Path) -> None:
    ws = _copy(source_ws, tmp_path)
    summary = pair_with_summary(ws, "ann", "thumbnail", 2, engine=engine, device="cpu", batch_size=2, search="exact")
    assert summary.n_generated == 3 and summary.rows_written == 6
    assert _rows(ws, "embeddings") == reference["embeddings"]
    assert _rows(ws, "candidates", "method = 'ann'") == reference["candidates"]
    got = embed_images(ws, "thumbnail", engine=engine, device="cpu")
    assert (got.already_stored, got.embedded, got.failed) == (6, 0, 0)  # resumes: all 6 distinct images stored


def test_score_rows_match_reference(engine: Any, reference: dict[str, Any], tmp_path: Path) -> None:
    ws = _copy(reference["masked_ws"], tmp_path)  # masks stored: only the score job runs
    got = score_pairs(ws, "P", engine=engine, device="cpu", batch_size=1, shard_rows=5)
    assert (got["pending"], got["ok"], got["error"]) == (12, 9, 3)  # 3 pairs hold the undecodable image
    assert got.get("shards", 3) == 3  # 12 pairs in shards of 5 (only engines other than local report shards)
    assert len([p for p in ws.parts("region_scores") if p.name.startswith("part-score-")]) == 3
    assert _rows(ws, "region_scores") == reference["region_scores"]
    assert score_pairs(ws, "P", engine=engine, device="cpu")["pending"] == 0  # resumes: nothing left


# -- shards --------------------------------------------------------------------------------------------
def test_shards_are_deterministic_and_disjoint() -> None:
    inputs = pa.table({"image_id": [f"i{n}" for n in (5, 1, 4, 2, 3)], "x": [1, 2, 3, 4, 5]})
    a = plan_shards(inputs, ("image_id",), 2)
    b = plan_shards(inputs.take([4, 3, 2, 1, 0]), ("image_id",), 2)
    assert [s.shard_id for s in a] == [s.shard_id for s in b]
    assert [s.rows.column("image_id").to_pylist() for s in a] == [["i1", "i2"], ["i3", "i4"], ["i5"]]
    assert len({s.shard_id for s in a}) == 3
    with pytest.raises(InputError, match="repeat a key"):
        plan_shards(pa.table({"image_id": ["a", "a"]}), ("image_id",), 2)


# -- a worker dies mid-run ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlakyModel:
    """SegmentModel that fails the first time it meets `victim` (a marker file remembers across processes)."""

    inner: SegmentModel
    victim: str
    marker: str
    how: str  # "raise" or "exit" (the worker process dies)

    def __call__(self, ws: Workspace) -> Any:
        batch_fn = self.inner(ws)

        def flaky(rows: pa.Table) -> Any:
            if self.victim in rows.column("image_id").to_pylist() and not os.path.exists(self.marker):
                Path(self.marker).touch()
                if self.how == "exit":
                    os._exit(1)
                raise RuntimeError("injected worker failure")
            return batch_fn(rows)

        return flaky


@pytest.mark.parametrize(
    ("engine_name", "how"),
    [
        ("local", "raise"),
        pytest.param("local", "exit", marks=pytest.mark.skip(reason="never: os._exit in-process would kill the test runner")),
        pytest.param("ray", "raise", marks=pytest.mark.slow),
        pytest.param("ray", "exit", marks=pytest.mark.slow),
    ],
)
def test_killed_worker_loses_and_duplicates_nothing(
    engine_name: str, how: str, source_ws: Path, reference: dict[str, Any], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    ws = _copy(source_ws, tmp_path)
    job = segment_job(ws, "saliency", device="cpu", batch_size=1, shard_rows=2)
    shards = plan_shards(job.inputs, job.key, job.shard_rows)
    victim = shards[1].rows.column("image_id")[0].as_py()  # mid-run: the second of three shards
    flaky = ExtractorJob(**{**job.__dict__, "model": FlakyModel(job.model, victim, str(tmp_path / "failed-once"), how)})  # type: ignore[arg-type]
    parts = [ws.table_dir("masks") / part_name("segment", job.config_hash, s.shard_id) for s in shards]
    with _distributor(engine_name, request) as distributor:  # one actor: each actor start costs seconds here
        if how == "raise":  # the failing shard is reported, the others are written
            with pytest.raises(FbmemError, match="1 of 3 segment shard") as failure:
                distributor.run(ws, flaky)
            assert "again" in (failure.value.hint or "")
            assert [p.exists() for p in parts] == [True, False, True]
        else:  # the process died: Ray restarts the actor and retries the task (or the re-run does it)
            with contextlib.suppress(FbmemError):
                distributor.run(ws, flaky)
        assert (tmp_path / "failed-once").exists()  # the failure did happen
        # re-run from a fresh pending query, as a user re-running the command would
        rerun = segment_job(ws, "saliency", device="cpu", batch_size=1, shard_rows=2)
        distributor.run(ws, rerun)
    assert _rows(ws, "masks") == reference["masks"]
    _no_duplicate_keys(ws, "masks", "image_id, segmenter, params_hash")


# -- options and errors ----------------------------------------------------------------------------------
def test_unknown_engine_and_bad_options_are_clear_errors() -> None:
    with pytest.raises(PluginError, match="unknown distributor 'spark'"):
        make_distributor("spark")
    with pytest.raises(InputError, match="concurrency"):
        make_distributor("ray", EngineOptions(concurrency=0))


def test_run_job_by_engine_name(source_ws: Path, tmp_path: Path) -> None:
    ws = _copy(source_ws, tmp_path)
    done = run_job(ws, segment_job(ws, "saliency", device="cpu"), "local")
    assert done.shards_run == 1 and ws.count("masks") == 6


def test_cli_engine_option(source_ws: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    from typer.testing import CliRunner

    from fbmem_data.cli.app import build_app

    request.getfixturevalue("ray_session")  # the command reuses the session's Ray instead of starting one
    ws = _copy(source_ws, tmp_path)
    result = CliRunner().invoke(build_app(), ["segment", "-w", str(ws.root), "--engine", "ray", "--device", "cpu", "--concurrency", "1"])
    assert result.exit_code == 0, result.output
    assert "engine=ray" in result.output and ws.count("masks") == 6


# -- the diffusion stages: generate and NeMo localization ---------------------------------------------------
GEN_SETTINGS = {"steps": 2, "guidance": 7.0, "height": 64, "width": 64}


@pytest.fixture(scope="module")
def diffusion_ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A saved tiny SD-shaped pipeline (workers load it by path), prompts, NeMo statistics, and the rows
    the extractors' own loops write for generate and localize."""
    import dataclasses

    from fbmem_data.generate import generate
    from fbmem_data.generate.loading import load_pipeline
    from fbmem_data.nemo.activations import compute_activations
    from fbmem_data.nemo.detect import NoiseDiffSettings
    from fbmem_data.nemo.layers import discover_nemo_layers
    from fbmem_data.nemo.localize import LocalizationConfig, localize_prompts
    from fbmem_data.nemo.stats import compute_stats
    from fbmem_data.testing import tiny_sd_pipeline

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("diffusion")
    pipe = tiny_sd_pipeline(seed=0, sample_size=16)
    with torch.no_grad():  # as tests/test_nemo_localize.py: give cross-attention a say on a random model
        for layer in discover_nemo_layers(pipe.unet):
            pipe.unet.get_submodule(layer.name).to_out[0].weight.mul_(30)
    pipe.save_pretrained(root / "model")
    ws = Workspace.init(root / "ws")
    texts = ["a red cube", "a blue ball", "a photo of a cat on a sofa"]
    ws.write("prompts", [{"prompt_id": f"p{i}", "prompt_set": "t", "text": t, "source_key": str(i)} for i, t in enumerate(texts)])
    loaded = load_pipeline(str(root / "model"), device="cpu", model_id="tiny")
    compute_activations(ws, loaded.pipe, "tiny", "t")
    compute_stats(ws, "tiny", "t")
    ws.close()
    source = root / "source"
    shutil.copytree(ws.root, source)
    generate(ws, str(root / "model"), prompt_set="t", seeds="0..1", batch_size=2, device="cpu", model_id="tiny", **GEN_SETTINGS)
    config = LocalizationConfig(noise=NoiseDiffSettings(n_seeds=2, latent_size=16), tau=0.995, skip_not_memorized=False)
    config = dataclasses.replace(config, seed_filter="all")
    localize_prompts(ws, loaded.pipe, "tiny", ["p0", "p2"], config=config, width=16)
    return {
        "model": str(root / "model"),
        "source": source,
        "config": config,
        "generations": _rows(ws, "generations"),
        "generated_images": _rows(ws, "images", "role = 'generated'"),
        "nemo_summary": _rows(ws, "nemo_summary"),
        "nemo_neurons": _rows(ws, "nemo_neurons"),
    }


def _without(rows: list[dict[str, Any]], *keys: str) -> list[dict[str, Any]]:
    return sorted(({k: v for k, v in r.items() if k not in keys} for r in rows), key=repr)


@pytest.mark.slow  # a diffusion pipeline per worker; the engine paths are the ones the tests above cover
def test_generate_rows_match_reference(engine: Any, diffusion_ws: dict[str, Any], tmp_path: Path) -> None:
    from fbmem_data.generate import generate

    ws = _copy(diffusion_ws["source"], tmp_path)
    summary = generate(
        ws, diffusion_ws["model"], engine=engine, prompt_set="t", seeds="0..1", batch_size=2, shard_rows=2,
        device="cpu", model_id="tiny", **GEN_SETTINGS,
    ).to_pylist()
    assert [(s["planned"], s["generated"]) for s in summary] == [(6, 6)]
    assert _rows(ws, "generations") == diffusion_ws["generations"]
    assert _without(_rows(ws, "images", "role = 'generated'"), "ingested_at") == _without(diffusion_ws["generated_images"], "ingested_at")
    assert len([p for p in ws.parts("generations") if p.name.startswith("part-generate-")]) == 3


@pytest.mark.slow
def test_localize_rows_match_reference(engine: Any, diffusion_ws: dict[str, Any], tmp_path: Path) -> None:
    from fbmem_data.nemo.localize import localize_prompts

    ws = _copy(diffusion_ws["source"], tmp_path)
    # one prompt, then both: the second run localizes only p2, in a shard of its own (not taken for p0's)
    localize_prompts(ws, diffusion_ws["model"], "tiny", ["p0"], engine=engine, config=diffusion_ws["config"], width=16, device="cpu")
    localize_prompts(ws, diffusion_ws["model"], "tiny", ["p0", "p2"], engine=engine, config=diffusion_ws["config"],
                     width=16, device="cpu", shard_rows=1)
    assert _without(_rows(ws, "nemo_summary"), "wall_s") == _without(diffusion_ws["nemo_summary"], "wall_s")
    assert _rows(ws, "nemo_neurons") == diffusion_ws["nemo_neurons"]
