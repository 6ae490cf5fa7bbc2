"""Test support shared by the test suite, the benchmarks, `fbmem eval`'s beds and the demo.

Nothing here is part of a measurement: these are data and model generators with known answers.

- `pipelines`: random-initialised models of the real classes and shapes (`tiny_sd_pipeline()` ...).
- `scenes`: planted FB-Mem scenes (`planted_pair`: VM/FM/BM/NM pairs of textured objects on backgrounds).
- `textures`: textured images and perturbations for the pairing benchmarks and tests.
- `sample_workspace`: a labelled sample workspace for the report (scores drawn, not computed).
- `browser`: headless Chromium over the DevTools protocol, for checking the report page.
"""

from __future__ import annotations

from fbmem_data.testing.pipelines import (
    minilm_tokenizer,
    sd_v14_unet_config,
    tiny_sd_pipeline,
    tiny_sd_unet_config,
)

__all__ = ["minilm_tokenizer", "sd_v14_unet_config", "tiny_sd_pipeline", "tiny_sd_unet_config"]
