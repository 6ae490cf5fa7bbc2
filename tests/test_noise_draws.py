"""The two x_T draws fbmem makes mean different things; these pin what each one is."""

from __future__ import annotations

import torch

from fbmem_data.nemo.detect import detection_latents


def test_detection_latents_are_one_batch_draw_from_one_generator() -> None:
    got = detection_latents(3, 7, (4, 8, 8))
    want = torch.randn((3, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(7), dtype=torch.float32)
    assert torch.equal(got, want)
    # latent 1 of the batch is not what a generator seeded 8 (generation's per-seed rule) draws
    alone = torch.randn((4, 8, 8), generator=torch.Generator("cpu").manual_seed(8), dtype=torch.float32)
    assert not torch.equal(got[1], alone)
    # a prefix of a larger batch: the first n latents do not depend on how many follow
    assert torch.equal(detection_latents(5, 7, (4, 8, 8))[:3], got)
