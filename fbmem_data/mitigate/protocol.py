"""The mitigation plug-in protocol: what `fbmem generate --mitigation NAME` calls around each batch.

A mitigation changes how one batch of images is generated, and nothing else:

- it may rewrite the prompts (random token addition),
- it may supply prompt embeddings of its own (Wen et al.'s embedding optimisation),
- it may install forward hooks on `pipe.unet` for the duration of the batch (NeMo, NeMo-C).

The generator (fbmem_data.generate) builds a `GenerationBatch`, enters `mitigation.apply(pipe, batch)`,
runs the diffusers pipeline on the batch it gets back, and leaves the context. Hooks must be removed
on exit, also when generation raises (use try/finally). See docs/generate.md for the guidance batch
layout hooks see: diffusers runs [uncond rows (B), cond rows (B)] in one UNet call when guidance > 1.

A plug-in is a class (its constructor's keyword arguments are the mitigation's parameters, which
`--mitigation-param key=value` routes by name) declared as an entry point of group `fbmem.mitigations`
in its package's pyproject.toml::

    [project.entry-points."fbmem.mitigations"]
    none = "fbmem_data.mitigate.none:NoMitigation"

Every installed entry point is picked up by the CLI and by the shared contract test suite.
"""

from __future__ import annotations

import contextlib
import dataclasses
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

    from fbmem_data.workspace import Workspace


@dataclass(frozen=True)
class GenerationSettings:
    """Settings shared by every image of a batch (all recorded in `generations`)."""

    steps: int
    guidance: float
    height: int
    width: int

    @property
    def uses_guidance(self) -> bool:
        """True when diffusers runs classifier-free guidance, i.e. the UNet sees 2B rows."""
        return self.guidance > 1.0


@dataclass
class GenerationBatch:
    """One batch of images to generate; row i of every per-image field belongs to image i.

    Attributes:
        prompt_ids: prompts.prompt_id per image (the same prompt may repeat with different seeds).
        prompts: the text given to the text encoder per image (a mitigation may rewrite it).
        seeds: the seed of each image; `latents[i]` was drawn from a CPU torch.Generator seeded with it.
        settings: steps, guidance, height, width.
        latents: initial noise x_T, shape (B, C, H/f, W/f), on the pipeline's device and dtype.
        prompt_embeds: optional (B, L, D) text embeddings that replace `prompts` when set.
        negative_prompt_embeds: optional (B, L, D) unconditional embeddings (default: the empty prompt).
        details: per-image JSON-able dicts a mitigation fills with what it chose for that image (the
            random tokens, the optimisation's final loss, the number of neurons zeroed ...); recorded in
            generations.mitigation_detail.
    """

    prompt_ids: list[str]
    prompts: list[str]
    seeds: list[int]
    settings: GenerationSettings
    latents: torch.Tensor
    prompt_embeds: torch.Tensor | None = None
    negative_prompt_embeds: torch.Tensor | None = None
    details: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.prompt_ids)
        if not self.details:
            self.details = [{} for _ in range(n)]
        lengths = {len(self.prompts), len(self.seeds), len(self.details), int(self.latents.shape[0])}
        if lengths != {n}:
            raise ValueError(f"GenerationBatch fields disagree on the batch size: {sorted(lengths | {n})}")

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def replace(self, **changes: Any) -> GenerationBatch:
        """A copy with some fields changed (details are copied, so the original stays as it was)."""
        changes.setdefault("details", [dict(d) for d in self.details])
        return dataclasses.replace(self, **changes)


@runtime_checkable
class Mitigation(Protocol):
    """One mitigation method. Instances are built by `create_mitigation(name, **params)`.

    Subclassing this Protocol gives the defaults (`prepare` does nothing, `contract_setup` writes
    nothing, `__repr__` shows the params) and makes a missing `params` or `apply` an error at construction.

    Class attributes:
        name: the registered name (what `--mitigation` takes and `generations.mitigation` records).
        changes_output: False only for the identity (`none`); the contract suite checks that every other
            mitigation changes the image of at least one (prompt, seed) against `none`.
        contract_gaps: {contract test name: reason} for checks this plug-in cannot pass (the contract
            suite turns them into explicit xfails, ibis style), e.g. {"test_output_changes": "..."}.
        contract_params: the parameters the contract suite builds it with on a tiny random pipeline
            (e.g. wen's target_loss 0, so that it always optimises there).
    """

    name: ClassVar[str]
    changes_output: ClassVar[bool] = True
    contract_gaps: ClassVar[dict[str, str]] = {}
    contract_params: ClassVar[dict[str, Any]] = {}

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The settings that define this mitigation's output.

        Returns:
            A JSON-able dict (plain str/int/float/bool/None/list/dict). It is recorded in
            generations.mitigation_params and enters generation_id, so two runs with equal params
            must produce the same images. Do not put per-image outcomes here (use batch.details).
        """

    def prepare(self, ws: Workspace | None, model_id: str, prompt_ids: Sequence[str]) -> None:
        """Load what `apply` needs for these prompts (e.g. neuron sets from workspace tables).

        Called once per run, before any generation id is computed, with every prompt id of the run
        (also those already generated). `params()` is read after `prepare`, so a mitigation may resolve
        a default here (e.g. pick the stored localization) and report the choice in `params()`.
        The default does nothing.

        Args:
            ws: the workspace the run writes to (None when generating outside a workspace).
            model_id: the model's id as recorded in generations.model_id.
            prompt_ids: every prompt id of the run (apply will only see these).

        Raises:
            FbmemError: data the mitigation needs is missing (say which table/command provides it).
        """

    @abstractmethod
    def apply(self, pipe: DiffusionPipeline, batch: GenerationBatch) -> contextlib.AbstractContextManager[
        GenerationBatch
    ]:
        """Context manager: set the pipeline up for this batch and yield the batch to generate.

        Implement with @contextlib.contextmanager. Inside the context the generator calls the pipeline
        once on the yielded batch. On exit every hook installed here must be removed and every change
        to the pipeline undone, also when the body raises.

        Args:
            pipe: a diffusers text-to-image pipeline (unet, text_encoder, tokenizer, scheduler ...).
            batch: the batch to generate; do not mutate it, return `batch.replace(...)` instead.

        Yields:
            The batch to generate: the same, or a copy with rewritten prompts / prompt embeddings and
            per-image details filled in.

        Raises:
            FbmemError: the mitigation cannot run on this pipeline or these prompts.
        """

    @staticmethod
    def contract_setup(ws: Workspace, model_id: str, prompt_ids: Sequence[str], pipe: DiffusionPipeline) -> None:
        """Write the minimal workspace rows `prepare` needs for a random-initialised pipeline.

        Used by the shared contract suite (tests/test_mitigations_contract.py) and by demos; the
        default writes nothing. E.g. NeMo writes a few random neurons per prompt.

        Args:
            ws: the workspace the contract run generates into.
            model_id: the model id the rows are for.
            prompt_ids: the prompts the contract run generates.
            pipe: the random-initialised pipeline (for shapes such as layer widths).

        Raises:
            FbmemError: the rows cannot be written.
        """
        del ws, model_id, prompt_ids, pipe

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params()!r})"


@contextlib.contextmanager
def removing_hooks(handles: list[Any]) -> Iterator[list[Any]]:
    """Collect torch hook handles in the yielded list; all are removed on exit (even on error)."""
    try:
        yield handles
    finally:
        for handle in handles:
            handle.remove()
        handles.clear()


MITIGATION_FAMILY = "fbmem.mitigations"  # = fbmem_data.plugins.MITIGATIONS
