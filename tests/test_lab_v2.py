"""Lab v2: its data set, its model shape (text only through NeMo's layers), training from scratch, and
v1 staying loadable beside it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fbmem_data.lab.dataset import LabConfig, make_lab_dataset
from fbmem_data.lab.pipeline import (
    LAB_MODEL_ID,
    LAB_V2_MODEL_ID,
    LabModelConfig,
    build_lab_pipeline,
    default_weights_dir,
    load_lab_pipeline,
    read_weights_info,
)
from fbmem_data.nemo.hooks import blocked_neurons, keep_masks
from fbmem_data.nemo.layers import discover_nemo_layers

TINY_V1 = LabModelConfig(vae_channels=(16, 16, 16), unet_channels=(16, 32, 32), unet_layers_per_block=1)
TINY_V2 = replace(LabModelConfig.v2(), vae_channels=(16, 16, 16), unet_channels=(16, 32, 32), unet_layers_per_block=1)
TINY_LAB = LabConfig(vm_groups=2, fm_groups=1, fm_images=2, bm_groups=1, bm_images=2, template_groups=0,
                     unique_images=4, control_prompts=1, heldout_images=1)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_v2_data_set_has_eight_prompts_per_planted_group() -> None:
    cfg = LabConfig.v2()
    assert min(cfg.vm_groups, cfg.fm_groups, cfg.bm_groups) >= 8
    # one generation out of 8 prompts x 4 seeds moves a group's share by 1/32 < 0.05
    assert 1 / (cfg.vm_groups * 4) < 0.05
    assert LabConfig.from_dict({**cfg.__dict__, "unknown_key": 1}) == cfg


def test_v1_data_set_defaults_are_the_shipped_v1_data_set() -> None:
    # the demo's and every stored result's prompt ids depend on the v1 data set staying as it is
    info = read_weights_info(default_weights_dir())
    assert LabConfig.from_dict(info.training["lab_config"]) == LabConfig()


def test_v2_data_set_is_deterministic_from_its_seed() -> None:
    a = make_lab_dataset(0, LabConfig.v2())
    b = make_lab_dataset(0, LabConfig.v2())
    assert [(p.key, p.text) for p in a.prompts] == [(p.key, p.text) for p in b.prompts]
    assert {k: im.png_bytes() for k, im in a.images.items()} == {k: im.png_bytes() for k, im in b.images.items()}
    groups = [p.group for p in a.prompts]
    assert min(groups.count("VM"), groups.count("FM"), groups.count("BM")) >= 8


def test_shipped_v1_keeps_its_id_and_shape() -> None:
    info = read_weights_info(default_weights_dir())
    assert info.model_id == LAB_MODEL_ID == "fbmem-lab-v1.3"
    assert info.model.up_cross_attention  # a config without the key is v1's shape
    assert info.model.nemo_blocks == ("down_blocks", "mid_block")


def test_v2_text_reaches_the_unet_only_through_nemo_layers() -> None:
    """All NeMo neurons blocked: the v2 UNet's output no longer depends on the prompt; v1's still does
    (its up blocks read the text too)."""
    from fbmem_data.lab.pipeline import build_unet

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 16, 16, generator=gen)
    embeds = torch.randn(2, 77, 384, generator=gen)  # two prompts' states (the property is the UNet's)
    t = torch.tensor([500])
    for config, independent in ((TINY_V2, True), (TINY_V1, False)):
        torch.manual_seed(0)
        unet = build_unet(config).eval()
        layers = discover_nemo_layers(unet)
        every_cross_attention = [n for n, _ in unet.named_modules() if n.endswith("attn2")]
        assert ([layer.name for layer in layers] == every_cross_attention) is independent
        masks = keep_masks(layers, [{layer.index: list(range(layer.width)) for layer in layers}])
        with torch.no_grad():
            plain = unet(x.repeat(2, 1, 1, 1), t, embeds).sample
            with blocked_neurons(layers, masks):
                blocked = unet(x.repeat(2, 1, 1, 1), t, embeds).sample
        assert not torch.allclose(plain[0], plain[1], atol=1e-5)  # the prompt matters unblocked
        assert torch.allclose(blocked[0], blocked[1], atol=1e-5) is independent


def test_nemo_layer_set_is_a_per_model_setting() -> None:
    default = discover_nemo_layers(build_lab_pipeline(TINY_V1).unet)
    with_up = discover_nemo_layers(build_lab_pipeline(replace(TINY_V1, nemo_blocks=("down_blocks", "mid_block", "up_blocks"))).unet)
    assert all(not layer.name.startswith("up_blocks") for layer in default)
    # NeMo's own layers keep their indices 0..6 (diffusers registers up_blocks before mid_block)
    assert [(layer.index, layer.name) for layer in with_up[: len(default)]] == [(layer.index, layer.name) for layer in default]
    assert len(with_up) > len(default) and with_up[-1].name.startswith("up_blocks")
    # a plain diffusers UNet (no setting) keeps NeMo's down and mid blocks
    unet = build_lab_pipeline(TINY_V1).unet
    del unet.fbmem_nemo_blocks
    assert [layer.name for layer in discover_nemo_layers(unet)] == [layer.name for layer in default]


def test_v2_trains_from_scratch_and_records_its_stages(tmp_path: Path) -> None:
    from fbmem_data.lab.train import TrainConfig, train_lab

    cfg = TrainConfig(ae_steps=2, ae_batch=4, unet_steps=3, unet_batch=4, warmup_steps=1, log_every=100, checkpoint_every=2)
    train_lab(tmp_path / "v2", tmp_path / "ckpt", cfg, TINY_V2, TINY_LAB, log=None, model_id=LAB_V2_MODEL_ID)
    info = read_weights_info(tmp_path / "v2")
    assert info.model_id == LAB_V2_MODEL_ID
    assert info.model.prediction_type == "v_prediction" and info.model.zero_terminal_snr
    assert not info.model.up_cross_attention
    stages = info.training["stages"]
    assert [s["what"].split()[0] for s in stages] == ["autoencoder", "UNet"]
    assert "from scratch" in stages[1]["what"] and "steps 1-3 of a 3-step" in stages[1]["what"]
    assert LabConfig.from_dict(info.training["lab_config"]) == replace(TINY_LAB, seed=0)
    pipe = load_lab_pipeline(tmp_path / "v2")
    assert not any(n.startswith("up_blocks") and n.endswith("attn2") for n, _ in pipe.unet.named_modules())
    assert pipe.scheduler.config.prediction_type == "v_prediction"


def test_cli_lab_train_rejects_unknown_presets_and_v2_fine_tunes(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fbmem_data.cli.app import build_app
    from fbmem_data.errors import InputError

    runner = CliRunner()
    base = ["lab", "train", "--out", str(tmp_path / "o"), "--checkpoints", str(tmp_path / "c"), "--segmenter-steps", "0"]
    bad = runner.invoke(build_app(), [*base, "--preset", "v3"])
    assert isinstance(bad.exception, InputError) and "v3" in str(bad.exception)
    tune = runner.invoke(build_app(), [*base, "--preset", "v2", "--init-from", str(default_weights_dir())])
    assert isinstance(tune.exception, InputError) and "from scratch" in str(tune.exception)
    assert not (tmp_path / "o").exists()


def test_demo_and_nemo_commands_name_the_lab_model(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fbmem_data.cli.app import build_app
    from fbmem_data.cli.nemo_cmds import _model_id
    from fbmem_data.errors import InputError
    from fbmem_data.generate.loading import model_source_names

    assert {"lab", "lab-v2"} <= set(model_source_names())
    assert (_model_id("lab", None), _model_id("lab-v2", None)) == (LAB_MODEL_ID, LAB_V2_MODEL_ID)
    bad = CliRunner().invoke(build_app(), ["demo", "--model", "lab-v9", "-w", str(tmp_path / "ws")])
    assert isinstance(bad.exception, InputError) and "lab-v9" in str(bad.exception)
    assert not (tmp_path / "ws").exists()  # refused before a workspace was made


def test_cli_lab_dataset_writes_the_v2_data_set(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fbmem_data.cli.app import build_app
    from fbmem_data.lab.ingest import write_lab_dataset
    from fbmem_data.workspace import Workspace

    result = CliRunner().invoke(build_app(), ["lab", "dataset", "--model", "lab-v2", "-w", str(tmp_path / "ws")])
    assert result.exit_code == 0, result.output
    ws = Workspace.open(tmp_path / "ws")
    rows = ws.sql("SELECT planted_group, count(*) AS n FROM lab_truth GROUP BY 1").to_pylist()
    counts = {r["planted_group"]: r["n"] for r in rows}
    assert min(counts["VM"], counts["FM"], counts["BM"]) >= 8 and counts["unique"] == 192
    # the same data set written again adds no row: same seed, same prompt and image ids
    again = write_lab_dataset(ws, make_lab_dataset(0, LabConfig.v2()))
    assert sum(again.values()) == 0, again


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_nemo_noise_difference_uses_the_predicted_noise_of_any_prediction_type(kind: str) -> None:
    from fbmem_data.lab.pipeline import build_scheduler
    from fbmem_data.nemo.detect import predicted_noise

    sched = build_scheduler(replace(LabModelConfig.v2(), prediction_type=kind))
    t = 979  # NeMo's timestep (index 1 of 50 trailing steps) on the zero-terminal-SNR schedule
    a = sched.alphas_cumprod[t]
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 8, 16, 16, generator=gen), torch.randn(2, 8, 16, 16, generator=gen)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    output = {"epsilon": eps, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0, "sample": x0}[kind]
    torch.testing.assert_close(predicted_noise(sched, x_t, output, torch.tensor(t)), eps, atol=1e-4, rtol=1e-4)
    if kind == "epsilon":
        assert predicted_noise(sched, x_t, output, t) is output  # SD's noise difference is untouched


def test_lab_colours_judges_the_prompts_of_the_lab_model_it_is_given() -> None:
    from fbmem_data.lab.colours import LabColourJudge

    v2 = LabColourJudge(device="cpu", lab_model="lab-v2")
    controls = [p.text for p in make_lab_dataset(0, LabConfig.v2()).prompts if p.group == "control"]
    assert len(controls) == 32 and all(t in v2.named for t in controls)
    assert v2.params()["lab_model"] == "lab-v2"
    assert "lab_model" not in LabColourJudge(device="cpu").params()  # v1's utility ids stay the same


def test_demo_and_lab_eval_run_lab_v2_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark's lab is v2; v1.3 stays one option away (`--model lab`)."""
    import inspect

    from typer.testing import CliRunner

    import fbmem_data.lab.demo as demo
    from fbmem_data.cli.app import build_app

    assert inspect.signature(demo.run_demo).parameters["model"].default == "lab-v2"  # the library agrees
    seen: list[str] = []
    monkeypatch.setattr(demo, "run_demo", lambda ws, cfg, *, model, **kw: seen.append(model))
    monkeypatch.setattr(demo, "format_result", lambda result: "")
    for args in (["demo"], ["lab", "eval"], ["demo", "--model", "lab"]):
        result = CliRunner().invoke(build_app(), [*args, "-w", str(tmp_path / "ws")])
        assert result.exit_code == 0, result.output
    assert seen == ["lab-v2", "lab-v2", "lab"]


