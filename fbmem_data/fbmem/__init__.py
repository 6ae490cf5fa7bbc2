"""FB-Mem: fg/bg composition, region scoring and labels (method.md §1).

Library entry points (the CLI commands `fbmem segment|score|labels` are thin layers over them):

- `segment_images(ws, segmenter="saliency", ...)` fills the `masks` table;
- `score_pairs(ws, pairing_id=None, metric=..., preset=None, ...)` fills `region_scores`;
- `labels(ws, tau=0.8)` returns the `fbmem_rates` table; `label_rows(ws, tau)` the per-image labels.

Heavy modules (torch, cv2) are imported inside the functions, so importing this package is cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["label_rows", "labels", "score_pairs", "segment_images"]


def segment_images(*args: Any, **kwargs: Any) -> Any:
    from fbmem_data.fbmem.masks import segment_images as impl

    return impl(*args, **kwargs)


def score_pairs(*args: Any, **kwargs: Any) -> Any:
    from fbmem_data.fbmem.scoring import score_pairs as impl

    return impl(*args, **kwargs)


def labels(*args: Any, **kwargs: Any) -> Any:
    from fbmem_data.fbmem.labelling import labels as impl

    return impl(*args, **kwargs)


def label_rows(*args: Any, **kwargs: Any) -> Any:
    from fbmem_data.fbmem.labelling import label_rows as impl

    return impl(*args, **kwargs)
