"""The nemo / nemo-c mitigations: hooks zero exactly the chosen channels, per image, every step, both branches."""

from __future__ import annotations

import pytest
import torch

from fbmem_data.mitigate import create_mitigation
from fbmem_data.mitigate.protocol import GenerationBatch, GenerationSettings
from fbmem_data.nemo.clusters import build_cluster_masks
from fbmem_data.nemo.layers import discover_nemo_layers
from fbmem_data.testing.pipelines import tiny_sd_pipeline
from fbmem_data.workspace import Workspace

MODEL = "tiny"
STEPS = 3


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pipe():  # type: ignore[no-untyped-def]
    return tiny_sd_pipeline(seed=0)


# prompt -> {layer: neurons}; "c" has none (must be left untouched in the same batch).
NEURONS = {"a": {0: [1, 5], 6: [0, 127]}, "b": {3: [10], 4: [2, 3, 4]}, "c": {}}


def _write(ws: Workspace) -> None:
    ws.write("prompts", [{"prompt_id": p, "prompt_set": "s", "text": f"prompt {p}", "source_key": p} for p in NEURONS])
    ws.write("nemo_summary", [{"localization_id": "L", "prompt_id": p, "model_id": MODEL, "status": "imported"} for p in NEURONS])
    ws.write(
        "nemo_neurons",
        [
            {"localization_id": "L", "prompt_id": p, "model_id": MODEL, "stage": "refined", "layer": layer, "neuron": n}
            for p, sets in NEURONS.items()
            for layer, ns in sets.items()
            for n in ns
        ],
    )


def _batch(prompt_ids: list[str]) -> GenerationBatch:
    latents = torch.stack([torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(len(prompt_ids))])
    return GenerationBatch(
        prompt_ids=prompt_ids, prompts=[f"prompt {p}" for p in prompt_ids], seeds=list(range(len(prompt_ids))),
        settings=GenerationSettings(steps=STEPS, guidance=7.0, height=64, width=64), latents=latents,
    )


def _run_and_record(pipe, mitigation, batch: GenerationBatch) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:  # type: ignore[no-untyped-def]
    """Generate the batch under the mitigation; per layer, (input, output) of every to_v call."""
    layers = discover_nemo_layers(pipe.unet)
    calls: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in layers]
    with mitigation.apply(pipe, batch) as out:
        handles = [
            layer.to_v.register_forward_hook(lambda m, args, o, i=layer.index: calls[i].append((args[0].detach(), o.detach())))
            for layer in layers
        ]
        try:
            pipe(prompt=out.prompts, latents=out.latents, num_inference_steps=STEPS, guidance_scale=7.0,
                 height=64, width=64, output_type="latent")
        finally:
            for h in handles:
                h.remove()
    return calls


def _expected_mask(width: int, layer: int, prompt_ids: list[str], sets: dict[str, dict[int, list[int]]]) -> torch.Tensor:
    mask = torch.ones(len(prompt_ids), width)
    for row, pid in enumerate(prompt_ids):
        mask[row, sets[pid].get(layer, [])] = 0.0
    return mask


def _check(pipe, calls, prompt_ids, sets) -> None:  # type: ignore[no-untyped-def]
    layers = discover_nemo_layers(pipe.unet)
    n = len(prompt_ids)
    for layer in layers:
        assert len(calls[layer.index]) == STEPS  # every step
        for inp, out in calls[layer.index]:
            assert out.shape[0] == 2 * n  # both guidance branches in one call
            raw = layer.to_v(inp)
            mask = _expected_mask(layer.width, layer.index, prompt_ids, sets).repeat(2, 1).unsqueeze(1)
            zeroed = (mask == 0).expand_as(out)
            assert torch.all(out[zeroed] == 0)
            assert torch.equal(out[~zeroed], raw[~zeroed])  # nothing else changes
            assert bool((raw[zeroed] != 0).all())  # the zeroed channels were active


def test_nemo_hook_zeroes_exactly_the_chosen_channels(workspace: Workspace, pipe) -> None:  # type: ignore[no-untyped-def]
    _write(workspace)
    mitigation = create_mitigation("nemo", localization="L")
    prompt_ids = ["a", "c", "b", "a"]
    mitigation.prepare(workspace, MODEL, prompt_ids)
    calls = _run_and_record(pipe, mitigation, _batch(prompt_ids))
    _check(pipe, calls, prompt_ids, NEURONS)
    # Hooks are gone after the context: to_v output equals the plain projection again.
    layer = discover_nemo_layers(pipe.unet)[0]
    x = torch.randn(2, 77, layer.to_v.in_features)
    assert torch.equal(layer.to_v(x), torch.nn.functional.linear(x, layer.to_v.weight, layer.to_v.bias))


def test_nemo_picks_the_localization_and_records_details(workspace: Workspace, pipe) -> None:  # type: ignore[no-untyped-def]
    _write(workspace)
    mitigation = create_mitigation("nemo")
    mitigation.prepare(workspace, MODEL, ["a", "b"])
    assert mitigation.params() == {"localization": "L", "stage": "refined"}
    with mitigation.apply(pipe, _batch(["a", "b"])) as out:
        assert [d["neurons_zeroed"] for d in out.details] == [4, 4]


def test_nemo_c_zeroes_the_cluster_mask(workspace: Workspace, pipe) -> None:  # type: ignore[no-untyped-def]
    _write(workspace)
    clusters = {"a": 0, "c": 0, "b": 1}
    workspace.write(
        "prompt_clusters",
        [{"clustering_id": "K", "prompt_id": p, "model_id": MODEL, "cluster": c, "k": 2, "embedding": "flat", "params": "{}"}
         for p, c in clusters.items()],
    )
    mask_id = build_cluster_masks(workspace, "K", "L")
    mitigation = create_mitigation("nemo-c", mask=mask_id)
    prompt_ids = ["c", "b", "a"]
    mitigation.prepare(workspace, MODEL, prompt_ids)
    # Cluster 0 = a u c = a's neurons; cluster 1 = b's.
    cluster_sets = {"a": NEURONS["a"], "c": NEURONS["a"], "b": NEURONS["b"]}
    calls = _run_and_record(pipe, mitigation, _batch(prompt_ids))
    _check(pipe, calls, prompt_ids, cluster_sets)


def test_wen_target_loss_is_the_mean_first_step_norm_of_the_given_prompts() -> None:
    import torch

    from fbmem_data.errors import InputError
    from fbmem_data.lab.pipeline import LabModelConfig, build_lab_pipeline
    from fbmem_data.mitigate.wen import calibrate_target_loss, first_step_norms

    torch.set_num_threads(1)
    pipe = build_lab_pipeline(LabModelConfig(vae_channels=(16, 16, 16), unet_channels=(16, 32, 32), unet_layers_per_block=1))
    texts = ["a red circle", "a blue square on stripes", "the zorflar emblem"]
    norms = first_step_norms(pipe, texts, seeds=(0, 1), steps=10)
    assert len(norms) == 6 and all(n > 0 for n in norms)
    # per (prompt, seed): the same x_T and prompt give the same norm in any company
    assert first_step_norms(pipe, texts[1:2], seeds=(1,), steps=10)[0] == pytest.approx(norms[3], rel=1e-5)
    assert calibrate_target_loss(pipe, texts, seeds=(0, 1), steps=10) == pytest.approx(sum(norms) / 6, rel=1e-6)
    with pytest.raises(InputError):
        calibrate_target_loss(pipe, [], steps=10)
