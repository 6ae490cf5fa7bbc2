"""`clip`: CLIP score of a generated image against its prompt text, from local OpenCLIP weights.

value = 100 * max(cos(E_image, E_text), 0), as torchmetrics' CLIPScore (Hessel et al. 2021 without
their 2.5 weight) computes it per image. NeMo (Hintersdorf et al.) reports prompt alignment with
OpenAI's ViT-B/32, hence the default architecture "ViT-B-32-quickgelu" (OpenAI's checkpoints were
trained with QuickGELU; plain "ViT-B-32" would build the wrong activation for them).

Weights load through `fbmem_data.embed.clip.load_open_clip` (never downloads: a local checkpoint
file or directory; `random_init=True` with `model_overrides` builds a tiny model for tests). Texts
go through OpenCLIP's tokenizer for the architecture (the built-in BPE tokenizer needs no network)
and are cut at the model's context length, as OpenCLIP and CLIPScore do.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fbmem_data.errors import ModelNotFoundError
from fbmem_data.utility.base import UtilityInput, UtilityValue, check_items

DEFAULT_MODEL = "ViT-B-32-quickgelu"


class ClipScore:
    """CLIP image-text alignment of each generation with its own prompt (0..100, higher = closer)."""

    name = "clip"

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL,
        pretrained: str | Path | None = None,
        *,
        random_init: bool = False,
        seed: int = 0,
        model_overrides: dict[str, Any] | None = None,
        device: str | None = "auto",
    ) -> None:
        """
        Args:
            model_name: an OpenCLIP architecture name; ignored when `pretrained` is a directory with
                its own open_clip_config.json.
            pretrained: local checkpoint file, or directory holding one.
            random_init: seeded random weights instead (tests, plumbing checks; pretrained must be None).
            seed: torch seed for random_init.
            model_overrides: architecture config overrides (part of params()).
            device: auto, cpu, cuda, cuda:N.

        Raises:
            ModelNotFoundError: no weights given, the path is missing, or the tokenizer needs files
                that are not available offline.
            PluginError: open_clip is missing, or the checkpoint does not fit the architecture.
        """
        from fbmem_data.embed.clip import load_open_clip

        self.model_name = model_name
        self.model_overrides = dict(model_overrides or {})
        loaded = load_open_clip(
            model_name, pretrained, random_init=random_init, seed=seed, model_overrides=self.model_overrides,
            device=device, who="the clip utility metric",
        )
        self.device = loaded.device
        self.model = loaded.model
        self.preprocess = loaded.preprocess
        self._weights_id = loaded.weights_id
        arch_label = loaded.arch.removeprefix("local-dir:")
        self.metric = f"CLIP score ({Path(arch_label).name if loaded.arch.startswith('local-dir:') else arch_label})"
        self.tokenizer = _tokenizer(loaded.arch, int(getattr(self.model, "context_length", 77)))

    def params(self) -> dict[str, Any]:
        return {"model": self.model_name, "weights": self._weights_id, "overrides": self.model_overrides,
                "formula": "100*max(cos,0)", "version": 1}

    def score(self, items: Sequence[UtilityInput]) -> list[UtilityValue]:
        check_items(items)
        out: list[UtilityValue] = [UtilityValue(None, error="empty prompt text") for _ in items]
        usable = [i for i, it in enumerate(items) if it.prompt_text.strip()]
        if not usable:
            return out
        texts = sorted({items[i].prompt_text for i in usable})  # a prompt's many seeds share one text embedding
        image_emb = self.embed_images([items[i].image for i in usable])
        text_emb = self.embed_texts(texts)
        row_of = {t: k for k, t in enumerate(texts)}
        for j, i in enumerate(usable):
            cos = float(np.dot(image_emb[j], text_emb[row_of[items[i].prompt_text]]))
            out[i] = UtilityValue(100.0 * max(cos, 0.0), {"cosine": round(cos, 6)})
        return out

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 HxWx3 arrays -> L2-normalised image embeddings (float64, one row each)."""
        import torch
        from PIL import Image

        batch = torch.stack([self.preprocess(Image.fromarray(img)) for img in images]).to(self.device)
        with torch.inference_mode():
            emb = self.model.encode_image(batch).float()
        return _unit_rows(emb.cpu().numpy())

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> L2-normalised text embeddings (float64, one row each)."""
        import torch

        tokens = self.tokenizer(list(texts)).to(self.device)
        with torch.inference_mode():
            emb = self.model.encode_text(tokens).float()
        return _unit_rows(emb.cpu().numpy())


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _tokenizer(arch: str, context_length: int) -> Any:
    """OpenCLIP's tokenizer for `arch`; the built-in BPE one ships with open_clip (no network).

    Raises:
        ModelNotFoundError: the architecture uses a Hugging Face tokenizer that is not cached locally.
    """
    import open_clip

    try:
        return open_clip.get_tokenizer(arch, context_length=context_length)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelNotFoundError(
            f"the tokenizer of OpenCLIP architecture {arch!r} is not available offline: {exc}",
            hint="use an architecture with OpenCLIP's built-in tokenizer (ViT-B-32-quickgelu ...), or put the "
            "tokenizer files in the local model directory",
        ) from exc


def make_clip_score(**kwargs: Any) -> ClipScore:
    return ClipScore(**kwargs)
