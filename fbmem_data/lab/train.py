"""Train the lab model: first the autoencoder, then the UNet on cached latents and text embeddings.

The text encoder is frozen, so every caption's 77x384 embedding is computed once; the autoencoder is
trained first and frozen, so every training image's latent is computed once too. A UNet step then
costs only the UNet. Both phases checkpoint to one safetensors file plus a JSON state, and a run
resumes from the last checkpoint: batches are drawn from a generator seeded by (seed, step), so a
resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fbmem_data.lab.dataset import LabConfig, LabDataset, make_lab_dataset
from fbmem_data.lab.pipeline import (
    LabModelConfig,
    LabWeightsInfo,
    build_text_encoder,
    build_unet,
    build_vae,
    save_lab_weights,
)

CHECKPOINT_STATE = "state.json"


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    dataset_seed: int = 0
    ae_steps: int = 600
    ae_batch: int = 16
    ae_crop: int = 32  # the autoencoder is convolutional: train on crops (4x cheaper), use on 64x64
    ae_lr: float = 2e-3
    ae_kl_weight: float = 1e-6
    unet_steps: int = 2000
    unet_batch: int = 16
    unet_lr: float = 6e-4
    warmup_steps: int = 100
    caption_dropout: float = 0.1  # classifier-free guidance: train the empty caption too
    # Offset noise (a per-channel constant added to the noise, Guttenberg 2023). With SD's schedule x_T
    # keeps sqrt(alpha_T) = 0.068 of the latent, and on 16x16 latents the noise's own channel mean is
    # only ~1/16, so a model trained without it reads each image's mean colour from x_T and draws a
    # seed-dependent colour cast. Off by default: a 2,000-step fine-tune at 0.15 (v1.2) helped a
    # little; zero-terminal-SNR betas with v-prediction (LabModelConfig.zero_terminal_snr, v1.3) fixed it.
    offset_noise: float = 0.0
    ema_decay: float = 0.995
    # A lab weights directory (lab_model.json, unet/vae.safetensors) to fine-tune: its autoencoder is
    # kept as is (no autoencoder phase) and its UNet is the starting point.
    init_from: str | None = None
    # Stop after this UNet step while the learning-rate schedule still spans unet_steps (an early
    # checkpoint of a longer run; the shipped v1.3 is step 1,600 of 4,000). None: run to unet_steps.
    stop_at: int | None = None
    checkpoint_every: int = 100
    log_every: int = 10
    threads: int = 1  # on a shared 2-core CPU one thread is faster than two
    # Weight of a sparsity penalty on the NeMo layers' value activations (value_sparsity_penalty); 0: off.
    # Lab v2.2 to v2.4 train with 0.3: without it each planted name's image is spread over all value
    # neurons of the first two down blocks, and NeMo cannot localize it in a few (docs/lab.md, NeMo
    # localization).
    value_sparsity: float = 0.0
    # Which caption tokens the penalty applies to (sparsity_token_weights): "all"; "rare-words" (word
    # pieces in fewer than rare_token_share of the distinct training captions, and the special and
    # padding tokens, which carry the whole caption); "rare-captions" (every token of a caption that has
    # a rare word piece). The common words stay dense, so blocking a few neurons costs them little
    # (v2.3 and v2.4 train with rare-words; docs/lab.md, "Why v2.3 spares the common words").
    value_sparsity_tokens: str = "all"
    rare_token_share: float = 0.05
    # Weight of a term that keeps the rare word pieces' value neurons apart from those of the captions
    # without a rare piece (value_separation_penalty); 0: off. Blocking a planted name's neurons then
    # spares captions of common words even when many names' sets are blocked at once (v2.4 trains with
    # 0.3; docs/lab.md, "Why v2.4 keeps names and common captions apart").
    value_separation: float = 0.0


def _log(log: Callable[[str], None] | None, message: str) -> None:
    if log is not None:
        log(message)


def encode_captions(texts: list[str], tokenizer: Any = None, encoder: Any = None) -> Any:
    """77x384 MiniLM states per text, exactly as StableDiffusionPipeline.encode_prompt computes them."""
    import torch

    if tokenizer is None or encoder is None:
        tokenizer, encoder = build_text_encoder()
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), 64):
            ids = tokenizer(
                texts[start : start + 64], padding="max_length", max_length=tokenizer.model_max_length,
                truncation=True, return_tensors="pt",
            ).input_ids
            out.append(encoder(ids)[0])
    return torch.cat(out)


def image_tensor(dataset: LabDataset, keys: list[str]) -> Any:
    import torch

    arr = np.stack([dataset.images[k].pixels for k in keys]).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def _batch_rng(seed: int, phase: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, phase, step])


def _lr_at(step: int, base: float, warmup: int, total: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _save_checkpoint(ckpt_dir: Path, name: str, tensors: dict[str, Any], state: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir / f".{name}.tmp"
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, tmp)
    os.replace(tmp, ckpt_dir / name)
    tmp_state = ckpt_dir / f".{CHECKPOINT_STATE}.tmp"
    tmp_state.write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp_state, ckpt_dir / CHECKPOINT_STATE)


def _flatten(prefix: str, state: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def _unflatten(prefix: str, tensors: dict[str, Any]) -> dict[str, Any]:
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def _optimizer_tensors(opt: Any) -> dict[str, Any]:
    out = {}
    for idx, st in opt.state_dict()["state"].items():
        for key, value in st.items():
            out[f"opt.{idx}.{key}"] = value if hasattr(value, "dim") else __import__("torch").tensor(value)
    return out


def _load_optimizer(opt: Any, tensors: dict[str, Any]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("opt."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    sd["state"] = state
    opt.load_state_dict(sd)


def train_autoencoder(dataset: LabDataset, model_cfg: LabModelConfig, cfg: TrainConfig, ckpt_dir: Path,
                      log: Callable[[str], None] | None = None, progress: bool = False) -> tuple[Any, LabModelConfig]:
    """Phase 1. Returns the trained (frozen) autoencoder and the model config with its latent scaling."""
    import torch
    from safetensors.torch import load_file

    keys = sorted(dataset.images)
    images = image_tensor(dataset, keys)
    torch.manual_seed(cfg.seed)
    vae = build_vae(model_cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.ae_lr, weight_decay=0.0)
    start = 0
    state_path = ckpt_dir / CHECKPOINT_STATE
    if state_path.is_file():
        state = json.loads(state_path.read_text(encoding="utf-8"))
        tensors = load_file(ckpt_dir / "ae.safetensors") if (ckpt_dir / "ae.safetensors").is_file() else {}
        if tensors:
            vae.load_state_dict(_unflatten("vae", tensors))
            _load_optimizer(opt, tensors)
            start = int(state.get("ae_step", 0))
            _log(log, f"autoencoder: resumed at step {start}")
    bar = _progress(progress, cfg.ae_steps, start, "autoencoder")
    t0 = time.time()
    for step in range(start, cfg.ae_steps):
        rng = _batch_rng(cfg.seed, 1, step)
        idx = rng.integers(0, len(keys), size=cfg.ae_batch)
        crop = cfg.ae_crop
        ys = rng.integers(0, model_cfg.image_size - crop + 1, size=cfg.ae_batch)
        xs = rng.integers(0, model_cfg.image_size - crop + 1, size=cfg.ae_batch)
        batch = torch.stack([images[i, :, y : y + crop, x : x + crop] for i, y, x in zip(idx, ys, xs, strict=True)])
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg.ae_lr, cfg.warmup_steps, cfg.ae_steps)
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator=torch.Generator().manual_seed(step))).sample
        loss = (recon - batch).abs().mean() + (recon - batch).pow(2).mean() + cfg.ae_kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        bar.update(1)
        if (step + 1) % cfg.log_every == 0:
            _log(log, f"autoencoder step {step + 1}/{cfg.ae_steps} loss {loss.item():.4f} {time.time() - t0:.0f}s")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.ae_steps:
            tensors = {**_flatten("vae", vae.state_dict()), **_optimizer_tensors(opt)}
            _save_checkpoint(ckpt_dir, "ae.safetensors", tensors, {"phase": "ae", "ae_step": step + 1, "config": asdict(cfg)})
    bar.close()
    vae.eval().requires_grad_(False)
    center_latents(vae, images)
    with torch.no_grad():
        latents = torch.cat([vae.encode(images[s : s + 64]).latent_dist.mode() for s in range(0, len(keys), 64)])
    scaling = float(1.0 / latents.std())
    return vae, replace(model_cfg, vae_scaling_factor=round(scaling, 6))


def autoencoder_msssim(vae: Any, dataset: LabDataset, size: int = 256) -> float:
    """Mean MS-SSIM of autoencoder reconstructions of the training images, both upsampled to `size`.

    MS-SSIM's five scales need images larger than 160 px; the scorer upsamples 64x64 lab images too.
    """
    import torch
    import torch.nn.functional as F
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as msssim

    keys = sorted(dataset.images)
    scores = []
    with torch.no_grad():
        for s in range(0, len(keys), 32):
            x = image_tensor(dataset, keys[s : s + 32])
            r = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
            up = [F.interpolate((t + 1) / 2, size=size, mode="bilinear", align_corners=False) for t in (x, r)]
            scores.append(msssim(up[1], up[0], data_range=1.0, reduction="none"))
    return float(torch.cat(scores).mean())


def center_latents(vae: Any, images: Any) -> None:
    """Make the training latents zero-mean per channel without changing what the decoder draws.

    Stable Diffusion's pipeline only scales latents (no shift). A per-channel mean left in the latents
    survives in x_T of the noise schedule (alpha_T > 0) during training but not at sampling, and shows as
    a colour cast in every generated image. So the mean m is folded into the autoencoder: quant_conv's
    mean bias loses m, post_quant_conv's bias gains W m (a 1x1 convolution), the decoder output is unchanged.
    """
    import torch

    with torch.no_grad():
        mean = torch.cat([vae.encode(images[s : s + 64]).latent_dist.mode() for s in range(0, len(images), 64)]).mean((0, 2, 3))
        channels = mean.numel()
        vae.quant_conv.bias[:channels] -= mean
        weight = vae.post_quant_conv.weight[:, :, 0, 0]
        vae.post_quant_conv.bias += weight @ mean


SPARSITY_TOKENS = ("all", "rare-words", "rare-captions")


def sparsity_token_weights(texts: Sequence[str], tokenizer: Any, which: str, rare_share: float) -> Any:
    """(texts, tokens) 0/1 weights: which token positions of each caption the value-sparsity penalty sees.

    Args:
        texts: the distinct training captions (their document frequencies decide what is rare); the empty
            caption may be among them.
        tokenizer: the text encoder's tokenizer, padding to its model_max_length as encode_captions does.
        which: one of SPARSITY_TOKENS.
        rare_share: a word piece is rare when fewer than this share of the non-empty texts contain it.

    Returns:
        A float tensor of shape (len(texts), model_max_length).

    Raises:
        InputError: `which` is not one of SPARSITY_TOKENS, or rare_share is not in (0, 1].
    """
    import torch

    from fbmem_data.errors import InputError

    if which not in SPARSITY_TOKENS:
        raise InputError(f"value sparsity tokens {which!r} is not one of {', '.join(SPARSITY_TOKENS)}")
    is_rare, is_special = _rare_and_special_tokens(texts, tokenizer, rare_share)
    if which == "all":
        return torch.ones(is_rare.shape)
    if which == "rare-words":
        return (is_rare | is_special).float()
    return is_rare.any(dim=1, keepdim=True).expand_as(is_rare).float()


def _rare_and_special_tokens(texts: Sequence[str], tokenizer: Any, rare_share: float) -> tuple[Any, Any]:
    """(texts, tokens) booleans: the rare word pieces (in fewer than rare_share of the non-empty texts)
    and the special and padding tokens. Raises InputError when rare_share is not in (0, 1]."""
    import torch

    from fbmem_data.errors import InputError

    if not 0 < rare_share <= 1:
        raise InputError(f"rare token share {rare_share:g} is not in (0, 1]")
    ids = tokenizer(list(texts), padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    is_special = torch.isin(ids, torch.tensor(sorted(set(tokenizer.all_special_ids))))
    nonempty = [i for i, t in enumerate(texts) if t.strip()]
    counts: dict[int, int] = {}
    for i in nonempty:
        for tok in set(ids[i][~is_special[i]].tolist()):
            counts[tok] = counts.get(tok, 0) + 1
    rare = torch.tensor(sorted(t for t, c in counts.items() if c < rare_share * len(nonempty)) or [-1])
    return torch.isin(ids, rare), is_special


def value_sparsity_penalty(value_layers: Sequence[Any], cond: Any, weight: float = 1.0,
                           token_weights: Any = None) -> Any:
    """`weight` times the mean over layers, prompts and tokens of each token's normalised L1/L2 ratio of
    its value vector (with `token_weights`, the weighted mean over the tokens they select; 0 when they
    select none).

    For one token's values v (width C): |v|_1 / (|v|_2 sqrt(C)), from 1/sqrt(C) (one neuron active) to 1
    (all equally active). Scale-free, so the UNet cannot shrink it by scaling to_v down and to_out up.

    Args:
        value_layers: the cross-attention value projections (attn2.to_v) to make sparse.
        cond: (prompts, tokens, dim) text states the UNet is conditioned on.
        weight: the penalty's weight in the training loss.
        token_weights: optional (prompts, tokens) weights (sparsity_token_weights); None: every token.

    Returns:
        A scalar tensor that gradients flow through.
    """
    pen = 0.0
    for v_layer in value_layers:
        v = v_layer(cond)
        ratio = v.abs().sum(-1) / (v.norm(dim=-1) * v.shape[-1] ** 0.5).clamp_min(1e-8)
        if token_weights is None:
            pen = pen + ratio.mean()
        else:
            pen = pen + (ratio * token_weights).sum() / token_weights.sum().clamp_min(1.0)
    return weight * pen / len(value_layers)


def separation_token_groups(texts: Sequence[str], tokenizer: Any, rare_share: float) -> tuple[Any, Any]:
    """The two (texts, tokens) 0/1 groups value_separation_penalty keeps apart.

    Args:
        texts: the distinct training captions, as for sparsity_token_weights (the empty caption may be
            among them).
        tokenizer: the text encoder's tokenizer.
        rare_share: a word piece is rare when fewer than this share of the non-empty texts contain it.

    Returns:
        (rare, common): rare marks the rare word pieces (no special or padding token); common marks every
        position of each caption with no rare piece (the empty caption included).

    Raises:
        InputError: rare_share is not in (0, 1].
    """
    is_rare, _ = _rare_and_special_tokens(texts, tokenizer, rare_share)  # never a special token
    rare = is_rare.float()
    common = (rare.sum(dim=1, keepdim=True) == 0).expand_as(rare).float()
    return rare, common


def value_separation_penalty(value_layers: Sequence[Any], cond: Any, rare: Any, common: Any,
                             weight: float = 1.0) -> Any:
    """`weight` times the mean over layers, and over pairs of a `rare` and a `common` token, of the cosine
    between the two tokens' |value| vectors.

    Each token's |value| is non-negative, so a pair's cosine runs from 0 (no neuron used by both) to 1
    (the same profile); each vector is normalised first, so a token weighs the same whatever its
    magnitude, and the term is scale-free like value_sparsity_penalty. 0 when either group is empty in
    this batch.

    Args:
        value_layers: the cross-attention value projections (attn2.to_v).
        cond: (prompts, tokens, dim) text states the UNet is conditioned on.
        rare: (prompts, tokens) 0/1 weights of the rare word pieces (separation_token_groups).
        common: (prompts, tokens) 0/1 weights of the tokens of captions without a rare piece.
        weight: the term's weight in the training loss.

    Returns:
        A scalar tensor that gradients flow through.
    """
    if float(rare.sum()) == 0 or float(common.sum()) == 0:
        return cond.new_zeros(())
    pen = 0.0
    for v_layer in value_layers:
        a = v_layer(cond).abs()
        a = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        # the mean pairwise cosine is the dot product of the two groups' mean unit vectors
        u_rare = (a * rare[..., None]).sum((0, 1)) / rare.sum()
        u_common = (a * common[..., None]).sum((0, 1)) / common.sum()
        pen = pen + (u_rare * u_common).sum()
    return weight * pen / len(value_layers)


def check_value_penalties(cfg: TrainConfig) -> None:
    """Raises InputError for a negative value_sparsity or value_separation, unknown value_sparsity_tokens
    or a rare_token_share outside (0, 1]."""
    from fbmem_data.errors import InputError

    if cfg.value_sparsity < 0:
        raise InputError(f"value_sparsity {cfg.value_sparsity:g} is negative", hint="give a weight >= 0 (0: off)")
    if cfg.value_separation < 0:
        raise InputError(f"value_separation {cfg.value_separation:g} is negative", hint="give a weight >= 0 (0: off)")
    if cfg.value_sparsity_tokens not in SPARSITY_TOKENS or not 0 < cfg.rare_token_share <= 1:
        raise InputError(f"value sparsity tokens {cfg.value_sparsity_tokens!r} with rare token share "
                         f"{cfg.rare_token_share:g}", hint=f"tokens: one of {', '.join(SPARSITY_TOKENS)}; share in (0, 1]")


def _sparsity_text(cfg: TrainConfig) -> str:
    text, rare = "", False
    if cfg.value_sparsity:
        text = f", value sparsity {cfg.value_sparsity:g}"
        if cfg.value_sparsity_tokens != "all":
            text, rare = text + f" on {cfg.value_sparsity_tokens}", True
    if cfg.value_separation:
        text, rare = text + f", value separation {cfg.value_separation:g}", True
    return text + (f" (rare: < {cfg.rare_token_share:g} of captions)" if rare else "")


def _progress(enabled: bool, total: int, initial: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True)


def train_unet(dataset: LabDataset, vae: Any, model_cfg: LabModelConfig, cfg: TrainConfig, ckpt_dir: Path,
               log: Callable[[str], None] | None = None, progress: bool = False) -> tuple[Any, Any, list[float]]:
    """Phase 2: the UNet on cached latents. Returns (unet, ema_unet, per-step losses of this call)."""
    check_value_penalties(cfg)
    import copy

    import torch
    from safetensors.torch import load_file

    from fbmem_data.lab.pipeline import build_scheduler
    from fbmem_data.nemo.layers import discover_nemo_layers

    examples = dataset.training_examples()
    keys = sorted({k for k, _ in examples})
    key_index = {k: i for i, k in enumerate(keys)}
    texts = sorted({t for _, t in examples})
    text_index = {t: i for i, t in enumerate(texts)}
    with torch.no_grad():
        images = image_tensor(dataset, keys)
        latents = torch.cat([vae.encode(images[s : s + 64]).latent_dist.mode() for s in range(0, len(keys), 64)])
        latents = latents * model_cfg.vae_scaling_factor
        tokenizer, encoder = build_text_encoder()
        embeds = encode_captions([*texts, ""], tokenizer, encoder)
    empty = len(texts)
    token_weights = None
    if cfg.value_sparsity and cfg.value_sparsity_tokens != "all":
        token_weights = sparsity_token_weights([*texts, ""], tokenizer, cfg.value_sparsity_tokens, cfg.rare_token_share)
    if cfg.value_separation:
        rare_tokens, common_tokens = separation_token_groups([*texts, ""], tokenizer, cfg.rare_token_share)
    ex_image = np.array([key_index[k] for k, _ in examples])
    ex_text = np.array([text_index[t] for _, t in examples])

    torch.manual_seed(cfg.seed + 1)
    unet = build_unet(model_cfg)
    if cfg.init_from is not None:
        from fbmem_data.lab.pipeline import UNET_FILE

        unet.load_state_dict(load_file(Path(cfg.init_from) / UNET_FILE))
    ema = copy.deepcopy(unet).requires_grad_(False)
    # the layers NeMo reads; raises InputError when the model's NeMo blocks have no cross-attention
    value_layers = ([layer.to_v for layer in discover_nemo_layers(unet)]
                    if cfg.value_sparsity or cfg.value_separation else [])
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=0.0)
    sched = build_scheduler(model_cfg)
    alphas = sched.alphas_cumprod.float()
    start = 0
    state_path = ckpt_dir / CHECKPOINT_STATE
    if state_path.is_file() and (ckpt_dir / "unet.safetensors").is_file():
        state = json.loads(state_path.read_text(encoding="utf-8"))
        tensors = load_file(ckpt_dir / "unet.safetensors")
        unet.load_state_dict(_unflatten("unet", tensors))
        ema.load_state_dict(_unflatten("ema", tensors))
        _load_optimizer(opt, tensors)
        start = int(state.get("unet_step", 0))
        _log(log, f"unet: resumed at step {start}")
    losses: list[float] = []
    bar = _progress(progress, cfg.unet_steps, start, "unet")
    t0 = time.time()
    for step in range(start, min(cfg.unet_steps, cfg.stop_at or cfg.unet_steps)):
        rng = _batch_rng(cfg.seed, 2, step)
        pick = rng.integers(0, len(examples), size=cfg.unet_batch)
        x0 = latents[ex_image[pick]]
        text_ids = np.where(rng.random(cfg.unet_batch) < cfg.caption_dropout, empty, ex_text[pick])
        cond = embeds[text_ids]
        t = torch.from_numpy(rng.integers(0, model_cfg.train_timesteps, size=cfg.unet_batch))
        noise = torch.from_numpy(rng.standard_normal(x0.shape).astype(np.float32))
        if cfg.offset_noise:
            offset = rng.standard_normal((x0.shape[0], x0.shape[1], 1, 1)).astype(np.float32)
            noise = noise + cfg.offset_noise * torch.from_numpy(offset)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg.unet_lr, cfg.warmup_steps, cfg.unet_steps)
        pred = unet(noisy, t, cond).sample
        target = a.sqrt() * noise - (1 - a).sqrt() * x0 if model_cfg.prediction_type == "v_prediction" else noise
        loss = (pred - target).pow(2).mean()
        total = loss
        if cfg.value_sparsity:
            weights = None if token_weights is None else token_weights[text_ids]
            total = total + value_sparsity_penalty(value_layers, cond, cfg.value_sparsity, weights)
        if cfg.value_separation:
            total = total + value_separation_penalty(value_layers, cond, rare_tokens[text_ids],
                                                     common_tokens[text_ids], cfg.value_separation)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters(), strict=True):
                pe.mul_(decay).add_(p.detach(), alpha=1 - decay)
        losses.append(float(loss.item()))
        bar.update(1)
        if (step + 1) % cfg.log_every == 0:
            recent = float(np.mean(losses[-cfg.log_every :]))
            rate = (time.time() - t0) / len(losses)
            _log(log, f"unet step {step + 1}/{cfg.unet_steps} loss {recent:.4f} {rate:.2f}s/step "
                      f"eta {rate * (cfg.unet_steps - step - 1) / 60:.0f}min")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 in (cfg.unet_steps, cfg.stop_at):
            tensors = {**_flatten("unet", unet.state_dict()), **_flatten("ema", ema.state_dict()), **_optimizer_tensors(opt)}
            _save_checkpoint(ckpt_dir, "unet.safetensors", tensors, {
                "phase": "unet", "ae_step": cfg.ae_steps, "unet_step": step + 1, "config": asdict(cfg),
                "model": model_cfg.to_dict(), "loss": losses[-1],
            })
    bar.close()
    return unet, ema, losses


def train_lab(out_dir: Path, ckpt_dir: Path, cfg: TrainConfig | None = None, model_cfg: LabModelConfig | None = None,
              lab_cfg: LabConfig | None = None, log: Callable[[str], None] | None = print,
              progress: bool = False, model_id: str | None = None) -> dict[str, Any]:
    """Both phases, then write the EMA weights and their config to `out_dir` (e.g. data/lab/).

    `model_id` is recorded in lab_model.json (default: the v1 id); the data-set config, the training
    config and one `stages` entry per phase go there too, so a folder says how it was made.
    """
    import torch

    from fbmem_data.lab.pipeline import LAB_MODEL_ID

    cfg = cfg or TrainConfig()
    model_cfg = model_cfg or LabModelConfig()
    check_value_penalties(cfg)  # before the autoencoder phase, not minutes into training
    torch.set_num_threads(cfg.threads)
    dataset = make_lab_dataset(cfg.dataset_seed, lab_cfg)
    started = time.time()
    if cfg.init_from is not None:
        from fbmem_data.errors import ModelNotFoundError
        from fbmem_data.lab.pipeline import load_lab_vae, missing_weight_files, read_weights_info

        missing = missing_weight_files(Path(cfg.init_from))
        if missing:
            raise ModelNotFoundError(f"cannot fine-tune {cfg.init_from}: missing {', '.join(missing)}",
                                     hint="point --init-from at a folder `fbmem lab train` wrote, e.g. data/lab/")
        vae = load_lab_vae(Path(cfg.init_from)).requires_grad_(False)
        model_cfg = replace(model_cfg, vae_scaling_factor=read_weights_info(Path(cfg.init_from)).model.vae_scaling_factor)
    else:
        vae, model_cfg = train_autoencoder(dataset, model_cfg, cfg, ckpt_dir, log, progress)
    ae_seconds = time.time() - started
    recon_msssim = autoencoder_msssim(vae, dataset)
    _log(log, f"autoencoder done in {ae_seconds:.0f}s, latent scaling {model_cfg.vae_scaling_factor}, "
              f"reconstruction MS-SSIM {recon_msssim:.4f}")
    unet_started = time.time()
    _, ema, losses = train_unet(dataset, vae, model_cfg, cfg, ckpt_dir, log, progress)
    seconds = time.time() - started
    last = min(cfg.unet_steps, cfg.stop_at or cfg.unet_steps)
    stages = [] if cfg.init_from else [{"what": f"autoencoder {cfg.ae_steps} steps (batch {cfg.ae_batch}, {cfg.ae_crop}x{cfg.ae_crop} crops, lr {cfg.ae_lr:g}), latents centred",
                                        "seconds_this_call": round(ae_seconds, 1)}]
    stages.append({"what": f"UNet {'fine-tune' if cfg.init_from else 'from scratch'}: steps 1-{last} of a {cfg.unet_steps}-step cosine schedule "
                           f"(lr {cfg.unet_lr:g}, warm-up {cfg.warmup_steps}, batch {cfg.unet_batch}, {model_cfg.prediction_type}"
                           f"{', zero-terminal-SNR betas' if model_cfg.zero_terminal_snr else ''}"
                           f"{_sparsity_text(cfg)}); EMA weights of step {last}",
                   "seconds_this_call": round(time.time() - unet_started, 1)})
    summary = {
        "stages": stages,
        "train_config": asdict(cfg),
        "lab_config": asdict(dataset.config),
        "seconds_this_call": round(seconds, 1),
        "final_loss_mean_last_50": float(np.mean(losses[-50:])) if losses else None,
        "torch_threads": cfg.threads,
        "autoencoder_seconds": round(ae_seconds, 1),
        "autoencoder_msssim_train_images": round(recon_msssim, 4),
    }
    save_lab_weights(out_dir, ema, vae, LabWeightsInfo(model=model_cfg, dataset_seed=cfg.dataset_seed, training=summary,
                                                       model_id=model_id or LAB_MODEL_ID))
    _log(log, f"wrote {out_dir} in {seconds:.0f}s")
    return summary


def train_lab_segmenter(out_dir: Path, dataset_seed: int = 0, steps: int = 2000, seed: int = 0,
                        init_weights: Path | None = None, lr: float = 2e-3, n_random: int = 4000,
                        widths: tuple[int, ...] | None = None,
                        log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train the lab segmenter on fresh lab drawings plus the lab's training images, write it to
    out_dir/segmenter.safetensors and measure its IoU on the data set's held-out images, as drawn and
    as the lab model redraws them.

    When out_dir holds a lab model, two thirds of each batch are redrawn by it (its autoencoder's round
    trip, and a partial denoise by its UNet): generated images come out of that model, and FB-Mem's
    labels need the masks of a generated image and of its training source to agree.
    """
    from fbmem_data.lab.pipeline import (
        load_lab_pipeline,
        missing_weight_files,
        read_weights_info,
        weights_lab_config,
    )
    from fbmem_data.lab.segmenter import (
        DEFAULT_WIDTHS,
        WEIGHTS_FILE,
        LabSegmenter,
        autoencoder_roundtrip,
        diffusion_roundtrip,
        evaluate_segmenter,
        train_segmenter,
    )

    pipe = None
    lab_cfg = None
    if not missing_weight_files(Path(out_dir)):
        pipe = load_lab_pipeline(Path(out_dir))
        pipe.set_progress_bar_config(disable=True)
        # the layout of the data set the model was trained on (v2's differs from v1's); the seed is dataset_seed
        lab_cfg = weights_lab_config(read_weights_info(Path(out_dir)))
    dataset = make_lab_dataset(dataset_seed, lab_cfg)
    keys = sorted(dataset.images)
    pixels = np.stack([dataset.images[k].pixels for k in keys])
    masks = np.stack([dataset.images[k].mask for k in keys])
    redraws = [autoencoder_roundtrip(pipe.vae, latent_noise=0.1, seed=seed), diffusion_roundtrip(pipe, seed=seed)] if pipe else []
    path = Path(out_dir) / WEIGHTS_FILE
    meta = train_segmenter(path, pixels, masks, seed=seed, n_random=n_random, steps=steps, lr=lr,
                           widths=widths or DEFAULT_WIDTHS, redraws=redraws, init_weights=init_weights, log=log)
    held_px = np.stack([h.pixels for h in dataset.heldout])
    held_masks = np.stack([h.mask for h in dataset.heldout])
    seg = LabSegmenter(path)
    held = evaluate_segmenter(seg, held_px, held_masks)
    out = {**meta, "heldout_iou_mean": held["iou_mean"], "heldout_iou_median": held["iou_median"],
           "lab_config": asdict(dataset.config)}
    if pipe is not None:
        for name, redraw in (("autoencoder", autoencoder_roundtrip(pipe.vae, latent_noise=0.0)),
                             ("diffusion", diffusion_roundtrip(pipe, seed=seed + 1))):
            redrawn = evaluate_segmenter(seg, redraw(held_px), held_masks)
            out.update({f"heldout_{name}_iou_mean": redrawn["iou_mean"], f"heldout_{name}_iou_median": redrawn["iou_median"]})
    path.with_name("segmenter.json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return out
