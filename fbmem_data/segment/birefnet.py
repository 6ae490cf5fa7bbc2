"""`birefnet`: the reference segmenter of FB-Mem (BiRefNet "birefnet-general"), run from local files.

Two ways to give it weights (nothing is ever downloaded):
- an ONNX file (or a directory holding exactly one *.onnx): run with onnxruntime. Contract of the
  graph: input float32 Nx3xSxS (ImageNet-normalised RGB), output Nx1xSxS logits (the last output when
  there are several, as BiRefNet exports emit their finest prediction last);
- a Hugging Face model directory (config.json + weights of ZhengPeng7/BiRefNet, downloaded by you):
  run with transformers' AutoModelForImageSegmentation (trust_remote_code, local files only).

Pre/post-processing follows BiRefNet's inference script: resize to `input_size` (1024), normalise with
ImageNet mean/std, sigmoid of the logits, resize back to the image (bilinear).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fbmem_data.errors import InputError, ModelNotFoundError
from fbmem_data.plugins import register
from fbmem_data.segment.base import ImageBatch, Segmenter, check_batch, resolve_device

_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)
ENV_VAR = "FBMEM_BIREFNET"
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
    ) -> None:
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
        return {"segmenter": self.name, "model": self.path.name, "input_size": self.input_size}

    def _preprocess(self, images: list[np.ndarray]) -> np.ndarray:
        import cv2

        s = self.input_size
        batch = [(cv2.resize(img, (s, s), interpolation=cv2.INTER_LINEAR) - _MEAN) / _STD for img in images]
        return np.stack(batch).transpose(0, 3, 1, 2).astype(np.float32)

    def _logits(self, x: np.ndarray) -> np.ndarray:
        if self._session is not None:
            if self._static_batch is not None:
                outs = [self._session.run(None, {self._input_name: x[i : i + 1]})[-1] for i in range(len(x))]
                return np.concatenate(outs)
            return self._session.run(None, {self._input_name: x})[-1]
        torch = self._torch
        with torch.inference_mode():
            out = self._torch_model(torch.from_numpy(x).to(self.device))
            out = out[-1] if isinstance(out, (list, tuple)) else out
            return out.float().cpu().numpy()

    def segment(self, images: ImageBatch) -> list[np.ndarray]:
        import cv2

        imgs = check_batch(images)
        masks: list[np.ndarray] = []
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


@register("segmenter", "birefnet")
def make_birefnet(**kwargs: Any) -> BiRefNetSegmenter:
    return BiRefNetSegmenter(**kwargs)
