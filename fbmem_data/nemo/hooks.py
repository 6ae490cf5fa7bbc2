"""Deactivate NeMo neurons: forward hooks that zero chosen `to_v` output channels.

The hook multiplies the value projection's output (batch, tokens, channels) by a 0/1 mask per batch
row, so it acts on every token, every denoising step and both classifier-free-guidance branches.
Row r of the UNet batch uses mask row r % M (M = rows of the mask): with diffusers' CFG layout
[unconditional images; conditional images] a mask of one row per image covers both branches, and a
localization batch (hypotheses x seeds) passes one mask row per batch row.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from fbmem_data.errors import InputError

if TYPE_CHECKING:
    import torch

    from fbmem_data.nemo.layers import NemoLayer

# {layer index: neuron indices} - the form every NeMo neuron set takes in fbmem.
NeuronSet = Mapping[int, Sequence[int]]


def keep_masks(
    layers: Sequence[NemoLayer], neuron_sets: Sequence[NeuronSet], *, device: torch.device | str = "cpu"
) -> dict[int, torch.Tensor]:
    """One (len(neuron_sets), width) 0/1 tensor per layer that any set blocks; 0 = blocked.

    Raises:
        InputError: a set names a layer or neuron the model does not have.
    """
    import torch

    by_index = {layer.index: layer for layer in layers}
    masks: dict[int, torch.Tensor] = {}
    for row, neuron_set in enumerate(neuron_sets):
        for layer_index, neurons in neuron_set.items():
            if not neurons:
                continue
            if layer_index not in by_index:
                raise InputError(f"neuron set names layer {layer_index}; the model has layers 0..{len(layers) - 1}")
            width = by_index[layer_index].width
            bad = [n for n in neurons if not 0 <= int(n) < width]
            if bad:
                raise InputError(f"layer {layer_index} has {width} neurons; got index(es) {bad[:5]}")
            if layer_index not in masks:
                masks[layer_index] = torch.ones(len(neuron_sets), width, device=device)
            masks[layer_index][row, torch.as_tensor([int(n) for n in neurons], dtype=torch.long)] = 0.0
    return masks


class _ZeroChannels:
    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask

    def __call__(self, module: torch.nn.Module, args: tuple[object, ...], output: torch.Tensor) -> torch.Tensor:
        del module, args
        batch = output.shape[0]
        rows = self.mask.shape[0]
        if batch % rows:
            raise InputError(f"a NeMo mask with {rows} row(s) cannot cover a UNet batch of {batch}")
        mask = self.mask.to(device=output.device, dtype=output.dtype)
        if rows != batch:
            mask = mask.repeat(batch // rows, 1)
        return output * mask.unsqueeze(1)


@contextlib.contextmanager
def blocked_neurons(layers: Sequence[NemoLayer], masks: Mapping[int, torch.Tensor]) -> Iterator[None]:
    """Within the block, zero the channels where `masks` (from keep_masks) hold 0."""
    by_index = {layer.index: layer for layer in layers}
    handles = [by_index[i].to_v.register_forward_hook(_ZeroChannels(mask)) for i, mask in masks.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
