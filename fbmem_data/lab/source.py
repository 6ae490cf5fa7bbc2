"""The lab model as a model source (`--model lab`), registered under the `fbmem.models` entry points."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


class LabModelSource:
    """The shipped lab model v1.3 (`--model lab`, data/lab/); follows generate.loading.ModelSource."""

    name = "lab"

    #: Measured CPU cost of one UNet evaluation of one image, (seconds, pixels), for `generate --dry-run`:
    #: 2.11 images/s at 10 DDIM steps, guidance 7 (2 evaluations a step), 64 x 64, batch 8, one thread
    #: (docs/performance.md, generate row).
    cpu_cost = (1 / (2.11 * 10 * 2), 64 * 64)

    @property
    def model_id(self) -> str:
        from fbmem_data.lab.pipeline import LAB_MODEL_ID

        return LAB_MODEL_ID

    @property
    def weights_dir(self) -> Path:
        from fbmem_data.lab.pipeline import lab_weights_dir

        return lab_weights_dir(self.name)

    def load(self, dtype: torch.dtype) -> tuple[Any, str | None]:
        """The lab pipeline in `dtype` and a content hash of its weights.

        Raises:
            ModelNotFoundError: the lab weights are missing (the message says how to train them).
        """
        from fbmem_data.lab import pipeline as lab_pipeline

        pipe = lab_pipeline.load_lab_pipeline(self.weights_dir).to(dtype=dtype)
        return pipe, lab_weights_hash(self.weights_dir)


class LabV2ModelSource(LabModelSource):
    """Lab v2 (`--model lab-v2`, data/lab-v2/): trained from scratch, text only through NeMo's layers."""

    name = "lab-v2"

    @property
    def model_id(self) -> str:
        from fbmem_data.lab.pipeline import LAB_V2_MODEL_ID

        return LAB_V2_MODEL_ID


def lab_weights_hash(weights_dir: Path) -> str | None:
    """A content hash of the shipped lab weights (recorded in runs.model_versions)."""
    digest = hashlib.sha256()
    files = sorted(p.name for p in weights_dir.glob("*.safetensors"))
    for name in files:
        with open(weights_dir / name, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16] if files else None
