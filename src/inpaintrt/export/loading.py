"""Load a Stable Diffusion 1.x/2.x checkpoint with diffusers: hub id, local folder or single file."""
from __future__ import annotations

import re
from pathlib import Path

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class CheckpointError(ValueError):
    """The --model argument cannot be loaded as a Stable Diffusion checkpoint."""


def load_pipeline(model: str, config: str | None = None):
    """A StableDiffusionInpaintPipeline in fp32 on the CPU, whatever kind of checkpoint `model` names.

    `config` (single files only) is a diffusers folder or hub id whose component configs and
    tokenizer describe the file; without it diffusers infers them from the weights (needs the hub).
    """
    import torch
    from diffusers import StableDiffusionInpaintPipeline

    path = Path(model)
    common = dict(safety_checker=None, requires_safety_checker=False, dtype=torch.float32)
    if path.suffix in SINGLE_FILE_SUFFIXES:
        if not path.is_file():
            raise CheckpointError(f"--model {model!r}: no such file; pass an existing .safetensors checkpoint")
        kwargs = dict(common, config=config) if config else common
        pipe = StableDiffusionInpaintPipeline.from_single_file(str(path), **kwargs)
    elif path.is_dir():
        if not (path / "model_index.json").is_file():
            raise CheckpointError(
                f"--model {model!r} is a folder without model_index.json; pass a diffusers pipeline folder "
                "(saved with save_pretrained), a single .safetensors file or a hub id"
            )
        pipe = StableDiffusionInpaintPipeline.from_pretrained(str(path), **common)
    elif path.exists() or not _HUB_ID.match(model):
        raise CheckpointError(
            f"--model {model!r} does not exist; pass a diffusers folder, a .safetensors file or a hub id like "
            "runwayml/stable-diffusion-inpainting"
        )
    else:
        try:
            pipe = StableDiffusionInpaintPipeline.from_pretrained(model, **common)
        except OSError as e:
            raise CheckpointError(f"--model {model!r}: could not load it from the Hugging Face hub ({e})") from e
    check_supported(pipe)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_supported(pipe) -> None:
    unet = pipe.unet.config
    if unet.in_channels not in (4, 9):
        raise CheckpointError(f"the UNet has {unet.in_channels} input channels; inpaintrt exports 9 (inpainting) or 4")
    if getattr(unet, "addition_embed_type", None) or getattr(unet, "time_cond_proj_dim", None):
        raise CheckpointError("this UNet takes extra conditioning (SDXL or LCM); inpaintrt exports SD 1.x/2.x UNets")
