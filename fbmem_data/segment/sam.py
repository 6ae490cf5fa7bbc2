"""`sam`: Segment Anything from a local checkpoint, reduced to one salient foreground per image.

Rule (documented, deterministic): prompt SAM with one centred box whose edges sit `box_margin` of the
width/height inside the image borders (salient subjects are framed, not cropped), ask for SAM's three
multimask outputs, keep those covering between `min_area` and `max_area` of the image (all three if
none does), and return the one with the highest predicted IoU. The soft mask is the sigmoid of that
output's logits at full resolution.

Batching: the image encoder (nearly all of SAM's cost) runs on the whole batch at once on `device`;
the light prompt encoder / mask decoder run per image.

Weights: `sam_model_registry[model_type]` builds the architecture; the checkpoint (e.g.
sam_vit_b_01ec64.pth from the segment-anything README) is loaded with torch.load(weights_only=True).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fbmem_data.devices import resolve_device
from fbmem_data.errors import ModelNotFoundError, PluginError
from fbmem_data.segment.base import ImageBatch, Segmenter, check_batch

ENV_VAR = "FBMEM_SAM_CHECKPOINT"
HOW_TO_GET = (
    "download a SAM checkpoint (vit_b: sam_vit_b_01ec64.pth, vit_l, vit_h) from "
    "https://github.com/facebookresearch/segment-anything#model-checkpoints and pass "
    f"checkpoint=PATH (and model_type) or set ${ENV_VAR}"
)


class SamSegmenter(Segmenter):
    name = "sam"
    supports_cuda = True

    def __init__(
        self,
        model: Any,
        device: str = "auto",
        batch_size: int = 4,
        box_margin: float = 0.05,
        min_area: float = 0.01,
        max_area: float = 0.95,
        model_label: str = "custom",
    ) -> None:
        import torch

        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.batch_size = int(batch_size)
        self.box_margin = float(box_margin)
        self.min_area = float(min_area)
        self.max_area = float(max_area)
        self.model_label = model_label
        self._torch = torch

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path | None = None,
        model_type: str = "vit_b",
        build: Callable[[], Any] | None = None,
        **kwargs: Any,
    ) -> SamSegmenter:
        """Build the architecture and load a local checkpoint (weights_only).

        Args:
            checkpoint: path of the .pth file; defaults to $FBMEM_SAM_CHECKPOINT.
            model_type: a key of segment_anything.sam_model_registry (vit_b, vit_l, vit_h).
            build: builds the architecture instead of the registry (tests use a tiny SAM).

        Raises:
            ModelNotFoundError: no checkpoint given, missing file, or it does not fit the architecture.
            PluginError: segment-anything is not installed, or model_type is unknown.
        """
        import os

        import torch

        checkpoint = checkpoint or os.environ.get(ENV_VAR)
        if not checkpoint:
            raise ModelNotFoundError("the sam segmenter needs a local SAM checkpoint and none was given", hint=HOW_TO_GET)
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(f"SAM checkpoint not found at {path}", hint=HOW_TO_GET)
        if build is None:
            try:
                from segment_anything import sam_model_registry
            except ImportError as exc:
                raise PluginError("the sam segmenter needs the segment-anything package", hint="pip install 'fbmem[sam]'") from exc
            if model_type not in sam_model_registry:
                raise PluginError(f"unknown SAM model_type {model_type!r}", hint=f"one of {sorted(sam_model_registry)}")
            model = sam_model_registry[model_type](checkpoint=None)
        else:
            model = build()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except (RuntimeError, OSError, ValueError) as exc:
            raise ModelNotFoundError(f"cannot load SAM checkpoint {path} as {model_type}: {exc}", hint=HOW_TO_GET) from exc
        return cls(model, model_label=f"{model_type}:{path.name}", **kwargs)

    def params(self) -> dict[str, Any]:
        return {
            "segmenter": self.name,
            "model": self.model_label,
            "box_margin": self.box_margin,
            "min_area": self.min_area,
            "max_area": self.max_area,
        }

    def segment(self, images: ImageBatch) -> list[np.ndarray]:
        from segment_anything.utils.transforms import ResizeLongestSide

        torch = self._torch
        imgs = check_batch(images)
        sam = self.model
        transform = ResizeLongestSide(sam.image_encoder.img_size)
        out: list[np.ndarray] = []
        with torch.inference_mode():
            for start in range(0, len(imgs), self.batch_size):
                chunk = imgs[start : start + self.batch_size]
                resized = []
                for img in chunk:
                    u8 = np.round(img * 255).astype(np.uint8)
                    t = torch.as_tensor(transform.apply_image(u8), device=self.device).permute(2, 0, 1).float()
                    resized.append(t)
                batch = torch.stack([sam.preprocess(t) for t in resized])
                embeddings = sam.image_encoder(batch)
                dense_pe = sam.prompt_encoder.get_dense_pe()
                for i, img in enumerate(chunk):
                    h, w = img.shape[:2]
                    mx, my = self.box_margin * w, self.box_margin * h
                    box = torch.tensor([[mx, my, w - mx, h - my]], dtype=torch.float32, device=self.device)
                    box = transform.apply_boxes_torch(box, (h, w))
                    sparse, dense = sam.prompt_encoder(points=None, boxes=box, masks=None)
                    low_res, iou = sam.mask_decoder(
                        image_embeddings=embeddings[i : i + 1],
                        image_pe=dense_pe,
                        sparse_prompt_embeddings=sparse,
                        dense_prompt_embeddings=dense,
                        multimask_output=True,
                    )
                    logits = sam.postprocess_masks(low_res, tuple(resized[i].shape[-2:]), (h, w))[0]
                    out.append(self._choose(logits, iou[0]))
        return out

    def _choose(self, logits: Any, iou: Any) -> np.ndarray:
        torch = self._torch
        area = (logits > 0).float().mean(dim=(1, 2))
        ok = (area >= self.min_area) & (area <= self.max_area)
        score = torch.where(ok, iou, iou - 10.0) if bool(ok.any()) else iou
        best = int(torch.argmax(score))
        return torch.sigmoid(logits[best]).float().cpu().numpy().astype(np.float32)


def make_sam(
    checkpoint: str | Path | None = None, model_type: str = "vit_b", model: Any = None, **kwargs: Any
) -> SamSegmenter:
    if model is not None:
        return SamSegmenter(model, **kwargs)
    return SamSegmenter.from_checkpoint(checkpoint, model_type, **kwargs)