def test_a_loaded_lab_pipeline_carries_its_models_guidance() -> None:
    """`fbmem generate --model lab-v2` without --guidance generates at v2's 2.0 (generate.loading.resolve_guidance)."""
    from fbmem_data.generate.loading import resolve_guidance
    from fbmem_data.lab.pipeline import lab_weights_dir, load_lab_pipeline

    assert resolve_guidance(load_lab_pipeline(lab_weights_dir("lab-v2"))) == 2.0
    assert resolve_guidance(load_lab_pipeline(lab_weights_dir("lab"))) == 7.0


def test_one_command_v2_recipe_is_the_shipped_weights_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`fbmem lab train --preset v2 --out DIR --checkpoints DIR` with nothing else trains what data/lab-v2 ships:
    the same training config and data set (the shipped lab_model.json records both)."""
    from dataclasses import asdict

    from typer.testing import CliRunner

    import fbmem_data.lab.train as train
    from fbmem_data.cli.app import build_app
    from fbmem_data.lab.pipeline import lab_weights_dir

    seen: dict = {}

    def fake_train_lab(out, ckpt, cfg, model, lab_cfg, **kwargs):
        seen.update(cfg=cfg, model=model, lab_cfg=lab_cfg)
        return {"seconds_this_call": 0.0}

    monkeypatch.setattr(train, "train_lab", fake_train_lab)
    monkeypatch.setattr(train, "train_lab_segmenter", lambda *a, **k: pytest.fail("v2 trains no segmenter by default"))
    result = CliRunner().invoke(build_app(), ["lab", "train", "--preset", "v2", "--out", str(tmp_path / "o"),
                                              "--checkpoints", str(tmp_path / "c"), "--no-progress"])
    assert result.exit_code == 0, result.output
    shipped = read_weights_info(lab_weights_dir("lab-v2"))
    # Fields added since the weights were trained are absent from their record: they had the default then.
    assert asdict(seen["cfg"]) == {**asdict(train.TrainConfig()), **shipped.training["train_config"]}
    assert seen["lab_cfg"] == LabConfig.from_dict(shipped.training["lab_config"])
    assert seen["model"] == replace(shipped.model, vae_scaling_factor=seen["model"].vae_scaling_factor)


@pytest.mark.parametrize("model", ["lab", "lab-v2"])
def test_shipped_nemo_neurons_cover_the_planted_prompts_within_the_models_layers(tmp_path: Path, model: str) -> None:
    """The demo blocks these lists: each must name the model's own planted prompts and NeMo neurons."""
    from collections import defaultdict

    from fbmem_data.lab.dataset import MEMORIZED_SET
    from fbmem_data.lab.ingest import write_lab_dataset
    from fbmem_data.lab.pipeline import build_unet, lab_weights_dir, weights_lab_config
    from fbmem_data.nemo.import_csv import import_nemo_csv
    from fbmem_data.workspace import Workspace

    folder = lab_weights_dir(model)
    info = read_weights_info(folder)
    ws = Workspace.open_or_init(tmp_path / "ws")
    write_lab_dataset(ws, make_lab_dataset(info.dataset_seed, weights_lab_config(info)))
    report = import_nemo_csv(ws, folder / "nemo_neurons.csv", model_id=info.model_id, prompt_set=MEMORIZED_SET)
    planted = set(ws.sql("SELECT prompt_id FROM lab_truth WHERE prompt_set = $s", {"s": MEMORIZED_SET}).column(0).to_pylist())
    rows = ws.sql("SELECT prompt_id, layer, neuron FROM nemo_neurons WHERE localization_id = $l AND stage = 'refined'",
                  {"l": report.localization_id}).to_pylist()
    sets: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        sets[r["prompt_id"]][r["layer"]].append(r["neuron"])
    assert set(sets) == planted  # every planted prompt has refined neurons, and nothing else does
    unet = build_unet(info.model)  # it carries the model's NeMo blocks
    layers = discover_nemo_layers(unet)
    keep_masks(layers, list(sets.values()))  # raises on a layer or neuron the model does not have
    width = sum(layer.width for layer in layers)
    assert width == 576 and all(0 < sum(map(len, s.values())) < width for s in sets.values())


