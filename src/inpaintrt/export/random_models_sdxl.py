"""SDXL models built from configs with fixed-seed random weights (see models.py for why).

The base/inpainting layout has two text encoders (CLIP ViT-L hidden states, OpenCLIP bigG hidden
states + pooled projection) and a UNet with added `text_embeds`/`time_ids` conditions; the refiner
layout has only the second encoder and conditions on an aesthetic score instead of the target size.
"""
from __future__ import annotations

from .model_parts import build_clip, build_clip_tokenizer, build_vae

# stabilityai/stable-diffusion-xl-base-1.0's scheduler_config.json (the inpainting 0.1 checkpoint's too)
SDXL_SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
    "clip_sample": False,
}

SDXL_SIZES = {
    # tests: seconds to build and export; the UNet downsamples 4x so odd latent sizes are exercised. The
    # encoders differ in width, as in SDXL, which is how diffusers tells them apart in single files.
    "tiny": dict(sample_size=16, unet_blocks=(16, 32, 32), heads=(2, 4, 4), depth=(1, 1, 2), time_dim=8,
                 vae_blocks=(8, 8, 16, 16), text=(32, 2, 4), text_2=(48, 2, 4), layers=1, groups=8),
    # between tiny and full: a CPU benchmark that finishes in minutes
    "mid": dict(sample_size=64, unet_blocks=(64, 128, 256), heads=(2, 4, 8), depth=(1, 1, 2), time_dim=64,
                vae_blocks=(32, 64, 128, 128), text=(256, 4, 4), text_2=(320, 4, 5), layers=2, groups=32),
    # stabilityai/stable-diffusion-xl-base-1.0's architecture (2.6 B-parameter UNet, CLIP ViT-L, OpenCLIP bigG)
    "sdxl": dict(sample_size=128, unet_blocks=(320, 640, 1280), heads=(5, 10, 20), depth=(1, 2, 10), time_dim=256,
                 vae_blocks=(128, 256, 512, 512), text=(768, 12, 12), text_2=(1280, 32, 20), layers=2, groups=32),
}


def build_sdxl_pipeline(size: str = "tiny", in_channels: int = 9, seed: int = 0, refiner: bool = False,
                        scheduler_config: dict | None = None):
    """A StableDiffusionXLInpaintPipeline of the SDXL architecture with random weights; `refiner`
    drops the first text encoder and conditions on aesthetic scores (requires_aesthetics_score)."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLInpaintPipeline, UNet2DConditionModel

    a = SDXL_SIZES[size]
    hidden, layers, heads = a["text"]
    hidden_2, layers_2, heads_2 = a["text_2"]
    time_ids = 5 if refiner else 6  # (original size, crop, aesthetic score) or (…, target size)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=a["sample_size"],
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=a["unet_blocks"],
        layers_per_block=a["layers"],
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(a["unet_blocks"]) - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (len(a["unet_blocks"]) - 1) + ("UpBlock2D",),
        transformer_layers_per_block=a["depth"],
        attention_head_dim=a["heads"],
        use_linear_projection=True,
        cross_attention_dim=hidden_2 if refiner else hidden + hidden_2,
        addition_embed_type="text_time",
        addition_time_embed_dim=a["time_dim"],
        projection_class_embeddings_input_dim=time_ids * a["time_dim"] + hidden_2,
        norm_num_groups=a["groups"],
    )
    vae = build_vae(a, scaling_factor=0.13025, force_upcast=True)
    text_encoder = None if refiner else build_clip(hidden, layers, heads)
    text_encoder_2 = build_clip(hidden_2, layers_2, heads_2, projection=hidden_2, act="gelu")
    tokenizer_2 = build_clip_tokenizer()
    tokenizer_2.pad_token = "!"  # OpenCLIP pads with "!" (id 0), not with the end-of-text token
    pipe = StableDiffusionXLInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=None if refiner else build_clip_tokenizer(),
        tokenizer_2=tokenizer_2,
        unet=unet.eval(),
        scheduler=EulerDiscreteScheduler.from_config(scheduler_config or SDXL_SCHEDULER_CONFIG),
        requires_aesthetics_score=refiner,
        force_zeros_for_empty_prompt=not refiner,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
