"""`birefnet`: the reference segmenter of FB-Mem (BiRefNet "birefnet-general"), run from local files.

Two ways to give it weights (nothing is ever downloaded):
- an ONNX file (or a directory holding exactly one *.onnx): run with onnxruntime. Contract of the
  graph: input float32 Nx3xSxS (ImageNet-normalised RGB), output Nx1xSxS logits (the last output when
  there are several, as BiRefNet exports emit their finest prediction last);
- a Hugging Face model directory (config.json + weights of ZhengPeng7/BiRefNet, downloaded by you):
  run with transformers' AutoModelForImageSegmentation (trust_remote_code, local files only).

Two processings (`processing=`):
- "birefnet" (default): BiRefNet's inference script: resize to `input_size` (1024, bilinear), /255,
  ImageNet mean/std, sigmoid of the last output, resize back to the image (bilinear);
- "rembg": what the paper ran (rembg's "birefnet-general" session): resize to `input_size` with Pillow's
  LANCZOS, divide by the resized image's maximum, ImageNet mean/std, sigmoid of the *first* output,
  per-image min-max stretch to [0, 1], truncation to uint8, Pillow LANCZOS back to the image's size.
  The mask is that uint8 mask / 255 (a flat prediction, max = min, gives an empty mask where rembg
  would divide by zero).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fbmem_data.devices import resolve_device
from fbmem_data.errors import InputError, ModelNotFoundError
from fbmem_data.segment.base import ImageBatch, Segmenter, check_batch

_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)
ENV_VAR = "FBMEM_BIREFNET"
PROCESSINGS = ("birefnet", "rembg")
HOW_TO_GET = (
    "export ZhengPeng7/BiRefNet (birefnet-general) to ONNX (e.g. the birefnet-general ONNX release on the "
    "BiRefNet GitHub page, or torch.onnx.export of the HF model) and pass its path with "
    f"--segmenter-path / model_path=..., or set ${ENV_VAR}; a local snapshot directory of the HF repo "
    "ZhengPeng7/BiRefNet works too"
)


def _find_model(model_path: str | Path | None) -> Path:
    import os

    if model_path is None:
        model_path = os.environ.get(ENV_VAR)
    if not model_path:
        raise ModelNotFoundError("the birefnet segmenter needs local BiRefNet weights and none were given", hint=HOW_TO_GET)
    path = Path(model_path).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"BiRefNet weights not found at {path}", hint=HOW_TO_GET)
    return path


class BiRefNetSegmenter(Segmenter):
    name = "birefnet"
    supports_cuda = True

    def __init__(
        self,
        model_path: str | Path | None = None,
        input_size: int = 1024,
        device: str = "auto",
        batch_size: int = 4,
        processing: str = "birefnet",
    ) -> None:
        if processing not in PROCESSINGS:
            raise InputError(f"unknown BiRefNet processing {processing!r}", hint=f"one of {list(PROCESSINGS)}")
        self.processing = processing
        self.device = resolve_device(device)
        self.path = _find_model(model_path)
        self.input_size = int(input_size)
        self.batch_size = int(batch_size)
        onnx_files = [self.path] if self.path.suffix == ".onnx" else sorted(self.path.glob("*.onnx"))
        if self.path.is_file() and self.path.suffix != ".onnx":
            raise ModelNotFoundError(f"{self.path} is not an .onnx file or a model directory", hint=HOW_TO_GET)
        self._session: Any = None
        self._torch_model: Any = None
        if onnx_files:
            if len(onnx_files) > 1:
                raise ModelNotFoundError(f"{self.path} holds several .onnx files: {[p.name for p in onnx_files]}", hint="pass one file")
            self._load_onnx(onnx_files[0])
        elif (self.path / "config.json").exists():
            self._load_hf_dir(self.path)
        else:
            raise ModelNotFoundError(f"{self.path} holds neither an .onnx file nor a config.json", hint=HOW_TO_GET)

    def _load_onnx(self, path: Path) -> None:
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if self.device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise InputError("onnxruntime here has no CUDA provider", hint="install onnxruntime-gpu or use --device cpu")
            providers.insert(0, "CUDAExecutionProvider")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1 if self.device == "cpu" else 0
        try:
            self._session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors for damaged files
            raise ModelNotFoundError(f"cannot load ONNX model {path}: {exc}", hint=HOW_TO_GET) from exc
        inp = self._session.get_inputs()[0]
        self._input_name = inp.name
        shape = inp.shape
        # a static batch dimension of 1 means one image per call
        self._static_batch = shape[0] if isinstance(shape[0], int) else None
        if isinstance(shape[2], int) and isinstance(shape[3], int):
            self.input_size = int(shape[2])

    def _load_hf_dir(self, path: Path) -> None:
        import torch
        from transformers import AutoModelForImageSegmentation

        try:
            model = AutoModelForImageSegmentation.from_pretrained(str(path), trust_remote_code=True, local_files_only=True)
        except Exception as exc:  # remote code raises anything
            raise ModelNotFoundError(f"cannot load BiRefNet from {path}: {exc}", hint=HOW_TO_GET) from exc
        self._torch_model = model.to(self.device).eval()
        self._torch = torch

    def params(self) -> dict[str, Any]:
        p = {"segmenter": self.name, "model": self.path.name, "input_size": self.input_size}
        if self.processing != "birefnet":
            p["processing"] = self.processing  # only when set: existing masks keep their params_hash
        return p

    def _preprocess(self, images: list[np.ndarray]) -> np.ndarray:
        import cv2

        s = self.input_size
        batch = [(cv2.resize(img, (s, s), interpolation=cv2.INTER_LINEAR) - _MEAN) / _STD for img in images]
        return np.stack(batch).transpose(0, 3, 1, 2).astype(np.float32)

    def _logits(self, x: np.ndarray) -> np.ndarray:
        pick = 0 if self.processing == "rembg" else -1  # rembg reads outputs[0]; BiRefNet's finest is last
        if self._session is not None:
            if self._static_batch is not None:
                outs = [self._session.run(None, {self._input_name: x[i : i + 1]})[pick] for i in range(len(x))]
                return np.concatenate(outs)
            return self._session.run(None, {self._input_name: x})[pick]
        torch = self._torch
        with torch.inference_mode():
            out = self._torch_model(torch.from_numpy(x).to(self.device))
            out = out[pick] if isinstance(out, (list, tuple)) else out
            return out.float().cpu().numpy()

    def _rembg_input(self, img: np.ndarray) -> np.ndarray:
        """rembg's normalisation of one image: LANCZOS to the input size, / max, ImageNet mean/std."""
        from PIL import Image

        s = self.input_size
        u8 = np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)  # check_batch gave x/255
        resized = np.asarray(Image.fromarray(u8, "RGB").resize((s, s), Image.Resampling.LANCZOS)).astype(np.float64)
        x = resized / max(float(resized.max()), 1e-6)
        x = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])  # in float64, as rembg
        return x.transpose(2, 0, 1).astype(np.float32)

    def _rembg_masks(self, chunk: list[np.ndarray], logits: np.ndarray) -> list[np.ndarray]:
        """rembg's post-processing: sigmoid, min-max stretch, uint8 truncation, LANCZOS back."""
        from PIL import Image

        out = []
        for img, z in zip(chunk, logits[:, 0].astype(np.float32), strict=True):
            pred = 1.0 / (1.0 + np.exp(-z))
            lo, hi = pred.min(), pred.max()  # float32 scalars: the stretch in float32, as rembg
            pred = (pred - lo) / (hi - lo) if hi > lo else np.zeros_like(pred)
            m = Image.fromarray((pred * 255).astype(np.uint8), "L")
            h, w = img.shape[:2]
            out.append(np.asarray(m.resize((w, h), Image.Resampling.LANCZOS)).astype(np.float32) / 255.0)
        return out

    def segment(self, images: ImageBatch) -> list[np.ndarray]:
        import cv2

        imgs = check_batch(images)
        masks: list[np.ndarray] = []
        if self.processing == "rembg":
            for start in range(0, len(imgs), self.batch_size):
                chunk = imgs[start : start + self.batch_size]
                logits = self._logits(np.stack([self._rembg_input(img) for img in chunk]))
                if logits.ndim != 4 or logits.shape[1] != 1:
                    raise InputError(f"BiRefNet model returned shape {logits.shape}, expected Nx1xHxW logits")
                masks += self._rembg_masks(chunk, logits)
            return masks
        for start in range(0, len(imgs), self.batch_size):
            chunk = imgs[start : start + self.batch_size]
            logits = self._logits(self._preprocess(chunk))
            if logits.ndim != 4 or logits.shape[1] != 1:
                raise InputError(f"BiRefNet model returned shape {logits.shape}, expected Nx1xHxW logits")
            prob = 1.0 / (1.0 + np.exp(-logits[:, 0].astype(np.float32)))
            for img, p in zip(chunk, prob, strict=True):
                h, w = img.shape[:2]
                masks.append(np.clip(cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR), 0, 1).astype(np.float32))
        return masks


def make_birefnet(**kwargs: Any) -> BiRefNetSegmenter:
    return BiRefNetSegmenter(**kwargs)
