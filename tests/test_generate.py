"""fbmem generate on a tiny random SD-v1.4-shaped pipeline: rows, seeds, batching, resume, loading errors."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fbmem_data.errors import InputError, ModelNotFoundError, PluginError
from fbmem_data.generate import generate, generation_id, load_pipeline, parse_seeds, wrap_pipeline
from fbmem_data.generate import generator as generator_module
from fbmem_data.generate import loading as loading_module
from fbmem_data.ids import prompt_id
from fbmem_data.testing import tiny_sd_pipeline
from fbmem_data.workspace import Workspace

MODEL_ID = "tiny-sd"
TEXTS = ["a red cat on a mat", "a blue dog in the snow", "a green house"]
FAST = {"steps": 2, "guidance": 7.0, "height": 64, "width": 64}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    return wrap_pipeline(tiny_sd_pipeline(seed=0), MODEL_ID)


def add_prompts(ws: Workspace, texts: list[str] = TEXTS, prompt_set: str = "t") -> list[str]:
    rows = [
        {"prompt_id": prompt_id(prompt_set, str(i), t), "prompt_set": prompt_set, "text": t, "source_key": str(i)}
        for i, t in enumerate(texts)
    ]
    ws.write("prompts", rows)
    return [r["prompt_id"] for r in rows]


def stored_pixels(ws: Workspace, image_id: str) -> np.ndarray:
    return np.asarray(Image.open(ws.image_path(image_id)).convert("RGB"), dtype=np.int16)


def test_parse_seeds() -> None:
    assert parse_seeds(None, 3, 5) == [5, 6, 7]
    assert parse_seeds("0..3", 1) == [0, 1, 2, 3]
    assert parse_seeds("2,7,0..1", 1) == [2, 7, 0, 1]
    with pytest.raises(InputError, match="repeat"):
        parse_seeds("2,7,1..2", 1)
    assert parse_seeds([4, 1], 9) == [4, 1]
    for bad in ("x", "3..1", "-1"):
        with pytest.raises(InputError):
            parse_seeds(bad, 1)


def test_generate_writes_rows(workspace: Workspace, tiny) -> None:
    pids = add_prompts(workspace)
    summary = generate(workspace, tiny, prompt_set="t", seeds="3..4", batch_size=4, **FAST).to_pylist()
    assert summary[0] | {"run_id": None} == {
        "mitigation": "none", "mitigation_params": "{}", "planned": 6, "already_stored": 0, "generated": 6, "run_id": None
    }
    gens = workspace.sql("SELECT * FROM generations ORDER BY prompt_id, seed").to_pylist()
    assert len(gens) == 6
    assert {(g["prompt_id"], g["seed"]) for g in gens} == {(p, s) for p in pids for s in (3, 4)}
    run_id = summary[0]["run_id"]
    for g in gens:
        assert g["generation_id"] == generation_id(
            prompt_id=g["prompt_id"], model_id=MODEL_ID, seed=g["seed"], steps=2, guidance=7.0, height=64,
            width=64, mitigation="none", mitigation_params={},
        )
        assert (g["model_id"], g["steps"], g["guidance"], g["height"], g["width"]) == (MODEL_ID, 2, 7.0, 64, 64)
        assert (g["mitigation"], json.loads(g["mitigation_params"]), g["mitigation_detail"]) == ("none", {}, None)
        assert g["run_id"] == run_id
    images = workspace.sql(
        "SELECT i.* FROM images i JOIN generations g USING (image_id) WHERE i.role = 'generated'"
    ).to_pylist()
    assert len(images) == 6
    for row in images:
        path = workspace.root / row["store_path"]
        assert path.is_file() and path.suffix == ".png" and path.stat().st_size == row["n_bytes"]
        with Image.open(path) as im:
            assert (im.size, im.mode, im.format) == ((64, 64), "RGB", "PNG")
        assert (row["status"], row["width"], row["height"], row["run_id"]) == ("ok", 64, 64, run_id)
    # Different seeds give different images.
    assert len({g["image_id"] for g in gens}) == 6
    run = workspace.sql("SELECT * FROM runs WHERE run_id = $r", {"r": run_id}).to_pylist()[0]
    assert (run["command"], run["status"]) == ("generate", "ok")
    config = json.loads(run["config"])
    assert config["seeds"] == [3, 4] and config["dtype"] == "fp32" and config["scheduler"] == "DDIMScheduler"
    assert json.loads(run["model_versions"]) == {MODEL_ID: ""}


def test_same_seed_same_image_whatever_the_batch(tmp_path: Path, tiny) -> None:
    by_batch = {}
    for batch_size in (1, 4):
        ws = Workspace.init(tmp_path / f"ws{batch_size}")
        add_prompts(ws)
        generate(ws, tiny, prompt_set="t", seeds="0,1", batch_size=batch_size, **FAST)
        by_batch[batch_size] = {
            r["generation_id"]: stored_pixels(ws, r["image_id"])
            for r in ws.sql("SELECT generation_id, image_id FROM generations").to_pylist()
        }
    assert by_batch[1].keys() == by_batch[4].keys() and len(by_batch[1]) == 6
    for gid, pixels in by_batch[1].items():
        # Batched float kernels round differently in the last bit: at most one grey level.
        assert np.abs(pixels - by_batch[4][gid]).max() <= 1
    # The same batch composition is bit-exact.
    ws = Workspace.init(tmp_path / "again")
    add_prompts(ws)
    generate(ws, tiny, prompt_set="t", seeds="0,1", batch_size=4, **FAST)
    for r in ws.sql("SELECT generation_id, image_id FROM generations").to_pylist():
        assert np.array_equal(stored_pixels(ws, r["image_id"]), by_batch[4][r["generation_id"]])


def test_resume_after_a_killed_batch_without_duplicates(workspace: Workspace, tiny, monkeypatch) -> None:
    add_prompts(workspace)
    real_run = generator_module.run_pipeline
    calls = {"n": 0}

    def dies_on_second_batch(pipe, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_run(pipe, batch)

    monkeypatch.setattr(generator_module, "run_pipeline", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        generate(workspace, tiny, prompt_set="t", n=2, batch_size=4, **FAST)
    assert workspace.count("generations") == 4  # the first batch survived, the second is lost
    assert workspace.sql("SELECT status FROM runs").column("status").to_pylist() == ["interrupted"]
    monkeypatch.setattr(generator_module, "run_pipeline", real_run)

    summary = generate(workspace, tiny, prompt_set="t", n=2, batch_size=4, **FAST).to_pylist()[0]
    assert (summary["planned"], summary["already_stored"], summary["generated"]) == (6, 4, 2)
    again = generate(workspace, tiny, prompt_set="t", n=3, batch_size=4, **FAST).to_pylist()[0]
    assert (again["already_stored"], again["generated"]) == (6, 3)
    counts = workspace.sql(
        "SELECT count(*) AS n, count(DISTINCT generation_id) AS ids, count(DISTINCT (prompt_id, seed)) AS ps "
        "FROM generations"
    ).to_pylist()[0]
    assert counts == {"n": 9, "ids": 9, "ps": 9}
    dup = workspace.sql("SELECT image_id, role, count(*) AS c FROM images GROUP BY ALL HAVING c > 1")
    assert dup.num_rows == 0


def test_mitigation_params_recorded(workspace: Workspace, tiny) -> None:
    pids = add_prompts(workspace, TEXTS[:1])
    summary = generate(
        workspace, tiny, prompt_ids=pids, seeds="0", mitigations=["none", "rta", "wen"],
        mitigation_params={"n_tokens": 2, "wen.target_loss": 0.0, "wen.max_iters": 1}, **FAST,
    ).to_pylist()
    assert [s["mitigation"] for s in summary] == ["none", "rta", "wen"]
    rows = {r["mitigation"]: r for r in workspace.sql("SELECT * FROM generations").to_pylist()}
    assert len({r["generation_id"] for r in rows.values()}) == 3
    assert json.loads(rows["rta"]["mitigation_params"]) == {"n_tokens": 2}
    rta_detail = json.loads(rows["rta"]["mitigation_detail"])
    assert len(rta_detail["tokens"]) == 2 and rta_detail["prompt"] != TEXTS[0]
    assert all(tok in rta_detail["prompt"].split() for tok in rta_detail["tokens"])
    assert json.loads(rows["wen"]["mitigation_params"]) == {"lr": 0.05, "max_iters": 1, "target_loss": 0.0, "stack": 4}
    wen_detail = json.loads(rows["wen"]["mitigation_detail"])
    assert wen_detail["iterations"] == 1 and wen_detail["final_loss"] < wen_detail["initial_loss"]
    for name, params in (("rta", {"n_tokens": 2}), ("wen", {"lr": 0.05, "max_iters": 1, "target_loss": 0.0, "stack": 4})):
        assert rows[name]["generation_id"] == generation_id(
            prompt_id=pids[0], model_id=MODEL_ID, seed=0, steps=2, guidance=7.0, height=64, width=64,
            mitigation=name, mitigation_params=params,
        )
    assert rows["rta"]["image_id"] != rows["none"]["image_id"] != rows["wen"]["image_id"]


def test_bad_selections_fail_clearly(workspace: Workspace, tiny) -> None:
    add_prompts(workspace)
    with pytest.raises(InputError, match="no prompts selected"):
        generate(workspace, tiny, **FAST)
    with pytest.raises(InputError, match="not found"):
        generate(workspace, tiny, prompt_ids=["nope"], **FAST)
    with pytest.raises(InputError, match="no prompts"):
        generate(workspace, tiny, prompt_set="empty", **FAST)
    with pytest.raises(PluginError, match="unknown mitigation"):
        generate(workspace, tiny, prompt_set="t", mitigations=["nonexistent"], **FAST)
    with pytest.raises(PluginError, match="takes a parameter"):
        generate(workspace, tiny, prompt_set="t", mitigations=["none"], mitigation_params={"n_tokens": 2}, **FAST)
    with pytest.raises(InputError, match="multiples"):
        generate(workspace, tiny, prompt_set="t", **(FAST | {"height": 60}))
    assert workspace.count("generations") == 0


def test_missing_models_raise_model_not_found(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ModelNotFoundError, match="neither"):
        load_pipeline(str(tmp_path / "no-such-dir"), device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match=r"model_index\.json"):
        load_pipeline(str(tmp_path / "empty"), device="cpu")
    monkeypatch.setattr(loading_module, "hf_cache_dir", lambda: tmp_path / "hf-cache")
    with pytest.raises(ModelNotFoundError) as info:
        load_pipeline("CompVis/stable-diffusion-v1-4", device="cpu")
    text = str(info.value)
    assert "not in the local Hugging Face cache" in text and str(tmp_path / "hf-cache") in text
    assert "hf download CompVis/stable-diffusion-v1-4" in text


def _fake_hub_cache(cache: Path, repo_id: str, saved: Path, commit: str) -> None:
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(saved, repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)


@pytest.mark.slow
def test_local_directory_and_cached_hub_id_load(tmp_path: Path, monkeypatch) -> None:
    saved = tmp_path / "tiny-dir"
    tiny_sd_pipeline(seed=1).save_pretrained(saved)
    local = load_pipeline(str(saved), device="cpu", dtype="auto")
    assert (local.model_id, local.dtype, local.revision) == (str(saved.resolve()), "fp32", None)
    assert type(local.pipe.scheduler).__name__ == "DDIMScheduler" and local.pipe.safety_checker is None

    commit = "0123456789abcdef0123456789abcdef01234567"
    _fake_hub_cache(tmp_path / "hf-cache", "fbmem-test/tiny-sd", saved, commit)
    monkeypatch.setattr(loading_module, "hf_cache_dir", lambda: tmp_path / "hf-cache")
    hub = load_pipeline("fbmem-test/tiny-sd", device="cpu", dtype="fp32")
    assert (hub.model_id, hub.revision) == ("fbmem-test/tiny-sd", commit)
    # A snapshot with a weight file missing names the download command.
    (tmp_path / "hf-cache" / "models--fbmem-test--tiny-sd" / "snapshots" / commit / "unet" / "config.json").unlink()
    with pytest.raises(ModelNotFoundError, match="hf download fbmem-test/tiny-sd"):
        load_pipeline("fbmem-test/tiny-sd", device="cpu")


@pytest.mark.slow
def test_cli_generate_from_a_directory(tmp_path: Path, monkeypatch, capsys) -> None:
    saved = tmp_path / "tiny-dir"
    tiny_sd_pipeline(seed=2).save_pretrained(saved)
    ws = Workspace.init(tmp_path / "ws")
    add_prompts(ws, TEXTS[:2])
    args = [
        "generate", "-w", str(ws.root), "--model", str(saved), "--prompts", "t",
        "--seeds", "0..1", "--steps", "2", "--batch-size", "3", "--mitigation", "none", "--mitigation", "rta",
        "--mitigation-param", "rta.n_tokens=3", "--no-progress", "-f", "json", "--model-id", "tiny-dir",
    ]
    out = run_cli(args, capsys)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert [(s["mitigation"], s["generated"]) for s in summary] == [("none", 4), ("rta", 4)]
    assert summary[1]["mitigation_params"] == {"n_tokens": 3}  # a JSON column: an object in -f json
    assert ws.sql("SELECT DISTINCT model_id FROM generations").column("model_id").to_pylist() == ["tiny-dir"]
    monkeypatch.setattr(loading_module, "hf_cache_dir", lambda: tmp_path / "empty-cache")
    bad = run_cli([*args[:3], "--model", "CompVis/stable-diffusion-v1-4", "--prompts", "t"], capsys)
    assert bad.returncode == 1 and "hf download CompVis/stable-diffusion-v1-4" in bad.stderr


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> subprocess.CompletedProcess[str]:
    """`fbmem ARGS` in this process (the tiny model is already imported; a subprocess costs ~10 s here)."""
    from fbmem_data.cli.app import main

    capsys.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def test_lab_model_path(workspace: Workspace, monkeypatch) -> None:
    lab = pytest.importorskip("fbmem_data.lab.pipeline")
    weights = lab.default_weights_dir()
    if not (weights / lab.UNET_FILE).is_file():
        # No shipped weights yet: the `lab` path runs on the random-initialised lab pipeline.
        with pytest.raises(ModelNotFoundError, match="lab"):
            lab.load_lab_pipeline()
        monkeypatch.setattr(lab, "load_lab_pipeline", lambda path=None, device="cpu": lab.build_lab_pipeline(seed=0))
    pid = add_prompts(workspace, ["a small red circle on stripes"])[0]
    summary = generate(workspace, "lab", prompt_ids=[pid], seeds="0", steps=2, device="cpu").to_pylist()[0]
    assert summary["generated"] == 1
    row = workspace.sql("SELECT * FROM generations").to_pylist()[0]
    assert row["model_id"] == lab.LAB_MODEL_ID
    size = lab.LabModelConfig().image_size
    assert (row["height"], row["width"]) == (size, size)


def test_wen_detection_score_is_the_text_conditional_noise_norm(tiny) -> None:
    from fbmem_data.generate import initial_latents
    from fbmem_data.mitigate.wen import encode_prompts, first_timestep, wen_detection_score

    pipe = tiny.pipe
    prompts = TEXTS[:2]
    scores = wen_detection_score(pipe, prompts, seeds=[0, 1], steps=1, guidance=7.5, height=64, width=64, batch_size=3)
    # One step: the norm at x_T and t_0, computed directly, averaged over the seeds.
    cond, uncond = encode_prompts(pipe, prompts)
    t = first_timestep(pipe, 1)
    expected = []
    with torch.no_grad():
        for i in range(len(prompts)):
            norms = []
            for seed in (0, 1):
                x = initial_latents(pipe, [seed], 64, 64)
                eps_c = pipe.unet(x, t, encoder_hidden_states=cond[i : i + 1]).sample
                eps_u = pipe.unet(x, t, encoder_hidden_states=uncond[i : i + 1]).sample
                norms.append(float((eps_c - eps_u).norm()))
            expected.append(sum(norms) / 2)
    assert scores == pytest.approx(expected, rel=1e-4)
    several = wen_detection_score(pipe, prompts, seeds=[0, 1], steps=3, height=64, width=64, batch_size=1)
    assert several == pytest.approx(
        wen_detection_score(pipe, prompts, seeds=[0, 1], steps=3, height=64, width=64, batch_size=4), rel=1e-4
    )
    assert len(pipe.unet._forward_hooks) == 0
    with pytest.raises(InputError, match="guidance > 1"):
        wen_detection_score(pipe, prompts, guidance=1.0)


def test_wen_optimisation_follows_the_reference_rules(tiny) -> None:
    from fbmem_data.generate import GenerationJob
    from fbmem_data.generate.generator import make_batch
    from fbmem_data.mitigate import create_mitigation
    from fbmem_data.mitigate.protocol import GenerationSettings
    from fbmem_data.mitigate.wen import encode_prompts

    pipe = tiny.pipe
    jobs = [GenerationJob("g0", "p0", TEXTS[0], 0), GenerationJob("g1", "p1", TEXTS[1], 1)]
    batch = make_batch(pipe, jobs, GenerationSettings(2, 7.0, 64, 64))
    probe = create_mitigation("wen", target_loss=0.0, max_iters=0)
    _, _, details = probe.optimise(pipe, batch)
    low, high = sorted(d["initial_loss"] for d in details)
    # A target between the two rows' losses: one row is already there (left untouched), the other optimises.
    wen = create_mitigation("wen", target_loss=(low + high) / 2, max_iters=3, stack=1)
    embeds, negative, details = wen.optimise(pipe, batch)
    original, empty = encode_prompts(pipe, batch.prompts)
    assert torch.equal(negative, empty)
    done = [d["initial_loss"] <= (low + high) / 2 for d in details]
    for row, detail in enumerate(details):
        if done[row]:
            assert detail["iterations"] == 0 and detail["reached_target"]
            assert torch.equal(embeds[row], original[row])
        else:
            assert 1 <= detail["iterations"] <= 3 and detail["final_loss"] < detail["initial_loss"]
            assert not torch.equal(embeds[row], original[row])
        # The first token's gradient is zeroed: only AdamW's decoupled weight decay (0.01) moves it, as in
        # the reference code.
        decay = (1 - 0.05 * 0.01) ** detail["iterations"]
        assert torch.allclose(embeds[row, 0], original[row, 0] * decay, rtol=1e-5, atol=1e-7)


def test_wen_target_is_a_norm_over_the_reference_stack_of_four(tiny) -> None:
    from fbmem_data.generate import GenerationJob
    from fbmem_data.generate.generator import make_batch
    from fbmem_data.mitigate import create_mitigation
    from fbmem_data.mitigate.protocol import GenerationSettings

    # the reference's 3 is one norm over a prompt's 4 stacked images: 1.5 per image when they are alike
    assert create_mitigation("wen").per_image_target == pytest.approx(1.5)
    assert create_mitigation("wen", stack=1).per_image_target == 3.0
    with pytest.raises(InputError, match="stack"):
        create_mitigation("wen", stack=0)
    jobs = [GenerationJob("g0", "p0", TEXTS[0], 0)]
    batch = make_batch(tiny.pipe, jobs, GenerationSettings(2, 7.0, 64, 64))
    (loss,) = [d["initial_loss"] for d in create_mitigation("wen", target_loss=0.0, max_iters=0).optimise(tiny.pipe, batch)[2]]
    # a target the image meets on its own but not as a quarter of a stack of four: stack 4 optimises
    target = loss * 1.5
    per_image = create_mitigation("wen", target_loss=target, max_iters=2, stack=1).optimise(tiny.pipe, batch)[2][0]
    stacked = create_mitigation("wen", target_loss=target, max_iters=2).optimise(tiny.pipe, batch)[2][0]
    assert per_image["iterations"] == 0 and per_image["reached_target"]
    assert stacked["iterations"] >= 1 and stacked["final_loss"] < loss


def test_rta_inserts_seeded_vocabulary_words(tiny) -> None:
    import random

    from fbmem_data.mitigate.rta import RandomTokenAddition, add_random_tokens, random_tokens

    tokenizer = tiny.pipe.tokenizer
    tokens = random_tokens(tokenizer, random.Random(0), 50)
    assert len(tokens) == 50
    for token in tokens:
        assert " " not in token and not token.startswith("##") and token not in tokenizer.all_special_tokens
        assert tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id
    new, positions = add_random_tokens("a b c", ["X", "Y"], random.Random(1))
    assert sorted(new.split()) == ["X", "Y", "a", "b", "c"] and len(positions) == 2
    rta = RandomTokenAddition(n_tokens=4)
    assert rta.rng_for("p", 0).random() == rta.rng_for("p", 0).random() != rta.rng_for("p", 1).random()
    with pytest.raises(InputError):
        RandomTokenAddition(n_tokens=0)


def test_identical_images_in_a_batch_get_one_images_row(workspace: Workspace, tiny, monkeypatch) -> None:
    add_prompts(workspace)
    monkeypatch.setattr(
        generator_module, "run_pipeline", lambda pipe, batch: np.zeros((len(batch), 64, 64, 3), dtype=np.uint8)
    )
    generate(workspace, tiny, prompt_set="t", n=2, batch_size=4, **FAST)
    assert workspace.count("generations") == 6
    assert workspace.sql("SELECT count(DISTINCT image_id) AS n FROM generations").column("n")[0].as_py() == 1
    assert workspace.count("images") == 1


def test_zero_mean_initial_noise_is_per_seed_and_only_where_the_pipeline_asks() -> None:
    from fbmem_data.generate import initial_latents
    from fbmem_data.lab.pipeline import LabModelConfig, build_lab_pipeline

    tiny = dict(vae_channels=(16, 16, 16), unet_channels=(16, 32, 32), unet_layers_per_block=1)
    lab = build_lab_pipeline(LabModelConfig(**tiny))  # the lab's default: zero-mean x_T
    plain = build_lab_pipeline(LabModelConfig(**tiny, zero_mean_noise=False))
    assert lab.fbmem_initial_noise == "zero-mean" and plain.fbmem_initial_noise == "gaussian"
    x = initial_latents(lab, [3, 4], 64, 64)
    means, stds = x.mean(dim=(2, 3)), x.std(dim=(2, 3))
    assert torch.allclose(means, torch.zeros_like(means), atol=1e-6) and torch.allclose(stds, torch.ones_like(stds), atol=1e-5)
    # the same seed gives the same x_T alone or in a batch, and it is the standard draw re-centred
    assert torch.equal(initial_latents(lab, [4], 64, 64)[0], x[1])
    raw = initial_latents(plain, [4], 64, 64)[0]
    assert not torch.allclose(raw.mean(dim=(1, 2)), torch.zeros(raw.shape[0]), atol=1e-3)
    centred = raw - raw.mean(dim=(1, 2), keepdim=True)
    assert torch.allclose(x[1], centred / centred.std(dim=(1, 2), keepdim=True), atol=1e-6)


def test_another_prompt_later_is_generated_not_taken_for_done_work(workspace: Workspace, tiny) -> None:
    """Each run's shards are named by the images they hold: a second run for another prompt, with the same
    settings and positions in its plan, generates its images instead of finding the first run's parts."""
    pids = add_prompts(workspace)
    first = generate(workspace, tiny, prompt_ids=pids[:1], seeds="0,1", batch_size=2, **FAST).to_pylist()[0]
    second = generate(workspace, tiny, prompt_ids=pids[1:2], seeds="0,1", batch_size=2, **FAST).to_pylist()[0]
    assert (first["generated"], second["generated"]) == (2, 2)
    assert workspace.sql("SELECT count(DISTINCT prompt_id) AS n FROM generations").column("n")[0].as_py() == 2
    assert workspace.count("generations") == 4
    # one batch per shard by default: a killed run loses at most one batch (as the batch-by-batch loop did)
    assert len([p for p in workspace.parts("generations") if p.name.startswith("part-generate-")]) == 2


