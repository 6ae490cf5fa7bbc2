"""Helpers for tests and benchmarks: random-initialised models of the real classes and shapes."""

from __future__ import annotations

from fbmem_data.testing.pipelines import (
    minilm_tokenizer,
    sd_v14_unet_config,
    tiny_sd_pipeline,
    tiny_sd_unet_config,
)

__all__ = ["minilm_tokenizer", "sd_v14_unet_config", "tiny_sd_pipeline", "tiny_sd_unet_config"]
