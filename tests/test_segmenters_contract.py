"""One contract suite for every registered segmenter (ibis style: gaps are marked, not hidden).

birefnet runs a tiny ONNX graph exported here with BiRefNet's I/O contract (1x3xSxS -> 1x1xSxS
logits); sam runs a random-initialised tiny Sam built from segment_anything's own modeling classes.
A segmenter registered by another module (e.g. `lab`) is built with its defaults when it can be.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from fbmem_data import plugins
from fbmem_data.errors import InputError, ModelNotFoundError
from fbmem_data.segment import Segmenter, register_builtin_segmenters
from fbmem_data.testing.scenes import planted_pair, to_uint8

register_builtin_segmenters()


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def export_tiny_birefnet(path: Path, size: int = 64) -> Path:
    """A 2-layer conv net with BiRefNet's ONNX contract: input 1x3xSxS, output 1x1xSxS logits."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 3, padding=1)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(1, 3, size, size), str(path), input_names=["input"], output_names=["logits"], dynamo=False)
    return path


def build_tiny_sam() -> torch.nn.Module:
    """segment_anything's Sam with a tiny ViT (img_size 64, patch 16 -> a 4x4 embedding grid)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    img_size, patch, dim = 64, 16, 16
    encoder = ImageEncoderViT(
        img_size=img_size, patch_size=patch, embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0, out_chans=dim, qkv_bias=True
    )
    prompt = PromptEncoder(
        embed_dim=dim, image_embedding_size=(img_size // patch, img_size // patch), input_image_size=(img_size, img_size), mask_in_chans=4
    )
    decoder = MaskDecoder(
        transformer_dim=dim,
        transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=32, num_heads=2),
        num_multimask_outputs=3,
        iou_head_depth=1,
        iou_head_hidden_dim=16,
    )
    return Sam(encoder, prompt, decoder, pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375]).eval()


def build_random_lab(tmp: Path, device: str) -> Segmenter:
    """The lab segmenter's own network, random-initialised, saved and loaded through its weights path."""
    from safetensors.torch import save_file

    from fbmem_data.lab.segmenter import build_network

    path = tmp / "segmenter.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        save_file({k: v.contiguous() for k, v in build_network().state_dict().items()}, str(path))
    return plugins.create("segmenter", "lab", weights=path, device=device)


def _builders(tmp: Path) -> dict[str, Callable[[str], Segmenter]]:
    return {
        "lab": lambda device: build_random_lab(tmp, device),
        "saliency": lambda device: plugins.create("segmenter", "saliency", device=device, work_size=96),
        "birefnet": lambda device: plugins.create(
            "segmenter", "birefnet", model_path=export_tiny_birefnet(tmp / "birefnet.onnx"), device=device, batch_size=2
        ),
        "sam": lambda device: plugins.create("segmenter", "sam", model=build_tiny_sam(), device=device, batch_size=2),
    }


def _all_names() -> list[str]:
    return sorted(set(plugins.names("segmenter")) | {"saliency", "birefnet", "sam"})


@pytest.fixture(params=_all_names())
def make_segmenter(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], Segmenter]:
    name = request.param
    builders = _builders(tmp_path)
    if name in builders:
        return builders[name]

    def default(device: str) -> Segmenter:
        # Another installed package's segmenter, built with its defaults: a build error is a failure
        # (fbmem's own segmenters all have a builder above; test_every_own_segmenter_has_a_builder).
        return plugins.create("segmenter", name, device=device)

    return default


def test_every_own_segmenter_has_a_builder(tmp_path: Path) -> None:
    own = {n for n in plugins.names("segmenter") if plugins.provider("segmenter", n).endswith("(fbmem)")}
    assert own == set(_builders(tmp_path)), "give every fbmem segmenter a builder in _builders"


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    a = planted_pair(1, "NM", 96, 0.15)
    return [to_uint8(a.generated), to_uint8(a.train)[:80, :64]]  # two sizes in one batch


def test_shape_range_dtype(make_segmenter: Callable[[str], Segmenter], images: list[np.ndarray]) -> None:
    seg = make_segmenter("cpu")
    masks = seg.segment(images)
    assert len(masks) == len(images)
    for img, m in zip(images, masks, strict=True):
        assert m.shape == img.shape[:2]
        assert m.dtype == np.float32
        assert np.isfinite(m).all() and m.min() >= 0.0 and m.max() <= 1.0
    assert isinstance(seg.params(), dict) and seg.params()["segmenter"] == seg.name


def test_batch_consistency_and_determinism(make_segmenter: Callable[[str], Segmenter], images: list[np.ndarray]) -> None:
    seg = make_segmenter("cpu")
    together = seg.segment(images)
    alone = [seg.segment([img])[0] for img in images]
    again = seg.segment(images)
    for t, a, g in zip(together, alone, again, strict=True):
        np.testing.assert_allclose(t, a, atol=1e-4)
        np.testing.assert_array_equal(t, g)


