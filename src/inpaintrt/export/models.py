"""Stable Diffusion models built from configs with fixed-seed random weights.

No weights can be downloaded here, so the embedded default model and the test models are
built locally with the real architecture classes (diffusers' UNet2DConditionModel and
AutoencoderKL, transformers' CLIPTextModel) and openai's real CLIP BPE vocabulary.
Their pictures are noise-like: they exist to exercise the engine, not to paint.
"""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

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


def clip_bpe_path() -> Path:
    """Where openai's CLIP BPE merges file lies, inside the clip-anytorch wheel (not imported: it needs torchvision)."""
    spec = importlib.util.find_spec("clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "bpe_simple_vocab_16e6.txt.gz"
        if path.exists():
            return path
    raise RuntimeError(
        "openai's CLIP vocabulary was not found: install it with `pip install --no-deps clip-anytorch` "
        "(it ships bpe_simple_vocab_16e6.txt.gz)"
    )


def build_clip_tokenizer(model_max_length: int = 77):
    """openai's CLIP tokenizer (49408 tokens), built from the BPE merges the way CLIP's own code builds it."""
    from transformers import CLIPTokenizer

    merges = gzip.open(clip_bpe_path()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in merges]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = CLIPTokenizer(vocab={tok: i for i, tok in enumerate(vocab)}, merges=merges)
    tokenizer.model_max_length = model_max_length
    return tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


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


def build_vae(a: dict, scaling_factor: float = 0.18215, force_upcast: bool = True):
    """The SD VAE layout (SD 1.x, 2.x and SDXL share it; SDXL scales latents by 0.13025)."""
    from diffusers import AutoencoderKL

    blocks = a["vae_blocks"]
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=blocks,
        down_block_types=("DownEncoderBlock2D",) * len(blocks),
        up_block_types=("UpDecoderBlock2D",) * len(blocks),
        latent_channels=4,
        layers_per_block=a["layers"],
        norm_num_groups=a["groups"],
        sample_size=a["sample_size"] * 8,
        scaling_factor=scaling_factor,
        force_upcast=force_upcast,
    ).eval()


def build_clip(hidden: int, layers: int, heads: int, projection: int | None = None, act: str = "quick_gelu"):
    """A CLIP text encoder with openai's vocabulary size; with `projection`, the pooled-output projection
    model SDXL's second encoder is (CLIPTextModelWithProjection)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden, intermediate_size=hidden * 4, hidden_act=act,
        num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=1, projection_dim=projection or hidden,
    )
    return (CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)).eval()


def save_pipeline(path: str | Path, family: str = "sd1", **kwargs) -> Path:
    """Build and save a diffusers folder (what `inpaint-export --model FOLDER` reads); family "sdxl" or
    "sdxl-refiner" builds an SDXL one (models_sdxl.py)."""
    path = Path(path)
    if family == "sd1":
        pipe = build_pipeline(**kwargs)
    else:
        from .models_sdxl import build_sdxl_pipeline

        pipe = build_sdxl_pipeline(refiner=family == "sdxl-refiner", **kwargs)
    pipe.save_pretrained(path)
    return path