def test_train_takes_the_bm_object_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--bm-object-size MIN MAX changes only the data set's BM object range; MIN above MAX is refused."""
    from typer.testing import CliRunner

    import fbmem_data.lab.train as train
    from fbmem_data.cli.app import build_app

    seen: dict = {}

    def fake_train_lab(out, ckpt, cfg, model, lab_cfg, **kwargs):
        seen.update(lab_cfg=lab_cfg)
        return {"seconds_this_call": 0.0}

    monkeypatch.setattr(train, "train_lab", fake_train_lab)
    base = ["lab", "train", "--preset", "v2", "--out", str(tmp_path / "o"), "--checkpoints", str(tmp_path / "c"), "--no-progress"]
    result = CliRunner().invoke(build_app(), [*base, "--bm-object-size", "0.2", "0.35"])
    assert result.exit_code == 0, result.output
    assert seen["lab_cfg"] == replace(LabConfig.v2(0), bm_object_size=(0.2, 0.35))
    seen.clear()
    refused = CliRunner().invoke(build_app(), [*base, "--bm-object-size", "0.3", "0.15"])
    assert refused.exit_code != 0 and not seen
    from fbmem_data.errors import InputError

    assert isinstance(refused.exception, InputError) and "minimum is above the maximum" in str(refused.exception)


