"""`lab`: a small salient-object network trained on the lab's exact masks (segmenter plug-in).

A four-level convolutional UNet (about 0.1M parameters) at 64x64: any input is resized to 64x64,
segmented, and its soft mask resized back to the input size. It is trained on freshly drawn lab
images (any number: the drawing code makes them) plus the lab's training images, with blur and
noise augmentation so that it also segments the slightly soft images the lab diffusion model draws.
Weights ship in data/lab/segmenter.safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fbmem_data.devices import resolve_device
from fbmem_data.errors import ModelNotFoundError
from fbmem_data.segment.base import ImageBatch, Segmenter, check_batch

WEIGHTS_FILE = "segmenter.safetensors"
CONFIG_FILE = "segmenter.json"
INPUT_SIZE = 64
DEFAULT_WIDTHS = (16, 32, 48, 64)


def build_network(widths: tuple[int, ...] = DEFAULT_WIDTHS) -> Any:
    """The segmentation UNet: RGB in [0, 1] (N, 3, 64, 64) -> foreground logits (N, 1, 64, 64)."""
    import torch
    from torch import nn

    def block(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.SiLU(),
            nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.SiLU(),
        )

    class SegNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down = nn.ModuleList()
            cin = 3
            for w in widths:
                self.down.append(block(cin, w))
                cin = w
            self.up = nn.ModuleList()
            for w_skip, w_in in zip(reversed(widths[:-1]), reversed(widths[1:]), strict=True):
                self.up.append(block(w_in + w_skip, w_skip))
            self.head = nn.Conv2d(widths[0], 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            skips = []
            for i, layer in enumerate(self.down):
                x = layer(x if i == 0 else nn.functional.avg_pool2d(x, 2))
                skips.append(x)
            for layer, skip in zip(self.up, reversed(skips[:-1]), strict=True):
                x = nn.functional.interpolate(x, scale_factor=2, mode="nearest")
                x = layer(torch.cat([x, skip], dim=1))
            return self.head(x)

    return SegNet()


def default_weights_path() -> Path:
    from fbmem_data.resources import data_dir

    return data_dir() / "lab" / WEIGHTS_FILE


class LabSegmenter(Segmenter):
    name = "lab"

    def __init__(self, weights: str | os.PathLike[str] | None = None, device: str = "cpu", threshold: float | None = None,
                 flips: bool | None = None) -> None:
        """Load the network.

        Args:
            weights: a segmenter.safetensors file (default: the one shipped in data/lab/).
            device: torch device.
            threshold: if set, masks are binarised at it (default: soft masks).
            flips: average the masks of the 8 flips and quarter turns of each image (8x the work, steadier
                masks). Default: what the weights' segmenter.json says (`test_time_flips`), else off.

        Raises:
            ModelNotFoundError: the weights file does not exist.
        """
        import torch
        from safetensors.torch import load_file

        path = Path(weights) if weights is not None else default_weights_path()
        if not path.is_file():
            raise ModelNotFoundError(
                f"lab segmenter weights not found at {path}",
                hint="use a checkout that ships data/lab/segmenter.safetensors, or `fbmem lab train --segmenter-only`",
            )
        config_path = path.with_name(CONFIG_FILE)
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        widths = tuple(config.get("widths", DEFAULT_WIDTHS))
        self.device = resolve_device(device)
        self.net = build_network(widths)
        self.net.load_state_dict({k: v.float() for k, v in load_file(path).items()})
        self.net.eval().to(self.device)
        self.threshold = threshold
        self.flips = bool(config.get("test_time_flips", False)) if flips is None else flips
        # the weights' content names them in params(): new shipped weights must not reuse stored masks
        self._weights_tag = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        self._torch = torch

    supports_cuda = True

    def params(self) -> dict[str, Any]:
        return {"segmenter": self.name, "weights": self._weights_tag, "threshold": self.threshold, "flips": self.flips,
                "version": 1}

    def segment(self, images: ImageBatch) -> list[np.ndarray]:
        import cv2

        torch = self._torch
        batch = check_batch(images)
        small = np.stack([
            img if img.shape[:2] == (INPUT_SIZE, INPUT_SIZE)
            else cv2.resize(img, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA)
            for img in batch
        ])
        with torch.no_grad():
            x = torch.from_numpy(small).permute(0, 3, 1, 2).to(self.device)
            prob_t = _mean_over_flips(self.net, x) if self.flips else torch.sigmoid(self.net(x))
            probs = prob_t[:, 0].cpu().numpy().astype(np.float32)
        out = []
        for img, prob in zip(batch, probs, strict=True):
            h, w = img.shape[:2]
            mask = prob if (h, w) == (INPUT_SIZE, INPUT_SIZE) else cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)
            if self.threshold is not None:
                mask = (mask >= self.threshold).astype(np.float32)
            out.append(np.clip(mask, 0.0, 1.0).astype(np.float32))
        return out


def _mean_over_flips(net: Any, x: Any) -> Any:
    """The network's foreground probability averaged over the 8 flips and quarter turns of x, each
    mapped back to x's orientation."""
    total = 0
    for turns in range(4):
        for flip in (False, True):
            view = x.rot90(turns, (2, 3))
            prob = net(view.flip(-1) if flip else view).sigmoid()
            total = total + (prob.flip(-1) if flip else prob).rot90(-turns, (2, 3))
    return total / 8


