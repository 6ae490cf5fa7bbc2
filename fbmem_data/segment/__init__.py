"""Segmenters: an RGB image in, a soft foreground mask in [0, 1] out (FB-Mem step 1).

Every segmenter is a plug-in of family "segmenter" in fbmem_data.plugins and implements
`Segmenter` (see base.py). Built-in: `saliency` (weights-free, CPU), `birefnet` (ONNX or a local
model directory), `sam` (segment-anything checkpoint). A lab segmenter registers itself the same way.
"""

from __future__ import annotations

from fbmem_data.segment.base import Segmenter, as_rgb_float, check_batch

__all__ = ["Segmenter", "as_rgb_float", "check_batch", "register_builtin_segmenters"]


#: Modules outside this package that register segmenters when imported (absent ones are skipped).
EXTRA_SEGMENTER_MODULES: tuple[str, ...] = ("fbmem_data.lab.segmenter",)


def register_builtin_segmenters() -> None:
    """Register the built-in segmenters and those of EXTRA_SEGMENTER_MODULES (imports only; no torch)."""
    import importlib

    from fbmem_data.segment import birefnet, saliency, sam  # noqa: F401

    for module in EXTRA_SEGMENTER_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module.startswith(exc.name):
                raise  # the module exists but one of its own imports is missing: say so