def test_value_sparsity_penalty_spans_one_neuron_to_all_and_is_scale_free() -> None:
    from fbmem_data.lab.train import value_sparsity_penalty

    width = 16
    one_hot = torch.nn.Linear(4, width, bias=False)
    with torch.no_grad():
        one_hot.weight.zero_()
        one_hot.weight[3, 0] = 2.0  # every token's values: one neuron active
    flat = torch.nn.Linear(4, width, bias=False)
    with torch.no_grad():
        flat.weight.zero_()
        flat.weight[:, 0] = -1.5  # every neuron equally active
    cond = torch.randn(2, 5, 4)
    cond[..., 0] = cond[..., 0].abs() + 0.5
    assert value_sparsity_penalty([one_hot], cond).item() == pytest.approx(width**-0.5)
    assert value_sparsity_penalty([flat], cond).item() == pytest.approx(1.0)
    assert value_sparsity_penalty([one_hot, flat], cond, weight=0.3).item() == pytest.approx(0.3 * (width**-0.5 + 1) / 2)
    dense = torch.nn.Linear(4, width, bias=False)
    before = value_sparsity_penalty([dense], cond).item()
    with torch.no_grad():
        dense.weight.mul_(10.0)
    # scaling to_v up or down cannot lower it: only making each token use fewer neurons does
    assert value_sparsity_penalty([dense], cond).item() == pytest.approx(before)
    assert width**-0.5 < before < 1.0


