"""Memorization scores: NeMo's noise-difference MS-SSIM and Wen et al.'s text-conditional noise norm.

NeMo (the paper's method): draw n_seeds initial latents x_T from one generator (seed 1); predict the noise
with the text branch only (guidance 0) at DDIM timestep index 1 of a 50-step schedule (t = 961 for SD)
on the unchanged x_T; noise_diff = eps(x_T, t, c) - x_T, min-max normalised per sample and channel over
HxW; compare with 3-scale MS-SSIM (kernel 11, betas 0.33 x 3). The detection score of a prompt is the
largest pairwise similarity between two seeds' noise differences.

Small latents: 3-scale MS-SSIM with an 11-pixel kernel needs latents larger than 40 pixels (SD has 64).
For smaller latents (the lab's 16x16) the kernel shrinks to the largest odd size that fits and the
Gaussian sigma shrinks with it (sigma = 1.5 * k / 11); latents of 8 pixels or fewer are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from fbmem_data.errors import InputError
from fbmem_data.runs import recorded

if TYPE_CHECKING:
    import torch

PAPER_BETAS = (0.33, 0.33, 0.33)
PAPER_KERNEL = 11


@dataclass(frozen=True)
class NoiseDiffSettings:
    """How noise differences are made and compared (defaults = NeMo's reference settings)."""

    n_seeds: int = 10
    seed: int = 1
    steps: int = 50
    timestep_index: int = 1
    kernel_size: int = PAPER_KERNEL
    betas: tuple[float, ...] = PAPER_BETAS
    latent_size: int | None = None  # None: the UNet's config.sample_size
    # MS-SSIM exactly as NeMo's code gets it from torchmetrics 1.3.2 (see msssim_pairs); off: fixed
    # data range 1 and the current torchmetrics' uncropped last scale
    reference_msssim: bool = False

    def as_params(self) -> dict[str, Any]:
        params = {**asdict(self), "betas": list(self.betas)}
        if not self.reference_msssim:
            params.pop("reference_msssim")  # only when set: ids of earlier configurations stay the same
        return params


def msssim_kernel(size: int, kernel_size: int = PAPER_KERNEL, n_scales: int = 3) -> tuple[int, float]:
    """(kernel, sigma) for MS-SSIM on size x size inputs: the requested kernel if it fits, else smaller.

    Raises:
        InputError: the input is too small for n_scales scales even with a 3-pixel kernel.
    """
    scale = 2 ** (n_scales - 1)
    k = kernel_size
    while k >= 3 and (k - 1) * scale >= size:
        k -= 2
    if k < 3:
        raise InputError(f"{size}x{size} latents are too small for {n_scales}-scale MS-SSIM (need more than {2 * scale})")
    sigma = 1.5 if k == PAPER_KERNEL else 1.5 * k / PAPER_KERNEL
    return k, sigma


def msssim_pairs(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    kernel_size: int = PAPER_KERNEL,
    betas: Sequence[float] = PAPER_BETAS,
    reference: bool = False,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """MS-SSIM of a[i] vs b[i] for every i (inputs in [0, 1], shape (N, C, H, W)); returns (N,).

    reference=False: data range fixed at 1, torchmetrics' current MS-SSIM.
    reference=True: as NeMo's code computes it with torchmetrics 1.3.2: `data_range=None`, i.e. at
    every scale the range max(max-min of a, max-min of b) taken over all pairs of one call (NeMo's calls
    hold one prompt's seed pairs, or one hypothesis's kept seeds: `groups` gives each pair's call, default
    one call), and the last scale's SSIM map cropped like the others (torchmetrics < 1.4.2).
    """
    k, sigma = msssim_kernel(min(a.shape[-2:]), kernel_size, len(betas))
    if reference:
        return _reference_msssim(a.float(), b.float(), sigma, tuple(betas), groups)
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    return multiscale_structural_similarity_index_measure(
        a.float(), b.float(), kernel_size=k, sigma=sigma, betas=tuple(betas), data_range=1.0, reduction="none"
    )


def _reference_msssim(a: torch.Tensor, b: torch.Tensor, sigma: float, betas: tuple[float, ...], groups: torch.Tensor | None) -> torch.Tensor:
    import torch

    from fbmem_data.similarity.msssim import SSIMConfig, image_stats, pair_scores

    cfg = SSIMConfig(sigma=sigma, betas=betas, data_range=None, legacy_crop=True)
    n = a.shape[0]
    g = torch.zeros(n, dtype=torch.long) if groups is None else groups.to(torch.long).cpu()
    sa, sb = image_stats(a, cfg), image_stats(b, cfg)
    for stats in (sa, sb):
        for st in stats:
            # one range per call: every pair of a group gets its group's min and max
            lo = torch.full((int(g.max()) + 1,), float("inf")).scatter_reduce(0, g, st.lo.cpu(), "amin")
            hi = torch.full((int(g.max()) + 1,), float("-inf")).scatter_reduce(0, g, st.hi.cpu(), "amax")
            st.lo, st.hi = lo[g].to(st.lo), hi[g].to(st.hi)
    return pair_scores(sa, sb, cfg)


def normalise_noise_diff(noise_diff: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each sample's channels over H x W to [0, 1]."""
    lo = noise_diff.amin(dim=(-2, -1), keepdim=True)
    hi = noise_diff.amax(dim=(-2, -1), keepdim=True)
    return (noise_diff - lo) / (hi - lo).clamp_min(1e-12)


def predicted_noise(scheduler: Any, model_input: torch.Tensor, output: torch.Tensor, timestep: Any) -> torch.Tensor:
    """The UNet output as a noise prediction, whatever the model predicts.

    NeMo's noise difference is predicted noise minus x_T. A v-predicting model (zero-terminal-SNR
    schedules) outputs v = sqrt(a) eps - sqrt(1 - a) x_0; taken as noise, "v - x_T" keeps all of x_T, so
    a blocked and an unblocked difference share x_T and stay similar whatever is blocked. Converted,
    eps = sqrt(a) v + sqrt(1 - a) x_t. Epsilon models (SD v1.4) pass through unchanged.
    """
    kind = getattr(getattr(scheduler, "config", None), "prediction_type", "epsilon")
    if kind == "epsilon":
        return output
    alpha = scheduler.alphas_cumprod[int(timestep)].to(device=output.device, dtype=output.dtype)
    if kind == "v_prediction":
        return alpha.sqrt() * output + (1 - alpha).sqrt() * model_input
    if kind == "sample":
        return (model_input - alpha.sqrt() * output) / (1 - alpha).sqrt()
    raise InputError(f"unknown prediction type {kind!r}", hint="epsilon, v_prediction or sample")


def detection_latents(n_seeds: int, seed: int, shape: Sequence[int]) -> torch.Tensor:
    """n_seeds latents x_T (fp32, CPU) drawn in one call from one generator seeded `seed`, as NeMo does.

    Not generation's noise (`fbmem_data.noise.initial_latents`, one generator per image seed): NeMo's
    detection statistics are defined on this batch draw, so latent i here is not the x_T of seed i.
    """
    import torch

    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn((n_seeds, *shape), generator=generator, dtype=torch.float32)


def nemo_timestep(scheduler: Any, steps: int = 50, index: int = 1) -> Any:
    """The DDIM timestep at `index` of a `steps`-step schedule (961 for SD's 50 steps, index 1).

    Works on a copy of the scheduler, so the pipeline's own schedule is untouched.
    """
    sched = type(scheduler).from_config(scheduler.config)
    sched.set_timesteps(steps)
    return sched.timesteps[index]


def pairwise_max_similarity(noise_diffs: torch.Tensor, settings: NoiseDiffSettings) -> torch.Tensor:
    """Per seed, the largest MS-SSIM to another seed's noise difference; returns (n_seeds,)."""
    import torch

    n = noise_diffs.shape[0]
    if n < 2:
        raise InputError("NeMo's detection score needs at least 2 seeds")
    i, j = torch.triu_indices(n, n, offset=1)
    sims = msssim_pairs(noise_diffs[i], noise_diffs[j], kernel_size=settings.kernel_size, betas=settings.betas,
                        reference=settings.reference_msssim)
    per_seed = torch.full((n,), -1.0)
    for a, b, s in zip(i.tolist(), j.tolist(), sims.tolist(), strict=True):
        per_seed[a] = max(per_seed[a].item(), s)
        per_seed[b] = max(per_seed[b].item(), s)
    return per_seed


def noise_diff_inputs(unet: Any, scheduler: Any, settings: NoiseDiffSettings) -> tuple[Any, Any, Any]:
    """(latents, timestep, model_input) of NeMo's one-step noise difference: the seeded initial latents
    on the UNet's device and dtype, the timestep, and the latents scaled for the UNet."""
    size = settings.latent_size or int(unet.config.sample_size)
    shape = (int(unet.config.in_channels), size, size)
    latents = detection_latents(settings.n_seeds, settings.seed, shape).to(unet.device, unet.dtype)
    timestep = nemo_timestep(scheduler, settings.steps, settings.timestep_index)
    model_input = scheduler.scale_model_input(latents, timestep) if hasattr(scheduler, "scale_model_input") else latents
    return latents, timestep, model_input


def reference_noise_diffs(unet: Any, scheduler: Any, embeds: torch.Tensor, settings: NoiseDiffSettings) -> torch.Tensor:
    """Normalised noise differences (n_seeds, C, H, W) of one prompt's embedding, no neuron blocked.

    Raises:
        InputError: `embeds` holds more than one prompt.
    """
    import torch

    if embeds.shape[0] != 1:
        raise InputError("reference_noise_diffs takes the embedding of one prompt")
    latents, timestep, model_input = noise_diff_inputs(unet, scheduler, settings)
    embeds = embeds.to(unet.device, unet.dtype).expand(latents.shape[0], -1, -1)
    with torch.no_grad():
        eps = predicted_noise(scheduler, model_input, unet(model_input, timestep, encoder_hidden_states=embeds).sample, timestep)
    return normalise_noise_diff(eps.float() - latents.float())


def nemo_detection_scores(pipe: Any, texts: Sequence[str], settings: NoiseDiffSettings | None = None) -> list[float]:
    """NeMo's detection score (max pairwise seed similarity) for each prompt text."""
    from fbmem_data.nemo.activations import encode_prompts

    settings = settings or NoiseDiffSettings()
    scores = []
    for text in texts:
        reference = reference_noise_diffs(pipe.unet, pipe.scheduler, encode_prompts(pipe, [text]), settings)
        scores.append(float(pairwise_max_similarity(reference, settings).max()))
    return scores


def wen_norm_scores(
    pipe: Any, texts: Sequence[str], *, seeds: Sequence[int] = (0, 1, 2, 3), steps: int = 50, guidance: float = 7.5
) -> list[float]:
    """Wen et al.'s detection score per prompt: ||eps(x_t, c) - eps(x_t, empty)||_2 over steps and seeds
    (the one definition is `fbmem_data.mitigate.wen.wen_detection_score`)."""
    from fbmem_data.mitigate.wen import wen_detection_score

    return [float(s) for s in wen_detection_score(pipe, list(texts), seeds=list(seeds), steps=steps, guidance=guidance)]


@recorded(
    "nemo detect",
    lambda a: {"model_id": a["model_id"], "prompt_set": a["prompt_set"], "method": a["method"],
               "settings": a["settings"].as_params() if a["settings"] is not None else None,
               "wen": {"seeds": list(a["wen_seeds"]), "steps": a["wen_steps"], "guidance": a["wen_guidance"]}},
)
def record_detection_scores(
    ws: Any,
    pipe: Any,
    model_id: str,
    prompt_set: str,
    *,
    method: str = "nemo_msssim",
    settings: NoiseDiffSettings | None = None,
    wen_seeds: Sequence[int] = (0, 1, 2, 3),
    wen_steps: int = 50,
    wen_guidance: float = 7.5,
    run_id: str | None = None,
) -> str:
    """Score every prompt of a set not yet scored under this configuration; returns its config_hash.

    A prompt whose scoring raises gets a row with a null score and the error.
    """
    import json

    from fbmem_data.ids import params_hash

    if method == "nemo_msssim":
        settings = settings or NoiseDiffSettings()
        params: dict[str, Any] = {"method": method, **settings.as_params()}
    elif method == "wen_norm":
        params = {"method": method, "seeds": list(wen_seeds), "steps": wen_steps, "guidance": wen_guidance}
    else:
        raise InputError(f"unknown detection method {method!r}", hint="nemo_msssim or wen_norm")
    config_hash = params_hash(params)
    todo = ws.sql(
        "SELECT prompt_id, text FROM prompts WHERE prompt_set = $set AND prompt_id NOT IN "
        "(SELECT prompt_id FROM detection_scores WHERE model_id = $model AND method = $method AND config_hash = $hash) "
        "ORDER BY source_index NULLS LAST, prompt_id",
        {"set": prompt_set, "model": model_id, "method": method, "hash": config_hash},
    ).to_pylist()
    for row in todo:
        score, error = None, None
        try:
            if method == "nemo_msssim":
                score = nemo_detection_scores(pipe, [row["text"]], settings)[0]
            else:
                score = wen_norm_scores(pipe, [row["text"]], seeds=wen_seeds, steps=wen_steps, guidance=wen_guidance)[0]
        except InputError:
            raise
        except Exception as exc:  # record and go on: one prompt must not end the run
            error = f"{type(exc).__name__}: {exc}"
        ws.write(
            "detection_scores",
            [{"model_id": model_id, "prompt_id": row["prompt_id"], "method": method, "config_hash": config_hash,
              "score": score, "params": json.dumps(params), "error": error, "run_id": run_id}],
        )
    return config_hash


@recorded(
    "nemo calibrate",
    lambda a: {"model_id": a["model_id"], "prompt_set": a["prompt_set"], "method": a["method"],
               "config_hash": a["config_hash"], "n_std": a["n_std"]},
)
def calibrate(
    ws: Any, model_id: str, prompt_set: str, *, method: str = "nemo_msssim", config_hash: str | None = None,
    n_std: float = 1.0, run_id: str | None = None,
) -> dict[str, Any]:
    """tau = mean + n_std * std (sample std) of the stored detection scores of a non-memorized set.

    Raises:
        InputError: fewer than 2 scores stored for that model, set and method (or several configs, none chosen).
    """
    import datetime as dt

    from fbmem_data.ids import params_hash

    configs = ws.sql(
        "SELECT DISTINCT d.config_hash FROM detection_scores d JOIN prompts p USING (prompt_id) "
        "WHERE d.model_id = $model AND d.method = $method AND p.prompt_set = $set ORDER BY 1",
        {"model": model_id, "method": method, "set": prompt_set},
    ).column("config_hash").to_pylist()
    if config_hash is None:
        if len(configs) != 1:
            raise InputError(
                f"{len(configs)} detection configurations stored for {model_id!r}/{method}/{prompt_set!r}: {configs}",
                hint="run `fbmem nemo detect` on the set first, or pass --config HASH",
            )
        config_hash = configs[0]
    stats = ws.sql(
        "SELECT count(score) AS n, avg(score) AS mean, stddev_samp(score) AS std FROM detection_scores d "
        "JOIN prompts p USING (prompt_id) WHERE d.model_id = $model AND d.method = $method AND d.config_hash = $hash "
        "AND p.prompt_set = $set",
        {"model": model_id, "method": method, "hash": config_hash, "set": prompt_set},
    ).to_pylist()[0]
    if (stats["n"] or 0) < 2:
        raise InputError(f"calibration needs at least 2 scored prompts of {prompt_set!r}; found {stats['n']}")
    row = {
        "model_id": model_id, "method": method, "config_hash": config_hash, "prompt_set": prompt_set,
        "n_prompts": stats["n"], "mean": stats["mean"], "std": stats["std"], "n_std": n_std,
        "tau": stats["mean"] + n_std * stats["std"], "created_at": dt.datetime.now(dt.UTC), "run_id": run_id,
    }
    row["calibration_id"] = params_hash({k: v for k, v in row.items() if k not in ("created_at", "run_id")})
    ws.write("nemo_calibration", [row])
    return row


def current_tau(ws: Any, model_id: str, method: str = "nemo_msssim") -> float:
    """The newest calibrated threshold.

    Raises:
        InputError: the model has no calibration.
    """
    rows = ws.sql(
        "SELECT tau FROM nemo_current_calibration WHERE model_id = $model AND method = $method",
        {"model": model_id, "method": method},
    ).to_pylist()
    if not rows:
        raise InputError(f"no {method} calibration for model {model_id!r}", hint="run `fbmem nemo calibrate` first")
    return float(rows[0]["tau"])