def test_accepts_float_and_array_batches(make_segmenter: Callable[[str], Segmenter], images: list[np.ndarray]) -> None:
    seg = make_segmenter("cpu")
    img = images[0]
    from_u8 = seg.segment([img])[0]
    from_float = seg.segment([img.astype(np.float32) / 255.0])[0]
    np.testing.assert_allclose(from_u8, from_float, atol=2e-3)
    stacked = seg.segment(np.stack([img, img]))
    np.testing.assert_allclose(stacked[0], stacked[1], atol=1e-5)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param([], id="empty"),
        pytest.param([np.zeros((32, 32), np.uint8)], id="gray"),
        pytest.param([np.zeros((32, 32, 4), np.uint8)], id="rgba"),
        pytest.param([np.full((32, 32, 3), 2.0, np.float32)], id="float-out-of-range"),
        pytest.param([np.zeros((32, 32, 3), np.int32)], id="int32"),
        pytest.param(["not an image"], id="str"),
    ],
)
def test_bad_input_errors(make_segmenter: Callable[[str], Segmenter], bad: list[object]) -> None:
    seg = make_segmenter("cpu")
    with pytest.raises(InputError):
        seg.segment(bad)  # type: ignore[arg-type]


def test_device_argument(make_segmenter: Callable[[str], Segmenter], images: list[np.ndarray]) -> None:
    seg = make_segmenter("auto")
    assert seg.segment(images[:1])[0].shape == images[0].shape[:2]
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            make_segmenter("cuda")
        with pytest.raises(InputError):
            make_segmenter("tpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(make_segmenter: Callable[[str], Segmenter], images: list[np.ndarray]) -> None:
    seg_cpu = make_segmenter("cpu")
    try:
        seg_gpu = make_segmenter("cuda")
    except InputError as exc:  # e.g. onnxruntime without a CUDA provider
        pytest.skip(str(exc))
    for a, b in zip(seg_cpu.segment(images), seg_gpu.segment(images), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-2)


# -- segmenter-specific behaviour ---------------------------------------------------------------


def test_saliency_finds_planted_objects() -> None:
    seg = plugins.create("segmenter", "saliency", device="cpu")
    for seed, area in [(5, 0.12), (6, 0.35)]:
        case = planted_pair(seed, "NM", 192, area)
        for img, truth in [(case.generated, case.generated_mask), (case.train, case.train_mask)]:
            m = seg.segment([to_uint8(img)])[0] > 0.5
            t = truth > 0.5
            assert (m & t).sum() / (m | t).sum() > 0.9


def test_saliency_flat_image_has_no_object() -> None:
    seg = plugins.create("segmenter", "saliency", device="cpu")
    m = seg.segment([np.full((64, 64, 3), 128, np.uint8)])[0]
    assert m.max() == 0.0


def test_birefnet_needs_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FBMEM_BIREFNET", raising=False)
    with pytest.raises(ModelNotFoundError) as err:
        plugins.create("segmenter", "birefnet", device="cpu")
    assert "ZhengPeng7/BiRefNet" in str(err.value)
    with pytest.raises(ModelNotFoundError, match="not found"):
        plugins.create("segmenter", "birefnet", model_path=tmp_path / "nope.onnx", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match=r"neither an \.onnx"):
        plugins.create("segmenter", "birefnet", model_path=tmp_path / "empty", device="cpu")
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelNotFoundError, match="cannot load"):
        plugins.create("segmenter", "birefnet", model_path=tmp_path / "bad.onnx", device="cpu")


def test_birefnet_directory_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    export_tiny_birefnet(tmp_path / "model.onnx", size=32)
    monkeypatch.setenv("FBMEM_BIREFNET", str(tmp_path))
    seg = plugins.create("segmenter", "birefnet", device="cpu")
    assert seg.input_size == 32  # read from the graph's static input shape
    assert seg.segment([np.zeros((20, 30, 3), np.uint8)])[0].shape == (20, 30)


def test_sam_checkpoint_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fbmem_data.segment.sam import SamSegmenter

    monkeypatch.delenv("FBMEM_SAM_CHECKPOINT", raising=False)
    with pytest.raises(ModelNotFoundError, match="segment-anything"):
        plugins.create("segmenter", "sam", device="cpu")
    with pytest.raises(ModelNotFoundError, match="not found"):
        plugins.create("segmenter", "sam", checkpoint=tmp_path / "none.pth", device="cpu")
    model = build_tiny_sam()
    ckpt = tmp_path / "tiny_sam.pth"
    torch.save(model.state_dict(), ckpt)
    img = to_uint8(planted_pair(2, "VM", 64).train)
    loaded = SamSegmenter.from_checkpoint(ckpt, model_type="tiny", build=build_tiny_sam, device="cpu")
    direct = SamSegmenter(model, device="cpu")
    np.testing.assert_allclose(loaded.segment([img])[0], direct.segment([img])[0], atol=1e-6)
    torch.save({"not": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(ModelNotFoundError, match="cannot load"):
        SamSegmenter.from_checkpoint(tmp_path / "wrong.pth", model_type="tiny", build=build_tiny_sam, device="cpu")
