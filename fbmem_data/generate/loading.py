"""Load a diffusers text-to-image pipeline from a named model source (plug-in family `fbmem.models`, e.g.
`lab`), a local directory or a cached hub id. Never downloads."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from fbmem_data import plugins
from fbmem_data.devices import resolve_device
from fbmem_data.errors import InputError, ModelNotFoundError

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SCHEDULERS = ("ddim", "keep")
REFERENCE_GUIDANCE = 7.0  # classifier-free guidance for a model that names no scale of its own
GUIDANCE_ATTRIBUTE = "fbmem_guidance"  # a pipeline's own scale (the lab sets it from lab_model.json)


def resolve_guidance(pipe: Any, given: float | None = None) -> float:
    """The guidance scale a run uses: the one given, else the pipeline's own, else REFERENCE_GUIDANCE."""
    if given is not None:
        return float(given)
    return float(getattr(pipe, GUIDANCE_ATTRIBUTE, REFERENCE_GUIDANCE))


@dataclass
class LoadedPipeline:
    """A pipeline ready to generate, with what identifies it in the tables.

    Attributes:
        pipe: the diffusers pipeline (moved to `device`, in `dtype`).
        model_id: recorded in generations.model_id.
        revision: the weights' version where known (hub snapshot hash, lab weights hash), for `runs`.
        device: torch device string.
        dtype: "fp16" or "fp32".
    """

    pipe: DiffusionPipeline
    model_id: str
    revision: str | None
    device: str
    dtype: str


@runtime_checkable
class ModelSource(Protocol):
    """A named model (`--model NAME`): a plug-in of family `fbmem.models`, built with no arguments.

    Attributes:
        model_id: what generations.model_id records for it.
        cpu_cost (optional): a measured (seconds, pixels) of one UNet evaluation of one image on one CPU
            thread, which `fbmem generate --dry-run` scales into its time estimate.
    """

    model_id: str

    def load(self, dtype: torch.dtype) -> tuple[Any, str | None]:
        """Build the diffusers pipeline (on CPU) in `dtype`.

        Args:
            dtype: the torch dtype of the weights.

        Returns:
            (pipeline, revision): the revision is a version of the weights for `runs`, or None.

        Raises:
            ModelNotFoundError: its weights are missing (the message says how to get them).
        """
        ...


def model_source_names() -> list[str]:
    """The names `--model` takes besides directories and hub ids (no plug-in module is imported)."""
    return plugins.names(plugins.MODELS)


def resolve_dtype(dtype: str, device: str) -> str:
    """'auto' -> fp16 on CUDA, fp32 elsewhere (fp16 convolutions on CPU are slow or unsupported).

    Raises:
        InputError: an unknown dtype name.
    """
    aliases = {"fp16": "fp16", "float16": "fp16", "half": "fp16", "fp32": "fp32", "float32": "fp32", "float": "fp32"}
    if dtype == "auto":
        return "fp16" if device.startswith("cuda") else "fp32"
    if dtype not in aliases:
        raise InputError(f"unknown dtype {dtype!r}", hint="use auto, fp16 or fp32")
    return aliases[dtype]


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return torch.float16 if name == "fp16" else torch.float32


def hf_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _download_hint(repo_id: str) -> str:
    return (
        f"fetch it once with `hf download {repo_id}` on a machine "
        "with network access into this cache, or pass a local diffusers directory as --model"
    )


