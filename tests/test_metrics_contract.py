"""The contract every region metric (family `fbmem.metrics`) keeps, run against every registered one.

A metric that does not keep a clause says so in NOT_SUPPORTED (the test is then skipped with that
reason), so a new metric is checked against everything unless its author opts out explicitly.
"""

from __future__ import annotations

import json

import pytest
import torch

from fbmem_data import plugins
from fbmem_data.errors import InputError
from fbmem_data.fbmem.composition import region_batch
from fbmem_data.similarity.base import RegionBatch, RegionMetric
from fbmem_data.testing.scenes import planted_pair, to_uint8

SIZE = 176  # the smallest side 5-scale MS-SSIM takes
METRICS = plugins.names(plugins.METRICS)

#: metric -> clause -> why it does not hold for that metric.
NOT_SUPPORTED: dict[str, dict[str, str]] = {
    "msssim-regions": {
        "symmetry": "registers the generated image onto the training image (align/zoom) before comparing",
    },
}


def needs(name: str, clause: str) -> None:
    reason = NOT_SUPPORTED.get(name, {}).get(clause)
    if reason:
        pytest.skip(f"{name} does not support {clause}: {reason}")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def planted_batch(size: int = SIZE) -> RegionBatch:
    """Eight images: (generated, train) of a VM, FM, BM and NM planted pair, in that order."""
    images, masks = [], []
    for seed, truth in enumerate(("VM", "FM", "BM", "NM")):
        p = planted_pair(seed, truth, size, 0.12)
        images += [to_uint8(p.generated), to_uint8(p.train)]
        masks += [to_uint8(p.generated_mask), to_uint8(p.train_mask)]
    return region_batch(images, masks, size)


@pytest.fixture(scope="module")
def batch() -> RegionBatch:
    return planted_batch()


GEN = torch.tensor([0, 2, 4, 6, 0, 6])
TRAIN = torch.tensor([1, 3, 5, 7, 7, 1])


@pytest.fixture(params=METRICS)
def metric(request: pytest.FixtureRequest) -> RegionMetric:
    return plugins.create(plugins.METRICS, request.param)


def test_every_metric_follows_the_protocol_and_its_params_are_stable(metric: RegionMetric) -> None:
    assert isinstance(metric, plugins.protocol(plugins.METRICS))
    params = metric.params()
    assert json.loads(json.dumps(params)) == params
    assert plugins.create(plugins.METRICS, metric.name).params() == params
    assert params.get("metric") == metric.name


def test_shape_dtype_and_range(metric: RegionMetric, batch: RegionBatch) -> None:
    state = metric.prepare(batch)
    fg, bg = metric.score(state, GEN, state, TRAIN)
    for scores in (fg, bg):
        assert scores.shape == (len(GEN),) and scores.dtype.is_floating_point
        assert torch.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1 + 1e-6).all(), scores


def test_identical_images_score_one(metric: RegionMetric, batch: RegionBatch) -> None:
    state = metric.prepare(batch)
    every = torch.arange(len(batch))
    fg, bg = metric.score(state, every, state, every)
    assert torch.allclose(fg, torch.ones_like(fg), atol=1e-4), fg
    assert torch.allclose(bg, torch.ones_like(bg), atol=1e-4), bg


def test_different_scenes_score_below_one(metric: RegionMetric, batch: RegionBatch) -> None:
    # the NM pair shares nothing: neither part may look identical (a metric stuck at 1 fails here)
    state = metric.prepare(batch)
    fg, bg = metric.score(state, torch.tensor([6]), state, torch.tensor([7]))
    assert float(fg[0]) < 0.9 and float(bg[0]) < 0.9, (fg, bg)


def test_symmetry(metric: RegionMetric, batch: RegionBatch) -> None:
    needs(metric.name, "symmetry")
    state = metric.prepare(batch)
    ab = metric.score(state, GEN, state, TRAIN)
    ba = metric.score(state, TRAIN, state, GEN)
    for x, y in zip(ab, ba, strict=True):
        assert torch.allclose(x, y, atol=1e-5), (x, y)


def test_a_pair_scores_the_same_alone_in_any_order_and_from_separately_prepared_batches(
    metric: RegionMetric, batch: RegionBatch
) -> None:
    state = metric.prepare(batch)
    together = metric.score(state, GEN, state, TRAIN)
    flipped = metric.score(state, GEN.flip(0), state, TRAIN.flip(0))
    gen_half = RegionBatch(batch.fg[0::2], batch.bg[0::2], batch.mask[0::2])
    train_half = RegionBatch(batch.fg[1::2], batch.bg[1::2], batch.mask[1::2])
    g_state, t_state = metric.prepare(gen_half), metric.prepare(train_half)
    for p in range(len(GEN)):
        alone = metric.score(state, GEN[p : p + 1], state, TRAIN[p : p + 1])
        split = metric.score(g_state, GEN[p : p + 1] // 2, t_state, (TRAIN[p : p + 1] - 1) // 2)
        for k in range(2):
            assert float(alone[k][0]) == pytest.approx(float(together[k][p]), abs=1e-5)
            assert float(flipped[k][len(GEN) - 1 - p]) == pytest.approx(float(together[k][p]), abs=1e-5)
            assert float(split[k][0]) == pytest.approx(float(together[k][p]), abs=1e-5)


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))],
)
def test_scores_stay_on_the_inputs_device(metric: RegionMetric, batch: RegionBatch, device: str) -> None:
    # a metric has no device argument: it runs where its inputs are (the scorer moves them)
    moved = RegionBatch(batch.fg.to(device), batch.bg.to(device), batch.mask.to(device))
    state = metric.prepare(moved)
    fg, bg = metric.score(state, GEN.to(device), state, TRAIN.to(device))
    assert fg.device.type == bg.device.type == device
    ref = metric.score(metric.prepare(batch), GEN, metric.prepare(batch), TRAIN)
    assert torch.allclose(fg.cpu(), ref[0], atol=1e-4) and torch.allclose(bg.cpu(), ref[1], atol=1e-4)


def test_images_too_small_are_an_input_error(metric: RegionMetric) -> None:
    tiny = planted_batch(4)
    with pytest.raises(InputError, match="too small"):
        state = metric.prepare(tiny)
        metric.score(state, torch.tensor([0]), state, torch.tensor([1]))


@pytest.mark.parametrize(
    ("gen_index", "train_index", "message"),
    [
        (torch.tensor([0, 1]), torch.tensor([0]), "differ in length"),
        (torch.tensor([0]), torch.tensor([8]), "outside the 8 prepared images"),
        (torch.tensor([-1]), torch.tensor([0]), "outside"),
        (torch.tensor([0.0]), torch.tensor([0]), "int64"),
    ],
)
def test_bad_pair_indexes_are_an_input_error(
    metric: RegionMetric, batch: RegionBatch, gen_index: torch.Tensor, train_index: torch.Tensor, message: str
) -> None:
    state = metric.prepare(batch)
    with pytest.raises(InputError, match=message):
        metric.score(state, gen_index, state, train_index)