def test_value_sparsity_training_makes_the_nemo_layers_sparser_and_is_recorded(tmp_path: Path) -> None:
    from fbmem_data.lab.train import TrainConfig, encode_captions, train_lab, value_sparsity_penalty

    cond = encode_captions(["the bramzor painting", "a pink ring at the top left", ""])
    scores = {}
    for weight in (0.0, 5.0):
        cfg = TrainConfig(ae_steps=2, ae_batch=4, unet_steps=30, unet_batch=4, unet_lr=2e-3, warmup_steps=1,
                          log_every=100, checkpoint_every=100, value_sparsity=weight)
        out = tmp_path / f"w{weight:g}"
        train_lab(out, tmp_path / f"ckpt{weight:g}", cfg, TINY_V2, TINY_LAB, log=None, model_id=LAB_V2_MODEL_ID)
        layers = [layer.to_v for layer in discover_nemo_layers(load_lab_pipeline(out).unet)]
        with torch.no_grad():
            scores[weight] = value_sparsity_penalty(layers, cond).item()
        info = read_weights_info(out)
        assert info.training["train_config"]["value_sparsity"] == weight
        assert ("value sparsity 5" in info.training["stages"][1]["what"]) == (weight > 0)
    assert scores[5.0] < scores[0.0] - 0.05, scores


def test_value_sparsity_on_rare_captions_trains_and_is_recorded(tmp_path: Path) -> None:
    from fbmem_data.lab.train import TrainConfig, train_lab

    cfg = TrainConfig(ae_steps=2, ae_batch=4, unet_steps=3, unet_batch=4, warmup_steps=1, log_every=100,
                      checkpoint_every=100, value_sparsity=0.3, value_sparsity_tokens="rare-captions")
    train_lab(tmp_path / "o", tmp_path / "c", cfg, TINY_V2, TINY_LAB, log=None, model_id=LAB_V2_MODEL_ID)
    info = read_weights_info(tmp_path / "o")
    assert info.training["train_config"]["value_sparsity_tokens"] == "rare-captions"
    assert "value sparsity 0.3 on rare-captions (rare: < 0.05 of captions)" in info.training["stages"][1]["what"]