def _hub_snapshot(repo_id: str, revision: str | None) -> Path:
    """The cached snapshot directory of a hub repo (raises ModelNotFoundError when absent)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "model_index.json", cache_dir=hf_cache_dir(), revision=revision)
    if not isinstance(found, str):
        raise ModelNotFoundError(
            f"model {repo_id!r} is not in the local Hugging Face cache ({hf_cache_dir()}): "
            f"no cached model_index.json for it; fbmem never downloads",
            hint=_download_hint(repo_id),
        )
    return Path(found).parent


def _check_local_dir(path: Path) -> dict[str, Any]:
    index = path / "model_index.json"
    if not index.is_file():
        raise ModelNotFoundError(
            f"{path} is not a diffusers pipeline directory: it has no model_index.json",
            hint="pass a directory written by DiffusionPipeline.save_pretrained, `lab`, or a hub id",
        )
    try:
        return json.loads(index.read_text())
    except ValueError as exc:
        raise ModelNotFoundError(f"{index} is damaged: {exc}") from exc


def _from_pretrained(source: Path, index: dict[str, Any], dtype: torch.dtype, what: str, hint: str) -> Any:
    from diffusers import DiffusionPipeline

    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
    if "safety_checker" in index:
        # A blacked-out image would read as "not memorized"; the checker is also an extra 1.2 GB model.
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        return DiffusionPipeline.from_pretrained(str(source), **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"cannot load {what} from {source}: {exc}", hint=hint) from exc


def _use_scheduler(pipe: Any, scheduler: str) -> None:
    if scheduler == "ddim":
        from diffusers import DDIMScheduler

        if not isinstance(pipe.scheduler, DDIMScheduler):
            pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)


def model_id_for(model: str, model_id: str | None = None, revision: str | None = None) -> str:
    """The model id `load_pipeline(model, model_id=model_id)` records, without loading any weights
    (what a driver needs when the engine loads the model on its workers).

    Raises:
        ModelNotFoundError: as load_pipeline for a model that is neither a source, a pipeline
            directory nor a cached hub id.
    """
    if model not in model_source_names():  # a source needs no check: its weights load with it
        path = Path(os.path.expanduser(model))
        if path.is_dir():
            _check_local_dir(path)
        elif _HUB_ID_RE.match(model) and not path.exists():
            _check_local_dir(_hub_snapshot(model, revision))
        else:
            raise _not_a_model(model)
    return model_id or default_model_id(model)


def _not_a_model(model: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"model {model!r} is neither a model source ({', '.join(model_source_names())}), "
        "an existing directory, nor a hub id (owner/name)",
        hint="pass a model source name, a diffusers directory, or e.g. CompVis/stable-diffusion-v1-4",
    )


def load_pipeline(
    model: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    scheduler: str = "ddim",
    model_id: str | None = None,
    revision: str | None = None,
) -> LoadedPipeline:
    """Load a text-to-image pipeline without touching the network.

    Args:
        model: a model source name (`lab`, the shipped lab model; see model_source_names()), a local
            diffusers directory, or a hub id in the local cache.
        device: "auto", "cpu", "cuda", "cuda:1" ...
        dtype: "auto" (fp16 on CUDA, fp32 on CPU), "fp16" or "fp32".
        scheduler: "ddim" (the reference sampler; replaces the pipeline's own) or "keep".
        model_id: the id to record instead of the default (lab id, hub id, absolute directory path).
        revision: a hub revision (branch, tag or commit) to take from the cache.

    Returns:
        The pipeline on its device with its recorded ids.

    Raises:
        ModelNotFoundError: the directory, the cached hub snapshot or the source's weights are missing
            (the message names what is missing and how to get it).
        InputError: an unknown dtype or scheduler.
    """
    if scheduler not in _SCHEDULERS:
        raise InputError(f"unknown scheduler {scheduler!r}", hint=f"use one of {', '.join(_SCHEDULERS)}")
    device = resolve_device(device)
    dtype_name = resolve_dtype(dtype, device)
    tdtype = torch_dtype(dtype_name)
    recorded_revision: str | None
    if model in model_source_names():
        source = plugins.create(plugins.MODELS, model)
        pipe, recorded_revision = source.load(tdtype)
        default_id = source.model_id
    else:
        path = Path(os.path.expanduser(model))
        if path.is_dir():
            index = _check_local_dir(path)
            pipe = _from_pretrained(path, index, tdtype, "the pipeline", "check the directory's files")
            default_id, recorded_revision = str(path.resolve()), None
        elif _HUB_ID_RE.match(model) and not path.exists():
            snapshot = _hub_snapshot(model, revision)
            index = _check_local_dir(snapshot)
            pipe = _from_pretrained(
                snapshot, index, tdtype, f"the cached snapshot of {model!r} (some files are missing)",
                _download_hint(model),
            )
            default_id, recorded_revision = model, snapshot.name
        else:
            raise _not_a_model(model)
    _use_scheduler(pipe, scheduler)
    pipe = pipe.to(device)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return LoadedPipeline(pipe, model_id or default_id, recorded_revision, device, dtype_name)


def default_model_id(model: str) -> str:
    """The model_id `load_pipeline(model)` records unless told otherwise, without loading or checking the
    model (`model_id_for` checks it exists): a model source's own id, a directory's absolute path, or the
    text as given (a hub id, e.g. for statistics imported without the weights)."""
    if model in model_source_names():
        return plugins.create(plugins.MODELS, model).model_id
    path = Path(os.path.expanduser(model))
    return str(path.resolve()) if path.is_dir() else model


def wrap_pipeline(pipe: Any, model_id: str, *, revision: str | None = None) -> LoadedPipeline:
    """Treat an already built pipeline (e.g. `fbmem_data.testing.tiny_sd_pipeline()`) as a loaded model."""
    import torch

    param = next(pipe.unet.parameters())
    dtype_name = "fp16" if param.dtype == torch.float16 else "fp32"
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    return LoadedPipeline(pipe, model_id, revision, str(param.device), dtype_name)
