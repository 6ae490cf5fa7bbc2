"""`saliency`: a weights-free salient-object segmenter for any image on a CPU.

Rule (deterministic):
1. Work on a copy whose longer side is `work_size` pixels, in CIE Lab, lightly blurred.
2. Border-contrast saliency: a pixel's saliency is its Lab distance to the nearest of `n_border_samples`
   colours sampled evenly from a border strip `border` (fraction of the shorter side) wide, blurred and
   scaled to [0, 1] by its 99th percentile. Objects rarely touch every border; backgrounds usually do.
3. GrabCut seeded from that map: border strip = sure background, saliency above Otsu's threshold =
   probable foreground, the rest probable background; `iterations` rounds with OpenCV's RNG seeded to 0.
   If GrabCut keeps nothing while the map has a clear object, the Otsu mask is used instead.
4. The binary mask is resized to the image and feathered (Gaussian, `feather` pixels) into a soft mask.
No salient colour at all (Otsu splits nothing) gives an empty mask: "no object".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fbmem_data.devices import resolve_device
from fbmem_data.segment.base import ImageBatch, Segmenter, check_batch


class SaliencySegmenter(Segmenter):
    name = "saliency"

    def __init__(
        self,
        work_size: int = 192,
        border: float = 0.06,
        n_border_samples: int = 512,
        iterations: int = 4,
        feather: float = 1.0,
        device: str = "cpu",
    ) -> None:
        resolve_device(device)  # validates the argument; the algorithm itself runs on the CPU
        self.work_size = int(work_size)
        self.border = float(border)
        self.n_border_samples = int(n_border_samples)
        self.iterations = int(iterations)
        self.feather = float(feather)

    def params(self) -> dict[str, Any]:
        return {
            "segmenter": self.name,
            "work_size": self.work_size,
            "border": self.border,
            "n_border_samples": self.n_border_samples,
            "iterations": self.iterations,
            "feather": self.feather,
            "version": 1,
        }

    def segment(self, images: ImageBatch) -> list[np.ndarray]:
        return [self._segment_one(img) for img in check_batch(images)]

    def saliency_map(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(saliency in [0, 1] at work size, border-strip boolean mask) for one float RGB image."""
        import cv2

        h, w = image.shape[:2]
        scale = self.work_size / max(h, w)
        size = (max(2, round(w * scale)), max(2, round(h * scale)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), 1.0)
        lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB).reshape(-1, 3)
        sh, sw = small.shape[:2]
        bw = max(1, round(min(sh, sw) * self.border))
        strip = np.zeros((sh, sw), dtype=bool)
        strip[:bw], strip[-bw:], strip[:, :bw], strip[:, -bw:] = True, True, True, True
        border_px = lab[strip.reshape(-1)]
        step = max(1, len(border_px) // self.n_border_samples)
        samples = border_px[::step][: self.n_border_samples]
        # squared distances to every sample, in chunks to bound memory
        # |a - b|^2 = |a|^2 + |b|^2 - 2 a.b: one matrix product instead of a pixels x samples x 3 array
        cross = lab @ samples.T
        best = (lab**2).sum(1) + ((samples**2).sum(1)[None, :] - 2 * cross).min(1)
        sal = np.sqrt(np.maximum(best, 0.0)).reshape(sh, sw)
        sal = cv2.GaussianBlur(sal, (0, 0), max(1.0, 0.01 * max(sh, sw)))
        top = float(np.percentile(sal, 99))
        sal = np.clip(sal / top, 0.0, 1.0) if top > 1e-6 else np.zeros_like(sal)
        return sal.astype(np.float32), strip

    def _segment_one(self, image: np.ndarray) -> np.ndarray:
        import cv2

        h, w = image.shape[:2]
        sal, strip = self.saliency_map(image)
        sal_u8 = np.round(sal * 255).astype(np.uint8)
        if int(sal_u8.max()) - int(sal_u8.min()) < 26:  # flat map: nothing stands out (< 10% contrast)
            return np.zeros((h, w), dtype=np.float32)
        thresh, _ = cv2.threshold(sal_u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        seed_fg = (sal_u8 > thresh) & ~strip
        if not seed_fg.any():
            return np.zeros((h, w), dtype=np.float32)
        gc_mask = np.full(sal.shape, cv2.GC_PR_BGD, dtype=np.uint8)
        gc_mask[seed_fg] = cv2.GC_PR_FGD
        gc_mask[strip] = cv2.GC_BGD
        small = cv2.resize(image, (sal.shape[1], sal.shape[0]), interpolation=cv2.INTER_AREA)
        small_u8 = np.round(small * 255).astype(np.uint8)
        bgd = np.zeros((1, 65), np.float64)
        fgd = np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(0)  # GrabCut's GMM initialisation draws from OpenCV's RNG
        try:
            cv2.grabCut(small_u8, gc_mask, None, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_MASK)
            fg = (gc_mask == cv2.GC_FGD) | (gc_mask == cv2.GC_PR_FGD)
        except cv2.error:  # degenerate colour models (e.g. too few pixels of a class)
            fg = seed_fg
        if not fg.any():
            fg = seed_fg
        mask = cv2.resize(fg.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        if self.feather > 0:
            mask = cv2.GaussianBlur(mask, (0, 0), self.feather)
        return np.clip(mask, 0.0, 1.0).astype(np.float32)


def make_saliency(**kwargs: Any) -> SaliencySegmenter:
    return SaliencySegmenter(**kwargs)