def test_sparsity_token_weights_spare_the_common_words() -> None:
    from fbmem_data.errors import InputError
    from fbmem_data.lab.pipeline import build_text_encoder
    from fbmem_data.lab.train import sparsity_token_weights

    tokenizer = build_text_encoder()[0]
    texts = [f"a {c} ring on a grey background" for c in ("red", "blue", "green", "pink")] + ["the vexbram emblem", ""]
    ids = [tokenizer(t, padding="max_length", max_length=tokenizer.model_max_length).input_ids for t in texts]
    words = [tokenizer.convert_ids_to_tokens(i) for i in ids]
    everything = sparsity_token_weights(texts, tokenizer, "all", 0.3)
    assert everything.shape == (6, tokenizer.model_max_length) and bool((everything == 1).all())
    # 5 non-empty captions, rare: in fewer than 0.3 * 5 = 1.5 of them (the colours, the name, "emblem")
    rare_words = sparsity_token_weights(texts, tokenizer, "rare-words", 0.3)
    picked = {w for row, ws in zip(rare_words.tolist(), words, strict=True) for x, w in zip(row, ws, strict=True) if x}
    assert {"red", "blue", "emblem", "[CLS]", "[SEP]", "[PAD]"} <= picked
    assert not picked & {"a", "ring", "on", "grey", "background"}
    assert bool((rare_words[5] == 1).all())  # the empty caption: special and padding tokens only
    rare_captions = sparsity_token_weights(texts, tokenizer, "rare-captions", 0.3).sum(1).tolist()
    assert rare_captions == [float(tokenizer.model_max_length)] * 5 + [0.0]
    common_only = sparsity_token_weights(texts, tokenizer, "rare-captions", 0.2)  # nothing under 1 caption
    assert common_only.sum().item() == 0
    for which, share in (("rare", 0.05), ("all", 0.0), ("all", 1.5)):
        with pytest.raises(InputError):
            sparsity_token_weights(texts, tokenizer, which, share)


def test_value_sparsity_penalty_with_token_weights_is_the_mean_over_the_selected_tokens() -> None:
    from fbmem_data.lab.train import value_sparsity_penalty

    width = 9
    layer = torch.nn.Linear(2, width, bias=False)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[0, 0] = 1.0  # input 0: one neuron
        layer.weight[:, 1] = 1.0  # input 1: every neuron
    cond = torch.zeros(1, 3, 2)
    cond[0, 0, 0] = cond[0, 1, 1] = cond[0, 2, 1] = 1.0
    sparse_only = torch.tensor([[1.0, 0.0, 0.0]])
    assert value_sparsity_penalty([layer], cond, token_weights=sparse_only).item() == pytest.approx(width**-0.5)
    assert value_sparsity_penalty([layer], cond, token_weights=1 - sparse_only).item() == pytest.approx(1.0)
    assert value_sparsity_penalty([layer], cond, token_weights=torch.zeros(1, 3)).item() == 0.0
    assert value_sparsity_penalty([layer], cond, token_weights=torch.ones(1, 3)).item() == pytest.approx(
        value_sparsity_penalty([layer], cond).item())


