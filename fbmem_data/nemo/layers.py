"""Which modules of a UNet are NeMo layers.

NeMo's neurons are the output channels of the cross-attention value projections (`attn2.to_v`) of
the UNet's *down and mid* blocks; up blocks are not used. For Stable Diffusion v1.4 that gives 7
layers in module order: down_blocks.{0,1,2}.attentions.{0,1} and mid_block.attentions.0, widths
320, 320, 640, 640, 1280, 1280, 1280 (5,760 neurons).

Generic rule for any `UNet2DConditionModel`: every `Attention` module that is a cross-attention
(named `attn2` inside a transformer block) and lies under `down_blocks` or `mid_block`, in
`named_modules()` order (down blocks first, in order, then the mid block). A transformer with
several transformer blocks contributes one layer per block. A UNet with cross-attention only in
some down blocks simply has fewer layers.

The block set is a per-model setting: a model may name other top-level blocks in the UNet attribute
`fbmem_nemo_blocks` (the lab pipeline sets it from its config, `LabModelConfig.nemo_blocks`); without
it, and for Stable Diffusion, NeMo's down and mid blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fbmem_data.errors import InputError

if TYPE_CHECKING:
    import torch

SD_V1_WIDTHS = (320, 320, 640, 640, 1280, 1280, 1280)
NEMO_BLOCKS = ("down_blocks", "mid_block")  # NeMo's convention
BLOCKS_ATTRIBUTE = "fbmem_nemo_blocks"  # per-model override, set on the UNet module


@dataclass(frozen=True)
class NemoLayer:
    """One NeMo layer: its index, the attention module's path, and the value projection."""

    index: int
    name: str
    to_v: torch.nn.Linear

    @property
    def width(self) -> int:
        return int(self.to_v.out_features)


def nemo_blocks(unet: torch.nn.Module) -> tuple[str, ...]:
    """The top-level UNet blocks whose cross-attention value layers are NeMo layers for this model."""
    blocks = getattr(unet, BLOCKS_ATTRIBUTE, None)
    return tuple(blocks) if blocks else NEMO_BLOCKS


def discover_nemo_layers(unet: torch.nn.Module) -> list[NemoLayer]:
    """The NeMo layers of a UNet: block by block in the order of `nemo_blocks`, within a block in
    `named_modules()` order (NeMo's order for SD's down and mid blocks).

    Raises:
        InputError: the UNet has no cross-attention value projection in its NeMo blocks.
    """
    blocks = nemo_blocks(unet)
    layers: list[NemoLayer] = []
    for name, module in unet.named_modules():
        top = name.split(".", 1)[0]
        if top not in blocks or not name.endswith("attn2"):
            continue
        to_v = getattr(module, "to_v", None)
        if to_v is None or not hasattr(to_v, "out_features"):
            continue
        layers.append(NemoLayer(index=len(layers), name=name, to_v=to_v))
    # diffusers registers up_blocks before mid_block: order by the block list so that NeMo's own
    # down/mid layers keep their indices 0..6 when a model adds its up blocks
    layers.sort(key=lambda layer: blocks.index(layer.name.split(".", 1)[0]))
    layers = [NemoLayer(index=i, name=layer.name, to_v=layer.to_v) for i, layer in enumerate(layers)]
    if not layers:
        raise InputError(
            f"{type(unet).__name__} has no cross-attention (attn2.to_v) in its {' or '.join(blocks)}",
            hint="NeMo needs a text-conditioned UNet such as diffusers' UNet2DConditionModel",
        )
    return layers


def layer_widths(layers: list[NemoLayer]) -> list[int]:
    return [layer.width for layer in layers]
