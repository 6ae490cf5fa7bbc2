"""`wen`: Wen et al. (ICLR 2024) inference-time mitigation, and their detection score.

Mitigation (the paper's method): at the first DDIM step, on each image's own x_T, optimise the prompt
embedding e to reduce the text-conditional noise norm

    L(e) = || eps(x_T, t_0, e) - eps(x_T, t_0, e_empty) ||_2

with AdamW (lr 0.05, torch's default weight decay 0.01 as in the reference code), at most 10 iterations, stopping as soon as L <= target_loss (3 for SD v1.4), the
first token's gradient zeroed (the BOS position carries no prompt content); then generate with the
optimised embedding.

The reference code optimises one embedding per prompt over the stacked noise of its 4 images
(`num_images_per_prompt=4`): its loss is ONE L2 norm over the 4 stacked differences, and 3 is the target of
that norm, i.e. about 3/sqrt(4) = 1.5 per image when the images' norms are alike. Here each image has its
own embedding and loss, so an image does not depend on its batch (a batch optimises all rows at once: rows
are independent in the UNet, and rows that reached the target are frozen); `stack` (default 4, the
reference's) turns the target into the per-image one, target_loss / sqrt(stack). `stack=1` reads
target_loss as a per-image norm (what fbmem did before, and what a calibrated target is).

Detection: `wen_detection_score` = that norm at every step of a CFG generation, averaged over steps and seeds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from fbmem_data.errors import InputError
from fbmem_data.mitigate.protocol import GenerationBatch, Mitigation, removing_hooks

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

SD_TARGET_LOSS = 3.0
#: images per prompt whose stacked noise the reference's target applies to (`num_images_per_prompt=4`)
REFERENCE_STACK = 4


def encode_prompts(pipe: Any, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt embeddings, empty-prompt embeddings), both (B, L, D), exactly as the pipeline encodes them."""
    import torch

    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(list(prompts), pipe.unet.device, 1, True)
    return cond, uncond


def _noise(pipe: Any, latents: torch.Tensor, t: Any, embeds: torch.Tensor) -> torch.Tensor:
    return pipe.unet(latents, t, encoder_hidden_states=embeds, return_dict=False)[0]


def first_timestep(pipe: Any, steps: int) -> Any:
    pipe.scheduler.set_timesteps(steps, device=pipe.unet.device)
    return pipe.scheduler.timesteps[0]


class WenMitigation(Mitigation):
    """Wen et al.'s prompt-embedding optimisation at the first step.

    Args:
        lr: AdamW learning rate (0.05).
        max_iters: at most this many optimiser steps per image (10).
        target_loss: stop once the text-conditional noise norm of `stack` stacked images is <= this
            (3.0 for SD v1.4 at 512x512; the norm scales with the latent size, so other models need
            their own value: see docs/generate.md).
        stack: how many images the target's norm is taken over: 4 as in the reference (one norm over
            a prompt's 4 images), so an image stops at target_loss / 2; 1 for a per-image target.

    Raises:
        InputError: a non-positive lr or stack, negative max_iters or negative target.
    """

    name = "wen"
    # The tiny random test pipeline's norm is far below SD's 3: make the contract suite optimise.
    contract_params: ClassVar[dict[str, Any]] = {"target_loss": 0.0, "max_iters": 2}

    def __init__(self, lr: float = 0.05, max_iters: int = 10, target_loss: float = SD_TARGET_LOSS, stack: int = REFERENCE_STACK) -> None:
        self.lr = float(lr)
        self.max_iters = int(max_iters)
        self.target_loss = float(target_loss)
        self.stack = int(stack)
        if self.lr <= 0 or self.max_iters < 0 or self.target_loss < 0 or self.stack < 1:
            raise InputError(f"wen: need lr > 0, max_iters >= 0, target_loss >= 0, stack >= 1 (got {self.params()})")

    def params(self) -> dict[str, Any]:
        return {"lr": self.lr, "max_iters": self.max_iters, "target_loss": self.target_loss, "stack": self.stack}

    @property
    def per_image_target(self) -> float:
        """The target of one image's norm: a stack of equal norms n has norm n * sqrt(stack)."""
        return self.target_loss / self.stack**0.5

    def optimise(self, pipe: Any, batch: GenerationBatch) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
        """Optimised prompt embeddings, the empty-prompt embeddings, and per-image details."""
        import torch

        cond, uncond = encode_prompts(pipe, batch.prompts)
        t = first_timestep(pipe, batch.settings.steps)
        x = pipe.scheduler.scale_model_input(batch.latents, t)
        unet_dtype = pipe.unet.dtype
        with torch.no_grad():
            eps_empty = _noise(pipe, x, t, uncond).float()
        embeds = cond.detach().float().clone().requires_grad_(True)
        optimizer = torch.optim.AdamW([embeds], lr=self.lr)
        rows = len(batch)
        active = torch.ones(rows, dtype=torch.bool, device=embeds.device)
        iterations = [0] * rows
        initial: list[float] = []
        last = [0.0] * rows
        # One more loss evaluation than optimiser steps: the loss after the last step decides "reached".
        for it in range(self.max_iters + 1):
            with torch.enable_grad():
                eps_text = _noise(pipe, x, t, embeds.to(unet_dtype)).float()
                per_image = (eps_text - eps_empty).flatten(1).norm(p=2, dim=1)
            values = per_image.detach().cpu().tolist()
            if it == 0:
                initial = list(values)
            for i in range(rows):
                if active[i]:
                    last[i] = values[i]
            active &= per_image.detach() > self.per_image_target
            if it == self.max_iters or not bool(active.any()):
                break
            (grad,) = torch.autograd.grad(per_image[active].sum(), [embeds])
            grad[:, 0] = 0  # the first (BOS) token's embedding stays as it is
            embeds.grad = grad
            frozen = embeds.detach().clone()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                embeds[~active] = frozen[~active]  # rows at the target (and AdamW's decay) stay put
            for i in range(rows):
                if active[i]:
                    iterations[i] += 1
        details = [
            {
                **batch.details[i],
                "iterations": iterations[i],
                "initial_loss": round(initial[i], 6),
                "final_loss": round(last[i], 6),
                "reached_target": last[i] <= self.per_image_target,
            }
            for i in range(rows)
        ]
        return embeds.detach().to(unet_dtype), uncond, details

    @contextlib.contextmanager
    def apply(self, pipe: DiffusionPipeline, batch: GenerationBatch) -> Iterator[GenerationBatch]:
        prompt_embeds, negative_embeds, details = self.optimise(pipe, batch)
        yield batch.replace(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds, details=details)


