"""NeMo activations, detection and localization on a random-initialised SD-v1.4-shaped tiny pipeline."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fbmem_data.nemo.activations import compute_activations, encode_prompts, layer_activations
from fbmem_data.nemo.detect import (
    NoiseDiffSettings,
    calibrate,
    current_tau,
    msssim_kernel,
    msssim_pairs,
    nemo_timestep,
    record_detection_scores,
)
from fbmem_data.nemo.layers import discover_nemo_layers
from fbmem_data.nemo.localize import (
    LocalizationConfig,
    NoiseDiffEvaluator,
    localize_prompt,
    localize_prompts,
    select_candidates,
)
from fbmem_data.nemo.stats import compute_stats, load_stats
from fbmem_data.testing.pipelines import tiny_sd_pipeline
from fbmem_data.workspace import Workspace

MODEL = "tiny-sd"
TINY_WIDTHS = [32, 32, 64, 64, 128, 128, 128]
NOISE = NoiseDiffSettings(n_seeds=4, latent_size=16)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pipe():  # type: ignore[no-untyped-def]
    pipe = tiny_sd_pipeline(seed=0, sample_size=16)
    # Random weights give cross-attention little say in the noise; amplify it so blocking matters.
    with torch.no_grad():
        for layer in discover_nemo_layers(pipe.unet):
            pipe.unet.get_submodule(layer.name).to_out[0].weight.mul_(30)
    return pipe


def test_layers_follow_sd_structure(pipe) -> None:  # type: ignore[no-untyped-def]
    layers = discover_nemo_layers(pipe.unet)
    assert [layer.width for layer in layers] == TINY_WIDTHS
    assert [layer.name.rsplit(".transformer_blocks", 1)[0] for layer in layers] == [
        "down_blocks.0.attentions.0", "down_blocks.0.attentions.1", "down_blocks.1.attentions.0",
        "down_blocks.1.attentions.1", "down_blocks.2.attentions.0", "down_blocks.2.attentions.1", "mid_block.attentions.0",
    ]


def test_sd_v14_config_has_paper_widths() -> None:
    from diffusers import UNet2DConditionModel

    from fbmem_data.testing.pipelines import sd_v14_unet_config

    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd_v14_unet_config())
    assert [layer.width for layer in discover_nemo_layers(unet)] == [320, 320, 640, 640, 1280, 1280, 1280]


def test_activation_is_mean_abs_value_over_all_tokens(pipe) -> None:  # type: ignore[no-untyped-def]
    layers = discover_nemo_layers(pipe.unet)
    embeds = encode_prompts(pipe, ["a red cube", "a blue ball on grass"])
    assert embeds.shape[1] == 77  # padding positions included
    acts = layer_activations(layers, embeds)
    expected = layers[2].to_v(embeds).abs().mean(dim=1)
    assert torch.allclose(acts[2], expected)
    assert [a.shape[1] for a in acts] == TINY_WIDTHS


def test_paper_constants() -> None:
    config = LocalizationConfig()
    schedule = config.schedule()
    assert len(schedule) == 16 and schedule[0] == (5.0, 0) and schedule[-1] == (1.25, 15)
    assert config.tau == 0.428 and config.noise.n_seeds == 10 and config.noise.seed == 1
    assert config.noise.betas == (0.33, 0.33, 0.33) and config.noise.kernel_size == 11
    assert msssim_kernel(64) == (11, 1.5)  # SD's 64x64 latents use the paper's kernel
    assert msssim_kernel(16)[0] == 3
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                          clip_sample=False, set_alpha_to_one=False)
    assert int(nemo_timestep(sched, 50, 1)) == 961


def test_select_candidates_union_of_z_and_topk() -> None:
    a = [torch.tensor([1.0, 5.0, 2.0, 0.5])]
    mu, sd = [torch.tensor([1.0, 1.0, 1.0, 1.0])], [torch.tensor([1.0, 1.0, 0.1, 1.0])]
    # z = [0, 4, 10, 0.5]: theta 5 -> {2}; top-1 by activation -> {1}
    assert select_candidates(a, mu, sd, 5.0, 0) == {0: [2]}
    assert select_candidates(a, mu, sd, 5.0, 1) == {0: [1, 2]}
    assert select_candidates(a, mu, sd, 3.0, 0) == {0: [1, 2]}


def _setup(pipe, text: str):  # type: ignore[no-untyped-def]
    layers = discover_nemo_layers(pipe.unet)
    embeds = encode_prompts(pipe, [text])
    acts = [a[0] for a in layer_activations(layers, embeds)]
    means = [a * 0.9 for a in acts]
    stds = [torch.full_like(a, 0.05) for a in acts]
    # A threshold the schedule crosses half-way, so both stages do real work on a random model.
    config = LocalizationConfig(noise=NOISE, skip_not_memorized=False)
    ev = NoiseDiffEvaluator(pipe.unet, pipe.scheduler, embeds, NOISE, layers=layers)
    scores = ev.blocked_scores([select_candidates(acts, means, stds, t, k) for t, k in config.schedule()], range(NOISE.n_seeds))
    ordered = sorted(scores)
    mid = len(ordered) // 2
    tau = (ordered[mid] + ordered[mid + 1]) / 2  # between two scores: float rounding cannot flip a decision
    return embeds, acts, means, stds, dataclasses.replace(config, tau=tau, seed_filter="all")


def test_batched_matches_sequential_with_fewer_batches(pipe) -> None:  # type: ignore[no-untyped-def]
    embeds, acts, means, stds, config = _setup(pipe, "a photo of a cat on a sofa")
    seq = localize_prompt(pipe.unet, pipe.scheduler, embeds, acts, means, stds, config, algorithm="sequential")
    bat = localize_prompt(pipe.unet, pipe.scheduler, embeds, acts, means, stds, config, algorithm="batched", width=8)
    assert seq.status == "mitigated"
    assert seq.initial == bat.initial and seq.theta == bat.theta
    assert seq.refined == bat.refined
    assert 0 < sum(len(v) for v in seq.refined.values()) < sum(len(v) for v in seq.initial.values())
    assert seq.refined_score <= config.tau and bat.refined_score <= config.tau
    assert seq.counter.batches == seq.counter.hypotheses + 1  # one UNet call per hypothesis + the reference
    assert bat.counter.batches < seq.counter.batches


def test_refined_set_is_greedy_minimal(pipe) -> None:  # type: ignore[no-untyped-def]
    """Every refined neuron is needed: un-blocking it alone breaks the criterion (checked independently)."""
    embeds, acts, means, stds, config = _setup(pipe, "a photo of a cat on a sofa")
    res = localize_prompt(pipe.unet, pipe.scheduler, embeds, acts, means, stds, config, algorithm="batched", width=8)
    ev = NoiseDiffEvaluator(pipe.unet, pipe.scheduler, embeds, config.noise)
    last_layer = max(res.refined)
    # The last neuron tested in the greedy order is the last of the lowest layer; its removal was tested
    # against the final set, so un-blocking it must fail.
    first_layer = min(res.refined)
    probe = {k: list(v) for k, v in res.refined.items()}
    probe[first_layer] = probe[first_layer][:-1]
    assert ev.blocked_scores([probe], range(config.noise.n_seeds))[0] > config.tau
    assert ev.blocked_scores([res.refined], range(config.noise.n_seeds))[0] <= config.tau
    assert last_layer >= first_layer


def test_localize_end_to_end_in_workspace(workspace: Workspace, pipe) -> None:  # type: ignore[no-untyped-def]
    texts = ["a red cube", "a blue ball", "a green cone"]
    workspace.write("prompts", [{"prompt_id": f"c{i}", "prompt_set": "control", "text": t, "source_key": str(i)} for i, t in enumerate(texts)])
    workspace.write("prompts", [{"prompt_id": "m0", "prompt_set": "mem", "text": "a photo of a cat on a sofa", "source_key": "0"}])
    assert compute_activations(workspace, pipe, MODEL, "control") == len(texts) * 7
    assert compute_activations(workspace, pipe, MODEL, "control") == 0  # resume: nothing left
    compute_stats(workspace, MODEL, "control")
    reference, means, _ = load_stats(workspace, MODEL)
    assert reference == "control" and [m.numel() for m in means] == TINY_WIDTHS
    # Detection + calibration: tau = mean + 1 std of the control scores.
    h = record_detection_scores(workspace, pipe, MODEL, "control", settings=NOISE)
    scores = workspace.sql("SELECT score FROM detection_scores WHERE config_hash = $h", {"h": h}).column("score").to_pylist()
    assert len(scores) == len(texts) and all(0 <= s <= 1.0001 for s in scores)
    row = calibrate(workspace, MODEL, "control")
    t = torch.tensor(scores, dtype=torch.float64)
    assert abs(row["tau"] - float(t.mean() + t.std())) < 1e-9
    assert current_tau(workspace, MODEL) == row["tau"]
    fast = dataclasses.replace(NOISE, n_seeds=2)
    config = LocalizationConfig(noise=fast, tau=0.995, skip_not_memorized=False)
    loc = localize_prompts(workspace, pipe, MODEL, ["m0", "c0"], config=config, width=16)
    summary = workspace.sql("SELECT * FROM nemo_summary WHERE localization_id = $l ORDER BY prompt_id", {"l": loc}).to_pylist()
    assert [r["prompt_id"] for r in summary] == ["c0", "m0"]
    for r in summary:
        assert r["status"] in ("mitigated", "not_mitigated") and r["unet_batches"] >= 2 and r["hypotheses"] >= 1
        stored = workspace.sql(
            "SELECT count(*) AS n FROM nemo_neurons WHERE localization_id = $l AND prompt_id = $p AND stage = 'refined'",
            {"l": loc, "p": r["prompt_id"]},
        ).column("n")[0].as_py()
        assert stored == r["n_refined"]
    # Re-running resumes: nothing is localized twice.
    assert localize_prompts(workspace, pipe, MODEL, ["m0", "c0"], config=config, width=16) == loc
    assert workspace.count("nemo_summary") == 2
    # Not memorized at the paper's rule: skipped with no neurons.
    strict = LocalizationConfig(noise=fast, tau=0.9999)
    loc2 = localize_prompts(workspace, pipe, MODEL, ["c1"], config=strict)
    status = workspace.sql("SELECT status, n_refined FROM nemo_summary WHERE localization_id = $l", {"l": loc2}).to_pylist()
    assert status == [{"status": "not_memorized", "n_refined": 0}]


def _synthetic_scorer(weights: dict[tuple[int, int], float], monotone: bool):  # type: ignore[no-untyped-def]
    """Score = 1 - blocked weight share (monotone) or a hash of the set (arbitrary); counts calls."""
    import hashlib

    calls = {"batches": 0, "hypotheses": 0}

    def score(hypotheses):  # type: ignore[no-untyped-def]
        calls["batches"] += 1
        calls["hypotheses"] += len(hypotheses)
        out = []
        for h in hypotheses:
            keys = sorted((layer, n) for layer, ns in h.items() for n in ns)
            if monotone:
                out.append(1.0 - sum(weights[k] for k in keys) / sum(weights.values()))
            else:
                out.append(int(hashlib.sha256(repr(keys).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF)
        return out

    return score, calls


@pytest.mark.parametrize("monotone", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_speculative_greedy_equals_sequential(monotone: bool, seed: int) -> None:
    import random

    from fbmem_data.nemo.localize import _greedy_sequential, _greedy_speculative

    rng = random.Random(seed)
    neurons = {layer: sorted(rng.sample(range(100), rng.randrange(1, 15))) for layer in range(7) if rng.random() < 0.8}
    weights = {(layer, n): rng.expovariate(1.0) for layer, ns in neurons.items() for n in ns}
    candidates = [(layer, n) for layer in sorted(neurons, reverse=True) for n in neurons[layer]]
    threshold = 0.6 if monotone else 0.5
    seq_score, seq_calls = _synthetic_scorer(weights, monotone)
    spec_score, spec_calls = _synthetic_scorer(weights, monotone)
    expected = _greedy_sequential(neurons, candidates, seq_score, threshold)
    got = _greedy_speculative(neurons, candidates, spec_score, threshold, width=8)
    assert got == expected
    assert seq_calls["batches"] == len(candidates)
    if monotone and len(candidates) >= 16:
        assert spec_calls["batches"] * 2 <= seq_calls["batches"]


# NeMo's code scores with torchmetrics 1.3.2's functional MS-SSIM (data_range None, kernel 11, betas 0.33 x 3).
# Produced with the real torchmetrics 1.3.2 (an unpacked `pip download torchmetrics==1.3.2` first on PYTHONPATH)
# on the inputs of _nemo_msssim_inputs: one call over pairs 0-2 and one over 3-4 (TWO_CALLS), one call over all (ONE_CALL).
NEMO_TWO_CALLS = [0.825744, 0.815111, 0.828046, 0.819856, 0.828476]
NEMO_ONE_CALL = [0.826136, 0.815587, 0.828386, 0.82013, 0.828743]


def _nemo_msssim_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(5, 4, 64, 64, generator=g)
    y = 0.6 * x + 0.4 * torch.randn(5, 4, 64, 64, generator=g)

    def norm(t: torch.Tensor) -> torch.Tensor:
        lo, hi = t.amin(dim=(-2, -1), keepdim=True), t.amax(dim=(-2, -1), keepdim=True)
        return (t - lo) / (hi - lo)

    return norm(x), norm(y)


def test_reference_msssim_is_torchmetrics_132_per_call() -> None:
    x, y = _nemo_msssim_inputs()
    two = msssim_pairs(x, y, reference=True, groups=torch.tensor([0, 0, 0, 1, 1]))
    assert two.tolist() == pytest.approx(NEMO_TWO_CALLS, abs=2e-5)
    assert msssim_pairs(x, y, reference=True).tolist() == pytest.approx(NEMO_ONE_CALL, abs=2e-5)
    # the simplified score (range 1, uncropped last scale) is not NeMo's
    assert max(abs(a - b) for a, b in zip(msssim_pairs(x, y).tolist(), NEMO_ONE_CALL, strict=True)) > 5e-3


def test_reference_refinement_order_and_paper_preset() -> None:
    from fbmem_data.nemo.localize import PRESETS, reference_order

    a = [torch.tensor([1.0, 5.0, 2.0, 0.5, 3.0])]
    mu, sd = [torch.ones(5)], [torch.tensor([1.0, 1.0, 0.1, 0.01, 1.0])]
    # z = [0, 4, 10, 50, 2]: theta 3 lists [1, 2, 3]; top-2 by activation lists [1, 4]: neuron 1 twice
    assert select_candidates(a, mu, sd, 3.0, 2) == {0: [1, 2, 3, 4]}
    assert reference_order(a, mu, sd, 3.0, 2) == {0: [2, 3, 1, 4]}  # tested at its last listing
    paper, clean = PRESETS["paper"], PRESETS["paper-clean"]
    assert paper.noise.reference_msssim and paper.refine_order == "reference" and paper.refine_strict
    assert clean == LocalizationConfig()
    assert "refine_order" not in clean.as_params() and "reference_msssim" not in clean.as_params()["noise"]
    assert paper.as_params()["refine_strict"] is True


@pytest.mark.slow
def test_paper_preset_localizes_with_both_algorithms_alike(pipe) -> None:  # type: ignore[no-untyped-def]
    from fbmem_data.nemo.localize import PRESETS

    embeds, acts, means, stds, config = _setup(pipe, "a memorized photo of a red bicycle")
    paper = dataclasses.replace(PRESETS["paper"], noise=dataclasses.replace(NOISE, reference_msssim=True), tau=config.tau,
                                seed_filter="all", skip_not_memorized=False)
    seq = localize_prompt(pipe.unet, pipe.scheduler, embeds, acts, means, stds, paper, algorithm="sequential")
    bat = localize_prompt(pipe.unet, pipe.scheduler, embeds, acts, means, stds, paper, algorithm="batched", width=4)
    assert seq.refined == bat.refined and seq.status == bat.status