def test_generate_request_is_checked_before_any_model_loads(workspace: Workspace, tiny) -> None:
    from fbmem_data.generate import GenerateRequest

    with pytest.raises(InputError, match="listed twice"):
        GenerateRequest(mitigations=("none", "none"))
    with pytest.raises(InputError, match="finite"):
        generate(workspace, "no-such-model", request=GenerateRequest(prompt_set="t"), guidance=float("inf"))
    add_prompts(workspace)
    with pytest.raises(InputError, match="ray engine loads the model on its workers"):
        generate(workspace, tiny, prompt_set="t", engine=_NotHere())


class _NotHere:
    """A distributor that runs elsewhere (as ray does), without starting anything."""

    name = "ray"
    in_process = False

    def run(self, ws, job):  # pragma: no cover - never reached: the stage refuses first
        raise AssertionError("not reached")


def test_guidance_defaults_to_the_models_own_scale(workspace: Workspace) -> None:
    """No guidance given: the pipeline's own scale (the lab records one per model), else the reference 7.0.
    generate and its dry run resolve it alike, so the dry run plans exactly the ids generate stored."""
    from fbmem_data.generate import GenerateRequest
    from fbmem_data.generate.dry_run import plan_generation
    from fbmem_data.generate.loading import REFERENCE_GUIDANCE, resolve_guidance

    add_prompts(workspace, TEXTS[:1])
    fast = {k: v for k, v in FAST.items() if k != "guidance"}
    assert GenerateRequest().guidance is None
    plain = wrap_pipeline(tiny_sd_pipeline(seed=0), "tiny-plain")
    own = wrap_pipeline(tiny_sd_pipeline(seed=0), "tiny-own-scale")
    own.pipe.fbmem_guidance = 2.5
    assert (resolve_guidance(plain.pipe), resolve_guidance(own.pipe), resolve_guidance(own.pipe, 4)) == (REFERENCE_GUIDANCE, 2.5, 4.0)
    for model in (plain, own):
        generate(workspace, model, prompt_set="t", seeds="0", **fast)
        again = plan_generation(workspace, model, prompt_set="t", seeds="0", **fast).to_pylist()[0]
        assert (again["planned"], again["pending"]) == (1, 0)
    generate(workspace, own, prompt_set="t", seeds="0", guidance=4.0, **fast)  # given: it wins
    used = workspace.sql("SELECT model_id, guidance FROM generations ORDER BY model_id, guidance").to_pylist()
    assert [(r["model_id"], r["guidance"]) for r in used] == [("tiny-own-scale", 2.5), ("tiny-own-scale", 4.0), ("tiny-plain", 7.0)]
