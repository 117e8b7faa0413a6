"""What a call is checked for before any model runs, in one home: the engines run these at the start of
every call, and the server runs `preflight` on a request before it queues the job, so the two cannot
disagree about a mask, a size, a strength or a step count. `batchable` is the one rule for which
requests may share a denoising loop with others.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..runtime import images as imaging
from ..runtime import masking
from ..runtime.inpaint import run_timesteps
from ..runtime.schedulers import make_scheduler
from . import arguments as check
from .argument_specs import ALONE, SPECS
from .families import family
from .manifest import ERASER


def default_strength(strength, family_name: str) -> float:
    """strength as given, or diffusers' default for the family (SDXL's pipeline uses 0.9999)."""
    return family(family_name).strength if strength is None else strength


def generated_size(height, width, picture_size: tuple[int, int] | None, keep_input_size: bool, factor: int,
                   default: tuple[int, int], limit: int = check.MAX_OUTPUT_PIXELS,
                   whose: str = "one call generates") -> tuple[int, int]:
    """(height, width) a call generates: as given, the picture's rounded down to multiples of the VAE's
    factor (keep_input_size), or the model's default; each a positive multiple of factor, within limit."""
    if keep_input_size:
        if height is not None or width is not None:
            raise check.InvalidArgument("keep_input_size", "keep_input_size=True sets height and width from the "
                                        "image; do not pass them too",
                                        "leave height and width out, or keep_input_size False")
        w, h = picture_size
        height, width = max(factor, h // factor * factor), max(factor, w // factor * factor)
    height = default[0] if height is None else height
    width = default[1] if width is None else width
    return check.check_size(height, width, factor, limit=limit, whose=whose)


def prepare_mask(mask, height: int, width: int, mode: str, invert: bool, grow: int, shrink: int, blur: float,
                 padding_mask_crop):
    """(edited mask picture, crop box or None, 0/1 mask (1, 1, H, W), change map or None): diffusers'
    mask preparation after the edits beyond it (invert, grow / shrink, then blur). A mask that leaves
    nothing to repaint is refused here, after every edit, at the size the model sees."""
    mask = masking.edit(mask, invert, grow, shrink, blur)
    crop = masking.crop_region(mask, width, height, padding_mask_crop) if padding_mask_crop is not None else None
    mask_pixels = imaging.preprocess_mask(mask, height, width, crop)
    soft = imaging.preprocess_mask(mask, height, width, crop, soft=True) if mode == "soft" else None
    if soft is None:
        check.something_to_repaint(mask_pixels)
    return mask, crop, mask_pixels, soft


def denoising_calls(scheduler_name: str, scheduler_config: dict, options, steps: int, strength: float) -> int:
    """How many times the loop calls the UNet per picture (fewer with strength < 1, more for second-order
    samplers): what the server's work budget counts."""
    scheduler = make_scheduler(scheduler_name, scheduler_config, options)
    return len(run_timesteps(scheduler, steps, strength)[1])


def batchable(task: str, arguments: dict) -> bool:
    """Whether a call may share its denoising loop with others': an inpaint whose arguments keep no
    per-picture state (the table's `alone` column: ControlNet, image prompts, soft masks) at their defaults."""
    return task == "inpaint" and all(_at_default(arguments.get(name, SPECS[name].default), SPECS[name].default)
                                     for name in ALONE)


def _at_default(value, default) -> bool:
    # pictures and arrays are never a default: compared by identity, never element-wise
    return value is default or (isinstance(value, (bool, int, float, str)) and value == default)


@dataclass(frozen=True)
class Preflight:
    height: int
    width: int
    strength: float
    steps: int  # denoising steps asked for (the family's default when left out)
    calls: int  # UNet calls per picture


def preflight(arguments: dict, facts: dict, max_output_pixels: int = check.MAX_OUTPUT_PIXELS,
              whose: str = "one call generates") -> Preflight:
    """The engine's own checks of an inpaint call, from its keyword arguments (pictures decoded) and the
    engine's facts (engine/facts.py): the size it generates, the mask after every edit, the strength and
    the step count. Raises the InvalidArgument the engine would."""
    if facts.get("kind") == ERASER:  # engine facts say their kind (a test's hand-made facts may not)
        return eraser_preflight(arguments, max_output_pixels, whose)
    picture = arguments.get("image")
    size = imaging.picture_size(picture) if picture is not None else None
    height, width = generated_size(arguments.get("height"), arguments.get("width"), size,
                                   arguments.get("keep_input_size", False), facts["vae_scale_factor"],
                                   (facts["default_height"], facts["default_width"]), max_output_pixels, whose)
    if arguments.get("mask_image") is not None:
        mask = imaging.load_picture(arguments["mask_image"], "mask_image")
        prepare_mask(mask, height, width, arguments.get("mask_mode", "binary"), arguments.get("mask_invert", False),
                     arguments.get("mask_grow", 0), arguments.get("mask_shrink", 0), arguments.get("blur_factor", 0),
                     arguments.get("padding_mask_crop"))
    strength = check.from_table("strength", default_strength(arguments.get("strength"), facts["family"]))
    steps = check.from_table("num_inference_steps", arguments.get("num_inference_steps") or facts["default_steps"])
    calls = denoising_calls(arguments.get("scheduler") or facts["default_scheduler"], facts["scheduler_config"],
                            arguments.get("scheduler_options"), steps, strength)
    return Preflight(height, width, strength, steps, calls)


def eraser_preflight(arguments: dict, max_output_pixels: int = check.MAX_OUTPUT_PIXELS,
                     whose: str = "one call generates") -> Preflight:
    """An eraser's call (engine/eraser.py): its output is the picture's own size, within the limit; its mask
    edits are checked as the engine checks them; one forward pass, so one model call and no strength."""
    width, height = imaging.picture_size(arguments["image"])
    if width * height > max_output_pixels:
        fix = f"send a picture of at most {max_output_pixels} pixels (scale it down, or erase a crop of it)"
        raise check.InvalidArgument("image", f"image is {width}x{height} = {width * height} pixels, more than the "
                                    f"{max_output_pixels} {whose}: an eraser's output is the picture's own size; "
                                    f"{fix}", fix)
    check.mask_options("binary", "original", arguments.get("mask_grow", 0), arguments.get("mask_shrink", 0),
                       arguments.get("mask_invert", False))
    return Preflight(height, width, 1.0, 1, 1)
