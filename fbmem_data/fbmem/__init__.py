"""FB-Mem: fg/bg composition, region scoring and labels (the FB-Mem paper).

Library entry points (the CLI commands `fbmem segment|score|labels` are thin layers over them):

- `segment_images(ws, segmenter="saliency", ..., engine="local")` fills the `masks` table;
- `score_pairs(ws, pairing_id=None, request=ScoreRequest(...) or metric=..., preset=..., engine="local")`
  fills `region_scores`;
- `labels(ws, tau=0.8)` returns the `fbmem_rates` table; `label_rows(ws, tau)` the per-image labels.

These modules import numpy at most; torch, cv2 and the plug-ins load inside the functions.
"""

from __future__ import annotations

from fbmem_data.fbmem.labelling import label_of, label_rows, labels
from fbmem_data.fbmem.masks import segment_images
from fbmem_data.fbmem.scoring import PairScorer, ScoreRequest, score_pairs

__all__ = ["PairScorer", "ScoreRequest", "label_of", "label_rows", "labels", "score_pairs", "segment_images"]
