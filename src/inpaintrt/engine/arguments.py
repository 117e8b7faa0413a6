"""Checks of the engines' arguments: each failure is an InvalidArgument (a ValueError) that names the
parameter, says what was wrong and carries the fix (docs/architecture.md, "Errors").

One helper per kind of value (whole number, real number, choice, flag); `from_table` checks one argument
against its line in the argument table (argument_specs.py), so each range is written once.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from ..runtime.errors import InvalidArgument
from .argument_specs import MASK_MODES, SPECS, Spec


def is_whole(value) -> bool:
    """An integer of any integer type, but not a bool (True is not 1 pixel)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def whole(value, name: str, low: int | None = None, high: int | None = None, unit: str = "", meaning: str = "") -> int:
    """A whole number (not a bool) from low to high, both included."""
    if not is_whole(value) or (low is not None and value < low) or (high is not None and value > high):
        _refuse(value, Spec(name, "whole", None, low, high, unit=unit, meaning=meaning))
    return int(value)


def real(value, name: str, low: float | None = None, high: float | None = None, low_open: bool = False,
         high_open: bool = False, unit: str = "", meaning: str = "") -> float:
    """A finite real number (not a bool) in the range; an open end is itself refused."""
    fits = (not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
            and (low is None or (value > low if low_open else value >= low))
            and (high is None or (value < high if high_open else value <= high)))
    if not fits:
        _refuse(value, Spec(name, "real", None, low, high, low_open, high_open, unit=unit, meaning=meaning))
    return float(value)


def _refuse(value, spec: Spec):
    wanted = spec.wanted()
    raise InvalidArgument(spec.name, f"{spec.name}={value!r} must be {wanted}"
                          + (f" ({spec.meaning})" if spec.meaning else ""), f"use {wanted}")


def choice(value, name: str, choices, meaning: str = ""):
    """One of the named choices."""
    if not isinstance(value, str) or value not in choices:
        listed = ", ".join(choices)
        raise InvalidArgument(name, f"{name}={value!r} is unknown; choose one of {listed}"
                              + (f" ({meaning})" if meaning else ""), f"use one of {listed}")
    return value


