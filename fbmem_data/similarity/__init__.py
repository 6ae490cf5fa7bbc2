"""Similarity metrics for FB-Mem region scores (plug-in family `fbmem.metrics`, entry points).

- `msssim`: MS-SSIM exactly as torchmetrics computes it (the paper's metric), with per-image work
  (blurred means and variances at every scale) done once per image, and only the cross term per pair.
- `ssim`: single-scale SSIM, same engine.
- `msssim-masked`: the stricter variant: MS-SSIM with statistics restricted to a region by normalized
  convolution (the mask union for foregrounds, the shared background for backgrounds).
- `msssim-regions`: the default: masked MS-SSIM of the images themselves (not the cut-outs) inside the
  mask union and the shared background, so masks that disagree a little do not matter (regions.py).

See base.py for the `RegionMetric` protocol and docs/fbmem.md for the measurements behind the default.
"""

from __future__ import annotations

from fbmem_data.similarity.base import RegionMetric

__all__ = ["RegionMetric", "metric_names", "register_builtin_metrics"]


def metric_names() -> list[str]:
    """Every installed metric's name (family `fbmem.metrics`; reads entry points, imports no plug-in)."""
    from fbmem_data import plugins

    return plugins.names(plugins.METRICS)


def register_builtin_metrics() -> None:
    """Kept for callers of the old API: metrics are found through entry points, nothing to do."""