def first_step_norms(
    pipe: Any, prompts: Sequence[str], *, seeds: Sequence[int] = (0, 1), steps: int = 50,
    height: int | None = None, width: int | None = None,
) -> list[float]:
    """The loss Wen's mitigation starts from, ||eps(x_T, t_0, e) - eps(x_T, t_0, e_empty)||_2, per
    (prompt, seed) in prompt-major order, on the same x_T `fbmem generate` draws for those seeds."""
    import torch

    from fbmem_data.noise import default_image_size, initial_latents

    default_h, default_w = default_image_size(pipe)
    height, width = int(height or default_h), int(width or default_w)
    cond, uncond = encode_prompts(pipe, prompts)
    t = first_timestep(pipe, steps)
    out: list[float] = []
    with torch.no_grad():
        for i in range(len(prompts)):
            x = initial_latents(pipe, [int(s) for s in seeds], height, width)
            x = pipe.scheduler.scale_model_input(x, t)
            rows = len(seeds)
            text = _noise(pipe, x, t, cond[i : i + 1].expand(rows, -1, -1)).float()
            empty = _noise(pipe, x, t, uncond[i : i + 1].expand(rows, -1, -1)).float()
            out += (text - empty).flatten(1).norm(p=2, dim=1).cpu().tolist()
    return out


def calibrate_target_loss(pipe: Any, non_memorized_prompts: Sequence[str], *, seeds: Sequence[int] = (0, 1),
                          steps: int = 50) -> float:
    """A model's own `target_loss`: the mean first-step norm of non-memorized prompts.

    Wen et al.'s 3 is a Stable Diffusion v1.4 figure at 512x512; the norm scales with the latent size
    and the model, so another model (the lab's 16x16x8 latents) needs its own: optimise memorized
    prompts down to where ordinary prompts already are.

    Raises:
        InputError: no prompts.
    """
    if not non_memorized_prompts:
        raise InputError("calibrate_target_loss needs at least one non-memorized prompt")
    norms = first_step_norms(pipe, non_memorized_prompts, seeds=seeds, steps=steps)
    return float(sum(norms) / len(norms))


def wen_detection_score(
    pipe: Any,
    prompts: Sequence[str],
    *,
    seeds: Sequence[int] = (0, 1, 2, 3),
    steps: int = 50,
    guidance: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    batch_size: int = 8,
) -> list[float]:
    """Wen et al.'s memorization detection score per prompt.

    For each (prompt, seed) a CFG generation runs (no VAE decode); at every step the text-conditional
    noise norm ||eps(x_t, e_prompt) - eps(x_t, e_empty)||_2 of the image is taken from the UNet's
    [uncond, cond] output; the score is its mean over steps, then over seeds. Reference setting:
    4 seeds, 50 DDIM steps, guidance 7.5. Memorized prompts score high.

    Args:
        pipe: a diffusers text-to-image pipeline (its scheduler is used as set; fbmem loads DDIM).
        prompts: prompt texts.
        seeds: x_T seeds (one CPU generator per image, as in `fbmem generate`).
        steps, guidance, height, width: sampler settings (height/width default to the model's size).
        batch_size: images per pipeline call (does not change any score).

    Returns:
        One float per prompt, in order.

    Raises:
        InputError: guidance <= 1 (no unconditional branch to compare with), or no seeds.
    """
    import torch

    from fbmem_data.noise import default_image_size, initial_latents

    if guidance <= 1.0:
        raise InputError("wen_detection_score needs guidance > 1 (it compares the two guidance branches)")
    if not seeds:
        raise InputError("wen_detection_score needs at least one seed")
    default_h, default_w = default_image_size(pipe)
    height, width = int(height or default_h), int(width or default_w)
    jobs = [(p_index, prompt, int(seed)) for p_index, prompt in enumerate(prompts) for seed in seeds]
    sums = [0.0] * len(prompts)
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        rows = len(chunk)
        per_step: list[torch.Tensor] = []

        def record(module: Any, inputs: Any, output: Any, per_step: list[torch.Tensor] = per_step) -> None:
            noise = output[0] if isinstance(output, tuple) else output.sample
            uncond, text = noise.float().chunk(2)
            per_step.append((text - uncond).flatten(1).norm(p=2, dim=1).detach().cpu())

        with removing_hooks([]) as handles:
            handles.append(pipe.unet.register_forward_hook(record))
            pipe(
                prompt=[prompt for _, prompt, _ in chunk],
                num_inference_steps=steps,
                guidance_scale=guidance,
                height=height,
                width=width,
                latents=initial_latents(pipe, [seed for _, _, seed in chunk], height, width),
                output_type="latent",
            )
        mean_over_steps = torch.stack(per_step).mean(dim=0)
        for row in range(rows):
            sums[chunk[row][0]] += float(mean_over_steps[row])
    return [s / len(seeds) for s in sums]
