"""Stable Diffusion models built from configs with fixed-seed random weights.

No weights can be downloaded here, so the embedded default model and the test models are
built locally with the real architecture classes (diffusers' UNet2DConditionModel and
AutoencoderKL, transformers' CLIPTextModel) and openai's real CLIP BPE vocabulary.
Their pictures are noise-like: they exist to exercise the engine, not to paint.
"""
from __future__ import annotations

from pathlib import Path

from ..engine.families import SD1
from .model_parts import build_clip, build_clip_tokenizer, build_vae

# runwayml/stable-diffusion-inpainting's scheduler_config.json
SD15_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "trained_betas": None,
}

# name -> architecture settings
SIZES = {
    # tests: seconds to build and export; UNet downsamples 4x so odd latent sizes are exercised
    "tiny": dict(sample_size=16, unet_blocks=(16, 32, 32), vae_blocks=(8, 8, 16, 16), text_hidden=32,
                 text_layers=2, text_heads=4, layers=1, groups=8, head_dim=8),
    # the quick start's default model: SD 1.5's default 512x512 size, still small
    "small": dict(sample_size=64, unet_blocks=(32, 64, 64), vae_blocks=(16, 16, 32, 32), text_hidden=64,
                  text_layers=2, text_heads=4, layers=1, groups=8, head_dim=8),
    # runwayml/stable-diffusion-inpainting's architecture (860M-parameter UNet, CLIP ViT-L/14, SD VAE)
    "sd15": dict(sample_size=64, unet_blocks=(320, 640, 1280, 1280), vae_blocks=(128, 256, 512, 512),
                 text_hidden=768, text_layers=12, text_heads=12, layers=2, groups=32, head_dim=8),
}


def build_pipeline(size: str = "tiny", in_channels: int = 9, seed: int = 0, scheduler_config: dict | None = None):
    """A StableDiffusionInpaintPipeline of the SD 1.x architecture with random weights."""
    import torch
    from diffusers import PNDMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel

    a = SIZES[size]
    unet_blocks, vae_blocks, text_hidden = a["unet_blocks"], a["vae_blocks"], a["text_hidden"]
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=a["sample_size"],
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=unet_blocks,
        layers_per_block=a["layers"],
        down_block_types=("CrossAttnDownBlock2D",) * (len(unet_blocks) - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (len(unet_blocks) - 1),
        cross_attention_dim=text_hidden,
        attention_head_dim=a["head_dim"],
        norm_num_groups=a["groups"],
    )
    vae = build_vae(a)
    text_encoder = build_clip(text_hidden, a["text_layers"], a["text_heads"])
    scheduler = PNDMScheduler.from_config(scheduler_config or SD15_SCHEDULER_CONFIG)
    pipe = StableDiffusionInpaintPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=build_clip_tokenizer(),
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_pipeline(path: str | Path, family: str = SD1, **kwargs) -> Path:
    """Build and save a diffusers folder (what `inpaint-export --model FOLDER` reads); family "sdxl" or
    "sdxl-refiner" builds an SDXL one (models_sdxl.py)."""
    path = Path(path)
    if family == SD1:
        pipe = build_pipeline(**kwargs)
    else:
        from .random_models_sdxl import build_sdxl_pipeline

        pipe = build_sdxl_pipeline(refiner=family == "sdxl-refiner", **kwargs)
    pipe.save_pretrained(path)
    return path
