"""`open_clip`: CLIP image embeddings (semantic similarity) from local OpenCLIP weights.

Weights are never downloaded: `pretrained` is a checkpoint file (.bin/.pt/.safetensors) for the
architecture `model_name`, or a directory holding one (an `open_clip_config.json` there selects
the architecture itself, as in OpenCLIP's "local-dir:" models). NeMo's prompt-alignment metric uses
OpenAI's ViT-B/32: architecture "ViT-B-32-quickgelu" with its checkpoint. `random_init=True`
builds the architecture with random weights (seeded), for tests and plumbing checks only.
Preprocessing is OpenCLIP's own inference transform (resize shortest side, centre crop, CLIP mean/std).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fbmem_data.devices import resolve_device
from fbmem_data.embed.base import as_rgb, file_fingerprint, l2_normalise
from fbmem_data.errors import ModelNotFoundError, PluginError

if TYPE_CHECKING:
    from PIL import Image

_GET_HINT = (
    "fbmem does not download weights: fetch a checkpoint once, e.g. "
    "`hf download timm/vit_base_patch32_clip_224.openai open_clip_model.safetensors --local-dir clip-b32` "
    "and pass --model-name ViT-B-32-quickgelu --weights clip-b32/open_clip_model.safetensors"
)
ENV_VAR = "FBMEM_OPENCLIP"
_CHECKPOINT_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
)


def _checkpoint_in_dir(directory: Path) -> Path:
    for name in _CHECKPOINT_NAMES:
        if (directory / name).is_file():
            return directory / name
    found = sorted(p for ext in ("*.safetensors", "*.bin", "*.pt", "*.pth") for p in directory.glob(ext))
    if not found:
        raise ModelNotFoundError(f"no OpenCLIP checkpoint (.safetensors/.bin/.pt/.pth) in {directory}", hint=_GET_HINT)
    return found[0]


@dataclass(frozen=True)
class LoadedOpenClip:
    """An OpenCLIP model built from local weights (or random ones), with what identifies it."""

    model: Any  # open_clip CLIP, in eval mode, on `device`
    preprocess: Any  # OpenCLIP's inference transform (PIL image -> tensor)
    arch: str  # the architecture open_clip built ("ViT-B-32", or "local-dir:PATH")
    weights_id: str  # file fingerprint of the checkpoint, or "random-init:SEED"
    device: str


def load_open_clip(
    model_name: str = "ViT-B-32",
    pretrained: str | Path | None = None,
    *,
    random_init: bool = False,
    seed: int = 0,
    model_overrides: dict[str, Any] | None = None,
    device: str | None = "auto",
    who: str = "the open_clip embedder",
) -> LoadedOpenClip:
    """Build an OpenCLIP model from a local checkpoint (never downloads); shared by every CLIP user.

    Args:
        model_name: an OpenCLIP architecture name (open_clip.list_models()).
        pretrained: local checkpoint file, or directory holding one (see module doc); default
            $FBMEM_OPENCLIP (what `fbmem doctor` checks).
        random_init: build with seeded random weights instead (pretrained must be None).
        seed: the torch seed for random_init.
        model_overrides: keyword overrides for the architecture config (e.g. a tiny vision_cfg in tests).
        device: auto, cpu, cuda, cuda:N.
        who: names the caller in error messages.

    Raises:
        ModelNotFoundError: no weights given, or the path does not exist / holds no checkpoint.
        PluginError: open_clip is not installed, or the checkpoint does not fit the architecture.
    """
    try:
        import open_clip
    except ImportError as exc:
        raise PluginError(f"{who} needs open-clip-torch", hint="pip install 'fbmem[clip]'") from exc
    import torch

    resolved = resolve_device(device)
    checkpoint: Path | None = None
    arch = model_name
    if random_init:
        if pretrained is not None:
            raise PluginError("open_clip: pass either pretrained=PATH or random_init=True, not both")
        weights_id = f"random-init:{seed}"
    else:
        pretrained = pretrained or os.environ.get(ENV_VAR) or None
        if pretrained is None:
            raise ModelNotFoundError(f"{who} needs local weights (pretrained=PATH or ${ENV_VAR})", hint=_GET_HINT)
        path = Path(pretrained).expanduser()
        if not path.exists():
            raise ModelNotFoundError(f"OpenCLIP weights {path} do not exist", hint=_GET_HINT)
        if path.is_dir() and (path / "open_clip_config.json").is_file():
            arch = f"local-dir:{path}"
            checkpoint = _checkpoint_in_dir(path)
        else:
            checkpoint = _checkpoint_in_dir(path) if path.is_dir() else path
        weights_id = file_fingerprint(checkpoint)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch,
                pretrained=None if arch.startswith("local-dir:") or checkpoint is None else str(checkpoint),
                device=resolved,
                **dict(model_overrides or {}),
            )
    except (RuntimeError, ValueError, KeyError, FileNotFoundError, AssertionError) as exc:
        # open_clip reports shape mismatches between checkpoint and architecture with assert.
        raise PluginError(f"open_clip could not build {arch!r} from {checkpoint or 'random weights'}: {exc}") from exc
    return LoadedOpenClip(model=model.eval(), preprocess=preprocess, arch=arch, weights_id=weights_id, device=resolved)


class OpenClipEmbedder:
    """CLIP image tower output (after projection), L2-normalised; dim = the model's embed_dim."""

    name = "open_clip"

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str | Path | None = None,
        *,
        random_init: bool = False,
        seed: int = 0,
        model_overrides: dict[str, Any] | None = None,
        device: str | None = "auto",
    ) -> None:
        """
        Args:
            model_name: an OpenCLIP architecture name (open_clip.list_models()).
            pretrained: local checkpoint file, or directory holding one (see module doc).
            random_init: build with seeded random weights instead (pretrained must be None).
            seed: the torch seed for random_init.
            model_overrides: keyword overrides for the architecture config (e.g. a tiny
                vision_cfg in tests); they are part of params().
            device: auto, cpu, cuda, cuda:N.

        Raises:
            ModelNotFoundError: no weights given, or the path does not exist / holds no checkpoint.
            PluginError: open_clip is not installed, or the checkpoint does not fit the architecture.
        """
        self.model_overrides = dict(model_overrides or {})
        self.model_name = model_name
        loaded = load_open_clip(
            model_name, pretrained, random_init=random_init, seed=seed, model_overrides=self.model_overrides, device=device
        )
        self.device = loaded.device
        self.model = loaded.model
        self.preprocess = loaded.preprocess
        self.dim = int(self.model.visual.output_dim)
        self._weights_id = loaded.weights_id

    def params(self) -> dict[str, Any]:
        return {"model": self.model_name, "weights": self._weights_id, "overrides": self.model_overrides}

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        rgb = as_rgb(images)
        if not rgb:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = torch.stack([self.preprocess(img) for img in rgb]).to(self.device)
        with torch.inference_mode():
            out = self.model.encode_image(batch)
        return l2_normalise(out.float().cpu().numpy())