def test_cli_lab_train_v2_trains_with_sparse_values_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import fbmem_data.lab.train as train
    from fbmem_data.cli.app import build_app

    seen: list = []

    def fake_train_lab(out, ckpt, cfg, model, lab_cfg, **kwargs):
        seen.append((cfg.value_sparsity, cfg.value_sparsity_tokens, cfg.value_separation))
        return {"seconds_this_call": 0.0}

    monkeypatch.setattr(train, "train_lab", fake_train_lab)
    base = ["lab", "train", "--out", str(tmp_path / "o"), "--checkpoints", str(tmp_path / "c"), "--no-progress", "--segmenter-steps", "0"]
    for extra in (["--preset", "v2"], ["--preset", "v1"], ["--preset", "v2", "--value-sparsity", "0"],
                  ["--preset", "v2", "--value-sparsity-tokens", "all"], ["--preset", "v2", "--value-separation", "0"],
                  ["--preset", "v1", "--value-separation", "0.5"]):
        result = CliRunner().invoke(build_app(), [*base, *extra])
        assert result.exit_code == 0, result.output
    assert seen == [(0.3, "rare-words", 0.3), (0.0, "all", 0.0), (0.0, "rare-words", 0.3), (0.3, "all", 0.3),
                    (0.3, "rare-words", 0.0), (0.0, "all", 0.5)]


def test_value_sparsity_refuses_negative_weights_and_models_without_nemo_layers(tmp_path: Path) -> None:
    from fbmem_data.errors import InputError
    from fbmem_data.lab.train import TrainConfig, train_lab

    cfg = TrainConfig(ae_steps=1, ae_batch=4, unet_steps=1, unet_batch=4, warmup_steps=1, log_every=100, checkpoint_every=100)
    with pytest.raises(InputError, match="value_sparsity -1 is negative"):
        train_lab(tmp_path / "a", tmp_path / "ca", replace(cfg, value_sparsity=-1.0), TINY_V2, TINY_LAB, log=None)
    no_layers = replace(TINY_V2, nemo_blocks=("up_blocks",))  # v2 has no cross-attention in its up blocks
    with pytest.raises(InputError, match="no cross-attention"):
        train_lab(tmp_path / "b", tmp_path / "cb", replace(cfg, value_sparsity=0.3), no_layers, TINY_LAB, log=None)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    for bad in ({"value_sparsity_tokens": "rare"}, {"rare_token_share": 0.0}):
        with pytest.raises(InputError, match="value sparsity tokens"):
            train_lab(tmp_path / "c", tmp_path / "cc", replace(cfg, value_sparsity=0.3, **bad), TINY_V2, TINY_LAB, log=None)
    assert not (tmp_path / "cc").exists()  # refused before the autoencoder phase
    assert not (tmp_path / "ca").exists()  # a negative weight too
    with pytest.raises(InputError, match=r"value_separation -0\.5 is negative"):
        train_lab(tmp_path / "d", tmp_path / "cd", replace(cfg, value_separation=-0.5), TINY_V2, TINY_LAB, log=None)
    assert not (tmp_path / "cd").exists()
    with pytest.raises(InputError, match="no cross-attention"):  # the separation alone needs the layers too
        train_lab(tmp_path / "e", tmp_path / "ce", replace(cfg, value_separation=0.3), no_layers, TINY_LAB, log=None)


def test_value_separation_trains_and_is_recorded(tmp_path: Path) -> None:
    from fbmem_data.lab.train import TrainConfig, train_lab

    cfg = TrainConfig(ae_steps=2, ae_batch=4, unet_steps=3, unet_batch=4, warmup_steps=1, log_every=100,
                      checkpoint_every=100, value_sparsity=0.3, value_sparsity_tokens="rare-words", value_separation=0.5)
    train_lab(tmp_path / "o", tmp_path / "c", cfg, TINY_V2, TINY_LAB, log=None, model_id=LAB_V2_MODEL_ID)
    info = read_weights_info(tmp_path / "o")
    assert info.training["train_config"]["value_separation"] == 0.5
    assert ("value sparsity 0.3 on rare-words, value separation 0.5 (rare: < 0.05 of captions)"
            in info.training["stages"][1]["what"])