def make_lab_segmenter(**kwargs: Any) -> LabSegmenter:
    return LabSegmenter(**kwargs)


# -- training ---------------------------------------------------------------------------------------
def draw_random_images(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n fresh lab-style images and exact masks: (n, 64, 64, 3) uint8, (n, 64, 64) bool."""
    from fbmem_data.lab import dataset as lab

    rng = np.random.default_rng([seed, 7])
    pixels, masks = [], []
    for _ in range(n):
        bg = lab._random_background(rng)
        obj = lab._fit_object(rng, lab._random_object(rng, bg), bg)
        p, m = lab.render(obj, bg)
        pixels.append(p)
        masks.append(m)
    return np.stack(pixels), np.stack(masks)


def _augment(x: Any, rng: np.random.Generator) -> Any:
    """Blur and noise like the diffusion model's soft, slightly noisy images."""
    import torch

    out = x.clone()
    n = out.shape[0]
    blur = rng.random(n) < 0.5
    if blur.any():
        k = torch.tensor([1.0, 2.0, 1.0]) / 4
        kernel = (k[:, None] * k[None, :]).expand(3, 1, 3, 3).contiguous()
        idx = torch.from_numpy(np.flatnonzero(blur))
        out[idx] = torch.nn.functional.conv2d(torch.nn.functional.pad(out[idx], (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    sigma = torch.from_numpy(rng.uniform(0, 0.04, size=(n, 1, 1, 1)).astype(np.float32))
    noise = torch.from_numpy(rng.standard_normal(out.shape).astype(np.float32))
    return (out + sigma * noise).clamp(0, 1)


Redraw = Callable[[np.ndarray], np.ndarray]


def train_segmenter(
    out_path: Path,
    extra_images: np.ndarray | None = None,
    extra_masks: np.ndarray | None = None,
    *,
    seed: int = 0,
    n_random: int = 3000,
    steps: int = 1200,
    batch: int = 32,
    lr: float = 3e-3,
    widths: tuple[int, ...] = DEFAULT_WIDTHS,
    redraws: Sequence[Redraw] = (),
    clean_share: float = 0.34,
    init_weights: Path | None = None,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Train the lab segmenter and write its weights (fp16 safetensors) and config next to each other.

    Args:
        redraws: functions uint8 (N,64,64,3) -> uint8 (N,64,64,3) that redraw images the way the
            diffusion model draws them, keeping the masks: `autoencoder_roundtrip` (the decoder's soft
            edges and colour shifts) and `diffusion_roundtrip` (a partial denoise by the UNet). A segmenter
            trained on clean drawings only loses about 0.14 IoU on such images, and the FB-Mem labels
            depend on the masks of generated and training images agreeing. Each redraw is applied to
            the whole pool once; a share `1 - clean_share` of each batch is taken from the redrawn copies.
        init_weights: start from these weights (a fine-tune) instead of a random initialisation.
    """
    import torch
    from safetensors.torch import load_file, save_file

    torch.manual_seed(seed)
    pixels, masks = draw_random_images(seed, n_random)
    if extra_images is not None and extra_masks is not None:
        pixels, masks = np.concatenate([pixels, extra_images]), np.concatenate([masks, extra_masks])
    # variant 0 is the clean drawing; uint8 until a batch is taken, to keep large pools small
    variants = np.stack([pixels] + [redraw(pixels) for redraw in redraws])
    y_all = torch.from_numpy(masks[:, None].astype(np.float32))
    net = build_network(widths)
    if init_weights is not None:
        net.load_state_dict({k: v.float() for k, v in load_file(init_weights).items()})
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    started = time.time()
    for step in range(steps):
        rng = np.random.default_rng([seed, 11, step])
        idx = rng.integers(0, len(pixels), size=batch)
        which = np.zeros(batch, dtype=np.int64)
        if redraws:
            redrawn = rng.random(batch) >= clean_share
            which[redrawn] = rng.integers(1, len(variants), size=int(redrawn.sum()))
        x = torch.from_numpy(variants[which, idx]).permute(0, 3, 1, 2).float() / 255
        x = _augment(x, rng)
        y = y_all[torch.from_numpy(idx)]
        # the lab draws objects in any pose over oriented patterns: flips and quarter turns keep masks exact
        turns = int(rng.integers(0, 4))
        x, y = x.rot90(turns, (2, 3)), y.rot90(turns, (2, 3))
        if rng.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * step / steps))
        logits = net(x)
        prob = torch.sigmoid(logits)
        dice = 1 - (2 * (prob * y).sum((1, 2, 3)) + 1) / (prob.sum((1, 2, 3)) + y.sum((1, 2, 3)) + 1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + dice.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log is not None and (step + 1) % 50 == 0:
            log(f"segmenter step {step + 1}/{steps} loss {loss.item():.4f} {time.time() - started:.0f}s")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in net.state_dict().items()}, tmp)
    os.replace(tmp, out_path)
    meta = {"widths": list(widths), "seed": seed, "n_random": n_random, "steps": steps, "batch": batch, "lr": lr,
            "test_time_flips": True,  # trained on every flip and quarter turn: averaging them at use is sound
            "redraws": [getattr(r, "__name__", type(r).__name__) for r in redraws],
            "clean_share": clean_share if redraws else 1.0,
            "init_weights": init_weights is not None, "seconds": round(time.time() - started, 1)}
    out_path.with_name(CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def autoencoder_roundtrip(vae: Any, latent_noise: float = 0.15, seed: int = 0, chunk: int = 64) -> Redraw:
    """uint8 images -> the same images encoded and decoded by `vae` (an AutoencoderKL on [-1, 1]),
    with Gaussian noise of up to `latent_noise` latent standard deviations (uniform per image) added
    to the latents, as a sampler's slightly-off latents are."""

    def autoencoder(pixels: np.ndarray) -> np.ndarray:
        import torch

        gen = torch.Generator().manual_seed(seed)
        out = []
        with torch.no_grad():
            for start in range(0, len(pixels), chunk):
                x = torch.from_numpy(pixels[start : start + chunk]).permute(0, 3, 1, 2).float() / 127.5 - 1
                z = vae.encode(x.to(vae.dtype)).latent_dist.mode()
                scale = latent_noise * torch.rand(len(z), 1, 1, 1, generator=gen) * z.std()
                z = z + scale.to(z.dtype) * torch.randn(z.shape, generator=gen).to(z.dtype)
                out.append(_to_uint8(vae.decode(z).sample))
        return np.concatenate(out)

    return autoencoder


def diffusion_roundtrip(pipe: Any, strength: tuple[float, float] = (0.1, 0.35), steps: int = 20, seed: int = 0,
                        chunk: int = 64) -> Redraw:
    """uint8 images -> the same images noised to a random depth (a share of `strength` of the DDIM
    schedule, uniform per image) and denoised by the pipeline's UNet without a prompt, then decoded:
    the model's own drawing style (texture, softness) over an unchanged layout, so the exact masks
    still hold. Like SDEdit; the noise is zero-mean per channel when the pipeline's x_T is."""

    def diffusion(pixels: np.ndarray) -> np.ndarray:
        import torch
        from diffusers import DDIMScheduler

        from fbmem_data.noise import shape_noise

        vae, unet = pipe.vae, pipe.unet
        scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        scheduler.set_timesteps(steps)
        with torch.no_grad():
            empty = pipe.encode_prompt("", unet.device, 1, False)[0]
        factor = float(vae.config.scaling_factor)
        gen = torch.Generator().manual_seed(seed)
        depths = np.round(np.random.default_rng([seed, 5]).uniform(*strength, size=len(pixels)) * steps).astype(int)
        out = np.empty_like(pixels)
        with torch.no_grad():
            for depth in np.unique(depths):
                where = np.flatnonzero(depths == depth)
                for start in range(0, len(where), chunk):
                    rows = where[start : start + chunk]
                    x = torch.from_numpy(pixels[rows]).permute(0, 3, 1, 2).float() / 127.5 - 1
                    z = vae.encode(x.to(vae.dtype)).latent_dist.mode() * factor
                    if depth > 0:
                        noise = shape_noise(pipe, torch.randn(z.shape, generator=gen))
                        timesteps = scheduler.timesteps[steps - int(depth):]
                        z = scheduler.add_noise(z, noise.to(z.dtype), timesteps[:1])
                        context = empty.expand(len(z), -1, -1)
                        for t in timesteps:
                            eps = unet(z, t, encoder_hidden_states=context).sample
                            z = scheduler.step(eps, t, z).prev_sample
                    out[rows] = _to_uint8(vae.decode(z / factor).sample)
        return out

    return diffusion


def _to_uint8(decoded: Any) -> np.ndarray:
    """A decoder's [-1, 1] (N, 3, H, W) output -> uint8 (N, H, W, 3)."""
    import torch

    return ((decoded.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def mask_iou(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> float:
    p, t = pred >= threshold, truth.astype(bool)
    union = np.logical_or(p, t).sum()
    return float(np.logical_and(p, t).sum() / union) if union else 1.0


def evaluate_segmenter(seg: Segmenter, images: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    """Mean and median IoU (mask >= 0.5) against exact masks."""
    preds = seg.segment(list(images))
    ious = np.array([mask_iou(p, m) for p, m in zip(preds, masks, strict=True)])
    return {"iou_mean": float(ious.mean()), "iou_median": float(np.median(ious)), "n": len(ious)}