def flag(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidArgument(name, f"{name}={value!r} must be True or False", "use True or False")
    return bool(value)


def from_table(name: str, given, spec: Spec | None = None):
    """`given` checked against its line of the argument table (None passes where the default is None)."""
    spec = spec or SPECS[name]
    if given is None and spec.default is None:
        return None
    if spec.kind == "whole":
        return whole(given, name, spec.low, spec.high, spec.unit, spec.meaning)
    if spec.kind == "real":
        return real(given, name, spec.low, spec.high, spec.low_open, spec.high_open, spec.unit, spec.meaning)
    if spec.kind == "choice":
        return choice(given, name, spec.choices, spec.meaning)
    if spec.kind == "flag":
        return flag(given, name)
    return given


def eraser_loaded(masked_content: str, eraser) -> None:
    if masked_content == "eraser" and eraser is None:
        fix = ("load the engine with eraser=ERASER_DIR (inpaint / inpaint-serve: --eraser DIR), or choose another "
               "masked_content")
        raise InvalidArgument("masked_content", "masked_content='eraser' fills the mask with an eraser engine, and "
                              f"none was loaded with this one; {fix}", fix)


def refuse_needing(given: dict, record) -> dict:
    """Refuse by name the table's arguments that need what this family lacks (a prior's on Stable Diffusion, an
    eraser's on a diffusion engine) unless left at their defaults; returns the rest of `given`."""
    from .families import families_with

    foreign = {name for name in given if name in SPECS and SPECS[name].needs and not getattr(record, SPECS[name].needs)}
    named = sorted(name for name in foreign if not is_default(given[name], SPECS[name].default))
    if named:
        them = "it" if len(named) == 1 else "them"
        raise InvalidArgument(named[0], f"{', '.join(named)} {'is' if len(named) == 1 else 'are'} for "
                              f"{', '.join(families_with(SPECS[named[0]].needs))} engines; this engine is "
                              f"{record.name}: leave {them} out", f"leave {them} out")
    return {name: value for name, value in given.items() if name not in foreign}


def refuse_diffusion(given: dict, record) -> None:
    """An eraser's refusal of diffusion arguments, by name unless left at their defaults (a caller may pass a full
    set, as the server and the command line do); names no engine takes as Python would."""
    unknown = sorted(name for name in given if name not in SPECS)
    if unknown:
        raise TypeError(f"inpaint() got an unexpected keyword argument {unknown[0]!r}")
    named = sorted(name for name, value in given.items()
                   if value is not None and not is_default(value, SPECS[name].default))
    if named:
        them = "it" if len(named) == 1 else "them"
        raise InvalidArgument(named[0], f"{', '.join(named)} {'is an argument' if len(named) == 1 else 'are arguments'} "
                              f"of diffusion engines; this engine is an eraser ({record.title}): it takes no prompt or "
                              f"sampling settings, leave {them} out", f"leave {them} out")


def is_default(value, default) -> bool:
    try:
        return value is default or bool(value == default)
    except (ValueError, TypeError):  # arrays
        return False


def check_numbers(strength, guidance_scale, output_type, blur_factor, padding_mask_crop) -> None:
    for name, given in (("strength", strength), ("guidance_scale", guidance_scale), ("output_type", output_type),
                        ("blur_factor", blur_factor), ("padding_mask_crop", padding_mask_crop)):
        from_table(name, given)


def mask_options(mask_mode, masked_content, mask_grow, mask_shrink, mask_invert) -> None:
    """The mask arguments beyond diffusers'."""
    choice(mask_mode, "mask_mode", MASK_MODES, "binary: diffusers', the mask is cut at 0.5; soft: grey levels say how "
                                              "much each pixel changes")
    from_table("masked_content", masked_content)
    from_table("mask_grow", mask_grow)
    from_table("mask_shrink", mask_shrink)
    if mask_grow and mask_shrink:
        raise InvalidArgument("mask_shrink", f"mask_grow={mask_grow} and mask_shrink={mask_shrink} were both given; "
                              "pass one of them (grow widens the white part, shrink narrows it)",
                              "pass one of mask_grow and mask_shrink")
    from_table("mask_invert", mask_invert)


def check_size(height, width, factor: int, why: str = "", limit: int | None = None,
               whose: str = "one call generates") -> tuple[int, int]:
    """height and width: positive multiples of factor (`why` says for whom), within `limit` pixels
    (default MAX_OUTPUT_PIXELS; `whose` limit it is, in the message)."""
    for name, value in (("height", height), ("width", width)):
        if not is_whole(value) or value <= 0 or value % factor:
            hint = max(factor, round(value / factor) * factor) if isinstance(value, numbers.Real) and value == value else 512
            raise InvalidArgument(name, f"{name}={value!r} must be a positive multiple of {factor}, e.g. {hint}{why}",
                                  f"use a positive multiple of {factor}, e.g. {hint}")
    output_size(height, width, MAX_OUTPUT_PIXELS if limit is None else limit, whose)
    return int(height), int(width)


# Largest height x width one call generates: 4x SDXL's native 1024x1024. The UNet's memory grows with
# the square of the latent pixels at its attention layers, so a far larger output is refused up front
# rather than dying in the runtime's allocator (a 128 x 100000 call asked for a 12.8 M pixel canvas).
MAX_OUTPUT_PIXELS = 2048 * 2048


def output_size(height: int, width: int, limit: int = MAX_OUTPUT_PIXELS, whose: str = "one call generates") -> None:
    """height x width against `limit` (the server passes its own); the error names the larger side."""
    if height * width > limit:
        name, value = ("width", width) if width > height else ("height", height)
        other = height if name == "width" else width
        fits = max(8, limit // other // 8 * 8)
        fix = f"lower {name} (at most {fits} here), or inpaint a crop (padding_mask_crop) or outpaint in passes"
        raise InvalidArgument(name, f"{name}={value} with {'height' if name == 'width' else 'width'}={other} is "
                              f"{width}x{height} = {width * height} pixels, more than the {limit} {whose}; {fix}", fix)


def prompts(prompt, name: str) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    raise InvalidArgument(name, f"{name} must be a string or a non-empty list of strings, got {type(prompt).__name__}",
                          f"pass {name} as a string or a list of strings")


def negatives(negative_prompt, count: int) -> list[str]:
    if negative_prompt is None:
        return [""] * count
    found = prompts(negative_prompt, "negative_prompt")
    if len(found) == 1:
        return found * count
    if len(found) != count:
        raise InvalidArgument("negative_prompt", f"negative_prompt has {len(found)} entries but prompt has {count}; "
                              f"give one or {count}", f"give one negative prompt or {count}")
    return found


def finite(value: np.ndarray, name: str) -> None:
    if not np.isfinite(value).all():
        raise InvalidArgument(name, f"{name} contains NaN or infinite values", f"pass finite values in {name}")


def _float_array(value, name: str, want: str) -> np.ndarray:
    """value as a float numpy array (a CPU torch tensor, e.g. from Compel, converts), else an error saying `want`."""
    value = np.asarray(value) if not isinstance(value, np.ndarray) and hasattr(value, "__array__") else value
    if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.floating):
        got = f"{type(value).__name__}" + (f" of dtype {value.dtype}" if isinstance(value, np.ndarray) else "")
        raise InvalidArgument(name, f"{name} must be a float array of shape {want}, got {got}",
                              f"pass {name} as float32 of shape {want}")
    return value


def embeddings(value, name: str, seq: int, hidden: int, batch: int | None = None) -> np.ndarray:
    """prompt_embeds-like input: float (B, seq x chunks, hidden), finite (long prompts give several chunks)."""
    want = f"({batch if batch is not None else 'batch'}, {seq}, {hidden})"
    value = _float_array(value, name, want)
    if (value.ndim != 3 or value.shape[2] != hidden or not value.shape[1] or value.shape[1] % seq
            or (batch is not None and value.shape[0] != batch)):
        raise InvalidArgument(name, f"{name} has shape {value.shape}; this engine's text encoder gives {want} (long "
                              f"prompts: a multiple of {seq} tokens)", f"pass {name} of shape {want}")
    finite(value, name)
    return value.astype(np.float32)


def pooled(value, name: str, width: int, batch: int) -> np.ndarray:
    """pooled_prompt_embeds-like input: float (batch, width), finite."""
    want = f"({batch}, {width}) (one pooled embedding per prompt embedding)"
    value = _float_array(value, name, want)
    if value.shape != (batch, width):
        raise InvalidArgument(name, f"{name} must be a float array of shape {want}, got shape {value.shape}",
                              f"pass {name} of shape ({batch}, {width})")
    finite(value, name)
    return value.astype(np.float32)


def size_pair(value, name: str) -> tuple[int, int] | None:
    """SDXL's (height, width)-like micro-conditioning tuples: two non-negative integers."""
    if value is None:
        return None
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or any(not is_whole(v) or v < 0 for v in value)):
        raise InvalidArgument(name, f"{name}={value!r} must be two non-negative integers, e.g. (1024, 1024)",
                              "use two non-negative integers, e.g. (1024, 1024)")
    return int(value[0]), int(value[1])