def test_value_separation_penalty_is_the_mean_pairwise_overlap_of_the_two_groups() -> None:
    from fbmem_data.lab.train import value_separation_penalty

    layer = torch.nn.Linear(3, 4, bias=False)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[0, 0] = 2.0  # input 0: neuron 0 only
        layer.weight[1, 1] = -1.0  # input 1: neuron 1 only
        layer.weight[:2, 2] = 1.0  # input 2: neurons 0 and 1 equally
    cond = torch.zeros(1, 4, 3)
    cond[0, 0, 0] = cond[0, 1, 1] = cond[0, 2, 2] = 1.0
    cond[0, 3, 0] = 5.0  # neuron 0 again, five times as strong
    first, second, both, first_strong = (torch.zeros(1, 4).index_fill_(1, torch.tensor([i]), 1.0) for i in range(4))
    assert value_separation_penalty([layer], cond, first, second).item() == pytest.approx(0.0)  # no shared neuron
    assert value_separation_penalty([layer], cond, first, first_strong).item() == pytest.approx(1.0)  # scale-free
    assert value_separation_penalty([layer], cond, first, both).item() == pytest.approx(2**-0.5)
    # the mean over the pairs: (0 + 1) / 2, halved by the weight
    assert value_separation_penalty([layer], cond, first, second + first_strong, weight=0.5).item() == pytest.approx(0.25)
    assert value_separation_penalty([layer], cond, first, torch.zeros(1, 4)).item() == 0.0
    cond.requires_grad_(True)
    value_separation_penalty([layer], cond, first + both, second).backward()
    assert cond.grad is not None and float(cond.grad.abs().sum()) > 0


def test_separation_token_groups_are_the_rare_pieces_and_the_captions_without_one() -> None:
    from fbmem_data.errors import InputError
    from fbmem_data.lab.pipeline import build_text_encoder
    from fbmem_data.lab.train import separation_token_groups

    tokenizer = build_text_encoder()[0]
    texts = [f"a {c} ring on a grey background" for c in ("red", "red", "blue", "blue")] + ["the vexbram emblem", ""]
    words = [tokenizer.convert_ids_to_tokens(tokenizer(t, padding="max_length", max_length=tokenizer.model_max_length).input_ids)
             for t in texts]
    rare, common = separation_token_groups(texts, tokenizer, 0.3)  # rare: in fewer than 1.5 of 5 captions
    picked = {w for row, ws in zip(rare.tolist(), words, strict=True) for x, w in zip(row, ws, strict=True) if x}
    assert {"emblem", "ve", "##x"} <= picked and not picked & {"[CLS]", "[SEP]", "[PAD]", "red", "blue", "a", "ring"}
    assert common.sum(1).tolist() == [float(tokenizer.model_max_length)] * 4 + [0.0, float(tokenizer.model_max_length)]
    assert bool((rare * common == 0).all())
    with pytest.raises(InputError):
        separation_token_groups(texts, tokenizer, 0.0)


def test_value_separation_training_moves_rare_pieces_off_the_common_captions_neurons(tmp_path: Path) -> None:
    from fbmem_data.lab.pipeline import build_text_encoder
    from fbmem_data.lab.train import (
        TrainConfig,
        encode_captions,
        separation_token_groups,
        train_lab,
        value_separation_penalty,
    )

    texts = [*sorted({t for _, t in make_lab_dataset(0, TINY_LAB).training_examples()}), ""]
    tokenizer = build_text_encoder()[0]
    rare, common = separation_token_groups(texts, tokenizer, 0.3)
    assert rare.sum() > 0 and common.sum() > 0
    cond = encode_captions(texts)
    scores = {}
    for weight in (0.0, 5.0):
        cfg = TrainConfig(ae_steps=2, ae_batch=4, unet_steps=30, unet_batch=4, unet_lr=2e-3, warmup_steps=1,
                          log_every=100, checkpoint_every=100, rare_token_share=0.3, value_separation=weight)
        out = tmp_path / f"w{weight:g}"
        train_lab(out, tmp_path / f"ckpt{weight:g}", cfg, TINY_V2, TINY_LAB, log=None, model_id=LAB_V2_MODEL_ID)
        layers = [layer.to_v for layer in discover_nemo_layers(load_lab_pipeline(out).unet)]
        with torch.no_grad():
            scores[weight] = value_separation_penalty(layers, cond, rare, common).item()
    assert scores[5.0] < scores[0.0] - 0.05, scores
