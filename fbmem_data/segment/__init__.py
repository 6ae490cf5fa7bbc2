"""Segmenters: an RGB image in, a soft foreground mask in [0, 1] out (FB-Mem step 1).

Every segmenter is a plug-in of family `fbmem.segmenters` (fbmem_data/plugins.py), declared as an
entry point, and implements `Segmenter` (see base.py). Built-in: `saliency` (weights-free, CPU),
`birefnet` (ONNX or a local model directory), `sam` (segment-anything checkpoint); the lab's and any
installed package's segmenters are found the same way.
"""

from __future__ import annotations

from fbmem_data.segment.base import Segmenter, as_rgb_float, check_batch

__all__ = ["Segmenter", "as_rgb_float", "check_batch", "register_builtin_segmenters", "segmenter_names"]


def segmenter_names() -> list[str]:
    """Every installed segmenter's name (reads entry points; imports no plug-in)."""
    from fbmem_data import plugins

    return plugins.names(plugins.SEGMENTERS)


def register_builtin_segmenters() -> None:
    """Kept for callers of the old API: segmenters are found through entry points, nothing to do."""