def latents(value, name: str, expected: tuple) -> np.ndarray:
    value = np.asarray(value)
    if value.shape != expected:
        raise InvalidArgument(name, f"{name} has shape {value.shape}; for this call it must be {expected}",
                              f"pass {name} of shape {expected}")
    if not np.issubdtype(value.dtype, np.floating) or not np.isfinite(value).all():
        raise InvalidArgument(name, f"{name} must be finite floats", f"pass {name} as finite float32")
    return value.astype(np.float32)


def latent_image(image, channels: int) -> np.ndarray | None:
    """The image given as latents ((1, C, h, w) or (C, h, w) floats), or None for a picture."""
    if not isinstance(image, np.ndarray) or not np.issubdtype(image.dtype, np.floating):
        return None
    if image.ndim == 4 and image.shape[:2] == (1, channels):
        return image
    if image.ndim == 3 and image.shape[0] == channels and image.shape[2] not in (1, 3, 4):
        return image[None]
    return None


def schedule_window(denoising_start, denoising_end, masked_content) -> tuple[float | None, float | None]:
    """denoising_start / denoising_end as fractions, in order; a continued call keeps its latents."""
    start, end = from_table("denoising_start", denoising_start), from_table("denoising_end", denoising_end)
    if start is not None and end is not None and start >= end:
        raise InvalidArgument("denoising_end", f"denoising_start={start} must be below denoising_end={end}: the first "
                              "is where this call begins in the schedule, the second where it stops",
                              "use a denoising_end above denoising_start")
    if masked_content != "original" and start is not None:
        raise InvalidArgument("masked_content", f"masked_content={masked_content!r} sets what a call starts from; with "
                              "denoising_start the call continues the given latents: leave masked_content out",
                              "leave masked_content out with denoising_start")
    return start, end


def pasting(output_type, keep_unmasked, padding_mask_crop, color_match=False) -> None:
    """keep_unmasked and padding_mask_crop paste pixels, which latents do not have; color_match acts on a paste."""
    if output_type == "latent" and (keep_unmasked or padding_mask_crop is not None):
        raise InvalidArgument("output_type", "keep_unmasked and padding_mask_crop paste pixels; use output_type 'pil' "
                              "or 'np'", "use output_type 'pil' or 'np', or leave keep_unmasked and padding_mask_crop out")
    if from_table("color_match", color_match) and not keep_unmasked and padding_mask_crop is None:
        raise InvalidArgument("color_match", "color_match=True matches colours where the result is pasted over the "
                              "input, and this call pastes nothing", "add keep_unmasked=True (or padding_mask_crop)")


def latent_input(keep_unmasked, padding_mask_crop, keep_input_size, masked_content) -> None:
    """What a call whose image came as latents cannot do."""
    given = [name for name, on in (("keep_unmasked", keep_unmasked), ("padding_mask_crop", padding_mask_crop is not None),
                                   ("keep_input_size", keep_input_size)) if on]
    if given:
        raise InvalidArgument(given[0], "image is latents: keep_unmasked, padding_mask_crop and keep_input_size need a "
                              "picture", f"pass a picture as image, or leave {', '.join(given)} out")
    if masked_content in ("fill", "eraser"):
        raise InvalidArgument("masked_content", f"masked_content={masked_content!r} paints pixels; pass a picture, or use "
                              "'latent_noise' / 'latent_nothing' with image latents",
                              "use masked_content 'latent_noise' or 'latent_nothing' with image latents")


def same_size(picture_size: tuple[int, int], mask_size: tuple[int, int]) -> None:
    if picture_size != mask_size:
        raise InvalidArgument("mask_image", f"image is {picture_size} (width, height) but mask_image is {mask_size}; "
                              "pass a mask of the same size as the image", "pass a mask of the same size as the image")


def something_to_repaint(mask_pixels: np.ndarray) -> None:
    if not mask_pixels.any():
        raise InvalidArgument("mask_image", "mask_image is all black (below 0.5 everywhere), so there is nothing to "
                              "repaint; paint white where the picture should change",
                              "paint white where the picture should change")
