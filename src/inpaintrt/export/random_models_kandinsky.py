"""Kandinsky 2.2 models built from configs with fixed-seed random weights (see models.py for why).

Two diffusers folders, as the hub has them: the prior (kandinsky-community/kandinsky-2-2-prior: a CLIP
text encoder with projection, the PriorTransformer that turns its output into a CLIP image embedding,
an UnCLIP scheduler, and the CLIP image encoder whose embedding of a black picture is the default
negative embedding) and the inpainting decoder (kandinsky-2-2-decoder-inpaint: a 9-channel UNet
conditioned on image embeddings, the MoVQ autoencoder and a DDPM scheduler).
"""
from __future__ import annotations

from pathlib import Path

from .model_parts import build_clip, build_clip_tokenizer

# kandinsky-community/kandinsky-2-2-prior's scheduler_config.json
PRIOR_SCHEDULER_CONFIG = {
    "_class_name": "UnCLIPScheduler",
    "clip_sample": True,
    "clip_sample_range": 10.0,
    "num_train_timesteps": 1000,
    "prediction_type": "sample",
    "variance_type": "fixed_small_log",
}

# kandinsky-community/kandinsky-2-2-decoder-inpaint's scheduler_config.json
DECODER_SCHEDULER_CONFIG = {
    "_class_name": "DDPMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.995,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "steps_offset": 1,
    "thresholding": False,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "variance_type": "fixed_small",
}

KANDINSKY_SIZES = {
    # tests: MoVQ downsamples 4x (the real one 8x), so sizes are multiples of 16 (the real: 64)
    "tiny": dict(embed=32, text_layers=2, text_heads=4, prior_heads=2, prior_head_dim=12, prior_layers=1,
                 vision=(32, 1, 4, 32, 8), unet_blocks=(16, 32, 32), cross=24, head_dim=4,
                 movq_blocks=(32, 32, 32), layers=1, groups=8),  # MoVQ's spatial norm has 32 groups
}


def build_prior_pipeline(size: str = "tiny", seed: int = 0):
    """A KandinskyV22PriorPipeline with random weights (clip_mean/std random too, so post-processing shows)."""
    import torch
    from diffusers import KandinskyV22PriorPipeline, PriorTransformer, UnCLIPScheduler
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    a = KANDINSKY_SIZES[size]
    torch.manual_seed(seed)
    embed = a["embed"]
    prior = PriorTransformer(
        num_attention_heads=a["prior_heads"], attention_head_dim=a["prior_head_dim"], num_layers=a["prior_layers"],
        embedding_dim=embed, num_embeddings=77, additional_embeddings=4, time_embed_act_fn="gelu",
        norm_in_type="layer", embedding_proj_norm_type="layer", encoder_hid_proj_type="linear", added_emb_type="prd",
    )
    with torch.no_grad():
        prior.clip_mean.copy_(torch.randn_like(prior.clip_mean) * 0.1)
        prior.clip_std.copy_(1 + torch.rand_like(prior.clip_std))
    hidden, layers, heads, image_size, patch = a["vision"]
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=hidden * 4,
        image_size=image_size, patch_size=patch, projection_dim=embed,
    ))
    tokenizer = build_clip_tokenizer()
    tokenizer.pad_token = "!"  # the prior's OpenCLIP tokenizer pads with "!" (id 0)
    pipe = KandinskyV22PriorPipeline(
        prior=prior.eval(),
        image_encoder=image_encoder.eval(),
        text_encoder=build_clip(embed, a["text_layers"], a["text_heads"], projection=embed, act="gelu"),
        tokenizer=tokenizer,
        scheduler=UnCLIPScheduler.from_config(PRIOR_SCHEDULER_CONFIG),
        image_processor=CLIPImageProcessor(size={"shortest_edge": image_size},
                                           crop_size={"height": image_size, "width": image_size}),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_decoder_pipeline(size: str = "tiny", seed: int = 0, scheduler_config: dict | None = None):
    """A KandinskyV22InpaintPipeline with random weights: 9-channel UNet (mean + learned variance out),
    image-embedding conditioned, and a MoVQ (VQModel with spatial norm) autoencoder."""
    import torch
    from diffusers import DDPMScheduler, KandinskyV22InpaintPipeline, UNet2DConditionModel, VQModel

    a = KANDINSKY_SIZES[size]
    torch.manual_seed(seed)
    blocks = a["unet_blocks"]
    unet = UNet2DConditionModel(
        in_channels=9,
        out_channels=8,
        addition_embed_type="image",
        down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * (len(blocks) - 1),
        up_block_types=("SimpleCrossAttnUpBlock2D",) * (len(blocks) - 1) + ("ResnetUpsampleBlock2D",),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=blocks,
        layers_per_block=a["layers"],
        encoder_hid_dim=a["embed"],
        encoder_hid_dim_type="image_proj",
        cross_attention_dim=a["cross"],
        attention_head_dim=a["head_dim"],
        resnet_time_scale_shift="scale_shift",
        class_embed_type=None,
        norm_num_groups=a["groups"],
    )
    movq_blocks = a["movq_blocks"]
    movq = VQModel(
        in_channels=3,
        out_channels=3,
        block_out_channels=movq_blocks,
        down_block_types=("DownEncoderBlock2D",) * (len(movq_blocks) - 1) + ("AttnDownEncoderBlock2D",),
        up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * (len(movq_blocks) - 1),
        latent_channels=4,
        layers_per_block=a["layers"],
        norm_num_groups=a["groups"],
        norm_type="spatial",
        num_vq_embeddings=12,
        vq_embed_dim=4,
    )
    with torch.no_grad():  # random spatial norms make the output ~30x too large: bring it near [-1, 1]
        movq.decoder.conv_out.weight.mul_(0.03)
        movq.decoder.conv_out.bias.mul_(0.03)
    pipe = KandinskyV22InpaintPipeline(
        unet=unet.eval(), movq=movq.eval(),
        scheduler=DDPMScheduler.from_config(scheduler_config or DECODER_SCHEDULER_CONFIG),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_kandinsky(path: str | Path, size: str = "tiny", seed: int = 0) -> tuple[Path, Path]:
    """Save (decoder folder, prior folder) under `path`: what `inpaint-export --model DECODER --prior PRIOR` reads."""
    path = Path(path)
    decoder, prior = path / "decoder-inpaint", path / "prior"
    build_decoder_pipeline(size, seed).save_pretrained(decoder)
    build_prior_pipeline(size, seed + 1).save_pretrained(prior)
    return decoder, prior
