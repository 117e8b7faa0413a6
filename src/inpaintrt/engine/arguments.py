"""Checks of Engine.inpaint's arguments: each failure is a ValueError naming the parameter and the fix."""
from __future__ import annotations

import math
import numbers

import numpy as np

OUTPUT_TYPES = ("pil", "np", "latent")
MASK_MODES = ("binary", "soft")
MASKED_CONTENTS = ("original", "fill", "latent_noise", "latent_nothing")


def integer(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
    return int(value)


def check_numbers(strength, guidance_scale, output_type, blur_factor, padding_mask_crop) -> None:
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0 < strength <= 1:
        raise ValueError(f"strength={strength!r} must be in (0, 1]: 1 repaints fully, smaller keeps more of the image")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, numbers.Real) or not math.isfinite(guidance_scale):
        raise ValueError(f"guidance_scale={guidance_scale!r} must be a finite number (<= 1 turns guidance off)")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type={output_type!r} is unknown; choose one of {', '.join(OUTPUT_TYPES)}")
    if isinstance(blur_factor, bool) or not isinstance(blur_factor, numbers.Real) or not 0 <= blur_factor < 1e4:
        raise ValueError(f"blur_factor={blur_factor!r} must be a blur radius in pixels >= 0 (0 = no blur)")
    if padding_mask_crop is not None:
        integer(padding_mask_crop, "padding_mask_crop", 0)


def mask_options(mask_mode, masked_content, mask_grow, mask_shrink, mask_invert) -> None:
    """The mask arguments beyond diffusers'."""
    if mask_mode not in MASK_MODES:
        raise ValueError(f"mask_mode={mask_mode!r} is unknown; choose 'binary' (diffusers': the mask is cut at 0.5) "
                         "or 'soft' (grey levels say how much each pixel changes)")
    if masked_content not in MASKED_CONTENTS:
        raise ValueError(f"masked_content={masked_content!r} is unknown; choose one of {', '.join(MASKED_CONTENTS)}")
    for name, value in (("mask_grow", mask_grow), ("mask_shrink", mask_shrink)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value <= 4096:
            raise ValueError(f"{name}={value!r} must be a whole number of pixels from 0 to 4096 (0 = unchanged)")
    if mask_grow and mask_shrink:
        raise ValueError(f"mask_grow={mask_grow} and mask_shrink={mask_shrink} were both given; pass one of them "
                         "(grow widens the white part, shrink narrows it)")
    if not isinstance(mask_invert, (bool, np.bool_)):
        raise ValueError(f"mask_invert={mask_invert!r} must be True or False")


def check_size(height, width, factor: int) -> tuple[int, int]:
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0 or value % factor:
            hint = max(factor, round(value / factor) * factor) if isinstance(value, numbers.Real) and value == value else 512
            raise ValueError(f"{name}={value!r} must be a positive multiple of {factor}, e.g. {hint}")
    output_size(height, width)
    return int(height), int(width)


# Largest height x width one call generates: 4x SDXL's native 1024x1024. The UNet's memory grows with
# the square of the latent pixels at its attention layers, so a far larger output is refused up front
# rather than dying in the runtime's allocator (a 128 x 100000 call asked for a 12.8 M pixel canvas).
MAX_OUTPUT_PIXELS = 2048 * 2048


def output_size(height: int, width: int, limit: int = MAX_OUTPUT_PIXELS, whose: str = "one call generates") -> None:
    """height x width against `limit` (the server passes its own); the message names the larger side."""
    if height * width > limit:
        name, value = ("width", width) if width > height else ("height", height)
        other = height if name == "width" else width
        fits = max(8, limit // other // 8 * 8)
        raise ValueError(f"{name}={value} with {'height' if name == 'width' else 'width'}={other} is "
                         f"{width}x{height} = {width * height} pixels, more than the {limit} {whose}; "
                         f"lower {name} (at most {fits} here), or inpaint a crop (padding_mask_crop) or outpaint "
                         "in passes")


def prompts(prompt, name: str) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    raise ValueError(f"{name} must be a string or a non-empty list of strings, got {type(prompt).__name__}")


def negatives(negative_prompt, count: int) -> list[str]:
    if negative_prompt is None:
        return [""] * count
    found = prompts(negative_prompt, "negative_prompt")
    if len(found) == 1:
        return found * count
    if len(found) != count:
        raise ValueError(f"negative_prompt has {len(found)} entries but prompt has {count}; give one or {count}")
    return found


def embeddings(value, name: str, seq: int, hidden: int, batch: int | None = None) -> np.ndarray:
    """prompt_embeds-like input: float (B, seq x chunks, hidden), finite (long prompts give several chunks)."""
    if not isinstance(value, np.ndarray) and hasattr(value, "__array__"):
        value = np.asarray(value)  # e.g. a CPU torch tensor from Compel
    if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.floating):
        raise ValueError(f"{name} must be a float array of shape (batch, {seq}, {hidden}), got {type(value).__name__}"
                         + (f" of dtype {value.dtype}" if isinstance(value, np.ndarray) else ""))
    if (value.ndim != 3 or value.shape[2] != hidden or not value.shape[1] or value.shape[1] % seq
            or (batch is not None and value.shape[0] != batch)):
        want = f"({batch if batch is not None else 'batch'}, {seq}, {hidden})"
        raise ValueError(f"{name} has shape {value.shape}; this engine's text encoder gives {want} (long prompts: "
                         f"a multiple of {seq} tokens)")
    if not np.isfinite(value).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return value.astype(np.float32)


def pooled(value, name: str, width: int, batch: int) -> np.ndarray:
    """pooled_prompt_embeds-like input: float (batch, width), finite."""
    value = np.asarray(value) if hasattr(value, "__array__") else value
    if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.floating) or value.shape != (batch, width):
        got = f"shape {value.shape} of dtype {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__
        raise ValueError(f"{name} must be a float array of shape ({batch}, {width}) (one pooled embedding per "
                         f"prompt embedding), got {got}")
    if not np.isfinite(value).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return value.astype(np.float32)


def size_pair(value, name: str) -> tuple[int, int] | None:
    """SDXL's (height, width)-like micro-conditioning tuples: two non-negative integers."""
    if value is None:
        return None
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0 for v in value)):
        raise ValueError(f"{name}={value!r} must be two non-negative integers, e.g. (1024, 1024)")
    return int(value[0]), int(value[1])


def fraction(value, name: str) -> float | None:
    """denoising_start / denoising_end: a fraction of the schedule strictly between 0 and 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1:
        raise ValueError(f"{name}={value!r} must be a number strictly between 0 and 1 (the fraction of the "
                         "schedule), e.g. 0.8")
    return float(value)


def latents(value, name: str, expected: tuple) -> np.ndarray:
    value = np.asarray(value)
    if value.shape != expected:
        raise ValueError(f"{name} has shape {value.shape}; for this call it must be {expected}")
    if not np.issubdtype(value.dtype, np.floating) or not np.isfinite(value).all():
        raise ValueError(f"{name} must be finite floats")
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
