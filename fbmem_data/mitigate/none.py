"""`none`: the unmitigated model (the baseline every mitigation is compared with)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fbmem_data.mitigate.protocol import GenerationBatch, Mitigation

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


class NoMitigation(Mitigation):
    """Generate exactly as the pipeline would: no parameters, no hooks."""

    name = "none"
    changes_output = False

    def params(self) -> dict[str, Any]:
        return {}

    @contextlib.contextmanager
    def apply(self, pipe: DiffusionPipeline, batch: GenerationBatch) -> Iterator[GenerationBatch]:
        del pipe
        yield batch
