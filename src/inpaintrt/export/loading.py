"""Load a Stable Diffusion 1.x/2.x or SDXL checkpoint with diffusers: hub id, local folder or single file
(Kandinsky 2.2 is detected here and loaded by kandinsky.py).

The family is read from the checkpoint itself (the pipeline class in model_index.json, the UNet's
config, or the single file's key names), never guessed from weight shapes."""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..engine.families import KANDINSKY22, SDXL

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class CheckpointError(ValueError):
    """The --model argument cannot be loaded as a Stable Diffusion checkpoint."""


def load_pipeline(model: str, config: str | None = None, safety_checker: bool = True):
    """A StableDiffusion(XL)InpaintPipeline in fp32 on the CPU, whatever kind of checkpoint `model` names.

    `config` (single files only) is a diffusers folder or hub id whose component configs and
    tokenizer describe the file; without it diffusers infers them from the weights (needs the hub).
    safety_checker=False loads SD without its safety checker (diffusers' `safety_checker=None`); single
    files never bring one (diffusers' from_single_file leaves it out).
    """
    import torch
    import diffusers

    path = Path(model)
    family = checkpoint_family(model, config)
    if family == KANDINSKY22:
        raise CheckpointError(f"--model {model!r} is a Kandinsky 2.2 pipeline; export/kandinsky.py's load_kandinsky "
                              "loads it (inpaint-export does so by itself)")
    pipeline_class = getattr(diffusers, PIPELINES[family])
    common = dict(dtype=torch.float32)
    if family == "sd" and (not safety_checker or path.suffix in SINGLE_FILE_SUFFIXES):
        common.update(safety_checker=None, requires_safety_checker=False)
    if path.suffix in SINGLE_FILE_SUFFIXES:
        if not path.is_file():
            raise CheckpointError(f"--model {model!r}: no such file; pass an existing .safetensors checkpoint")
        check_single_file(path)
        kwargs = dict(common, config=config) if config else common
        try:
            pipe = pipeline_class.from_single_file(str(path), **kwargs)
        except Exception as e:  # diffusers' conversion fails in many ways on a file of another kind
            raise CheckpointError(f"--model {model!r}: diffusers could not read it as a {PIPELINES[family]} "
                                  f"checkpoint ({type(e).__name__}: {str(e)[:300]})") from None
    elif path.is_dir():
        if not (path / "model_index.json").is_file():
            raise CheckpointError(
                f"--model {model!r} is a folder without model_index.json; pass a diffusers pipeline folder "
                "(saved with save_pretrained), a single .safetensors file or a hub id"
            )
        pipe = pipeline_class.from_pretrained(str(path), **common)
    elif path.exists() or not _HUB_ID.match(model):
        raise CheckpointError(
            f"--model {model!r} does not exist; pass a diffusers folder, a .safetensors file or a hub id like "
            "runwayml/stable-diffusion-inpainting"
        )
    else:
        try:
            pipe = pipeline_class.from_pretrained(model, **common)
        except OSError as e:
            raise CheckpointError(f"--model {model!r}: could not load it from the Hugging Face hub ({e})") from e
    check_supported(pipe, family)
    check_finite(pipe, model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_single_file(path: Path) -> None:
    """A .safetensors checkpoint's header checked against the file before anything reads it
    (engine/safetensors_io.py): truncated, damaged or hostile files are refused by name. .ckpt files are
    pickles: diffusers reads them with torch.load(weights_only=True)."""
    from ..engine.safetensors_io import SafetensorsError, read_header

    if path.suffix != ".safetensors":
        return
    try:
        infos, _ = read_header(path)
    except SafetensorsError as e:
        raise CheckpointError(f"--model {str(path)!r} cannot be read: {e}; pass an intact .safetensors checkpoint "
                              "(download it again)") from None
    if not infos:
        raise CheckpointError(f"--model {str(path)!r} holds no tensors; pass a Stable Diffusion checkpoint")


def check_finite(pipe, model: str) -> None:
    """NaN or infinite weights would export and run, giving NaN pictures: refused by name instead."""
    import torch

    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name, None)
        for key, tensor in (module.state_dict().items() if module is not None else ()):
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise CheckpointError(f"--model {model!r}: {name}.{key} has NaN or infinite values; the checkpoint "
                                      "is damaged")


# the checkpoint kinds this module loads: SD ("sd": 1.x and 2.x, told apart at export) and SDXL
PIPELINES = {"sd": "StableDiffusionInpaintPipeline", SDXL: "StableDiffusionXLInpaintPipeline"}


def checkpoint_family(model: str, config: str | None = None) -> str:
    """SDXL, "sd" (1.x/2.x) or KANDINSKY22, from what the checkpoint says about itself."""
    path = Path(model)
    if path.suffix in SINGLE_FILE_SUFFIXES:
        if config:
            return checkpoint_family(config)
        if path.suffix == ".safetensors" and path.is_file():
            from safetensors import safe_open

            check_single_file(path)

            with safe_open(str(path), framework="pt") as f:  # reads the header only
                return SDXL if any(k.startswith("conditioner.embedders.") for k in f.keys()) else "sd"
        return "sd"
    if path.is_dir():
        index = path / "model_index.json"
        return _family_of_index(json.loads(index.read_text())) if index.is_file() else "sd"
    if not _HUB_ID.match(model):
        return "sd"
    try:
        from diffusers import DiffusionPipeline

        return _family_of_index(DiffusionPipeline.load_config(model))
    except Exception:  # unreachable hub: the load below reports it
        return "sd"


def _family_of_index(index: dict) -> str:
    if index.get("_class_name", "").startswith("KandinskyV22"):  # export/kandinsky.py loads these
        return KANDINSKY22
    return SDXL if "XL" in index.get("_class_name", "") or "text_encoder_2" in index else "sd"


def check_supported(pipe, family: str) -> None:
    unet = pipe.unet.config
    if unet.in_channels not in (4, 9):
        raise CheckpointError(f"the UNet has {unet.in_channels} input channels; inpaintrt exports 9 (inpainting) or 4")
    if getattr(unet, "time_cond_proj_dim", None):
        raise CheckpointError("this UNet takes a guidance embedding (LCM-distilled); inpaintrt does not export those")
    added = getattr(unet, "addition_embed_type", None)
    if family == SDXL and added != "text_time":
        raise CheckpointError(f"the SDXL pipeline's UNet has addition_embed_type={added!r}, not 'text_time'")
    if family == "sd" and added:
        raise CheckpointError(f"this UNet takes extra conditioning ({added}) that SD 1.x/2.x pipelines do not give")
