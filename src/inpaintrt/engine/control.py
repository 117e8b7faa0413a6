"""Engine.inpaint's ControlNet arguments: checks, control image preprocessing, the per-step residuals.

Semantics of diffusers' StableDiffusionControlNetInpaintPipeline and, for SDXL engines,
StableDiffusionXLControlNetInpaintPipeline (0.42; they differ only in the default scale and in SDXL's
ControlNets also taking the UNet's text_embeds and time_ids, halved alike in guess mode):
- control images are preprocessed like its `control_image_processor`, not like the init image: PIL
  pictures are cropped (padding_mask_crop), resized with Lanczos (diffusers' "fill" mode with a crop),
  converted to RGB and scaled to [0, 1] — not to [-1, 1]; float arrays (H x W x C, or C x H x W /
  1 x C x H x W as torch tensors and `make_inpaint_condition` give them) are taken as they are and
  resized with nearest-neighbour interpolation;
- `controlnet_conditioning_scale` (one number, or one per ControlNet), `control_guidance_start/end`
  (fractions of the steps that run, one number or one per ControlNet), `guess_mode`.
Beyond diffusers: an inpaint-style ControlNet (control_v11p_sd15_inpaint) given no control image gets
`make_inpaint_condition(image, mask)`'s picture — the image in [0, 1] with the repainted pixels at -1 —
built from the same resized image and mask the UNet sees. A plain ControlNet given no image does not
run (its residuals are zeros), nor does one whose scale is 0.
"""
from __future__ import annotations

import numbers

import numpy as np
from PIL import Image

from ..runtime import images as imaging
from ..runtime.control import ControlResiduals, ControlUnit
from ..runtime.errors import InvalidArgument
from . import arguments as check
from .families import family

# the text feeds a ControlNet takes beside its sample: SD's hidden states, SDXL's added conditions too
TEXT_FEEDS = ("encoder_hidden_states", "text_embeds", "time_ids")
REEXPORT = "re-export it with `inpaint-export --model <checkpoint> --controlnet <ControlNet> --output <dir>`"


class ControlNets:
    """The engine's ControlNets (manifest `controlnets`); empty for engines exported without one."""

    def __init__(self, manifest: dict, sessions: dict):
        self.entries = manifest.get("controlnets", [])
        self.layout = manifest.get("controlnet_residuals", [])
        self.sessions = sessions
        self.default_scale = family(manifest["model"]["family"]).controlnet_scale

    def __len__(self) -> int:
        return len(self.entries)

    def describe(self) -> str:
        return ", ".join(f"{e['component']} ({e['kind']}, {e['source']})" for e in self.entries)

    def prepare(self, control_image, scale, start, end, guess_mode, *, picture, pixels, mask_pixels, crop,
                height: int, width: int, batch: int, cond: dict, uncond: dict | None,
                max_pixels: int = imaging.MAX_PIXELS) -> ControlResiduals | None:
        """The per-step callable for denoise's Request.control, or None for an engine without ControlNets.

        picture: the input picture (None when the image came as latents); pixels / mask_pixels: the
        (1, 3, H, W) image in [-1, 1] and (1, 1, H, W) 0/1 mask the UNet works on; batch: images made;
        cond / uncond: the UNet's text conditioning (uncond None without classifier-free guidance);
        scale None: the family's default."""
        n = len(self.entries)
        scale = self.default_scale if scale is None else scale
        if not n:
            _refuse_without_controlnet(control_image, scale, start, end, guess_mode, self.default_scale)
            return None
        images = _per_controlnet(control_image, n)
        scales = _scales(scale, n)
        starts, ends = _window(start, end, n)
        # diffusers reads the first ControlNet's global_pool_conditions
        guess = check.flag(guess_mode, "guess_mode") or self.entries[0]["global_pool_conditions"]
        guided = uncond is not None
        rows = batch * (2 if guided and not guess else 1)
        units = []
        for i, (entry, value) in enumerate(zip(self.entries, images)):
            name = "control_image" if n == 1 else f"control_image[{i}]"
            if value is None and entry["kind"] == "inpaint":
                if picture is None:
                    raise InvalidArgument("control_image", f"{name}: the image came as latents, so the inpaint "
                                          "ControlNet's condition (the picture with the masked pixels at -1) cannot "
                                          "be made; pass control_image", "pass control_image")
                value = _inpaint_condition(pixels, mask_pixels)
            elif value is None:
                continue  # a plain ControlNet without a picture to follow does not run
            else:
                value = control_pixels(value, name, entry["conditioning_channels"], height, width, crop,
                                       imaging.picture_size(picture) if picture is not None else None, max_pixels)
            if scales[i] == 0:
                continue
            session = self.sessions[entry["component"]]
            units.append(ControlUnit(session.run, np.repeat(value, rows, axis=0), scales[i], starts[i], ends[i],
                                     entry["global_pool_conditions"]))
        text = {name: cond[name] if not guided else np.concatenate([uncond[name], cond[name]])
                for name in TEXT_FEEDS if name in cond}
        return ControlResiduals(units, self.layout, text, guided, guess)


def _refuse_without_controlnet(control_image, scale, start, end, guess_mode, default_scale) -> None:
    """Only defaults may reach an engine without ControlNets (a caller that always passes them is fine)."""
    given = [name for name, value, default in (
        ("control_image", control_image, None), ("controlnet_conditioning_scale", scale, default_scale),
        ("control_guidance_start", start, 0.0), ("control_guidance_end", end, 1.0), ("guess_mode", guess_mode, False),
    ) if not (value is default or (default is not None and isinstance(value, numbers.Real) and value == default))]
    if given:
        raise InvalidArgument(given[0], f"{', '.join(given)} given, but this engine was exported without a "
                              f"ControlNet; leave them out, or {REEXPORT}", f"leave them out, or {REEXPORT}")


def _per_controlnet(control_image, n: int) -> list:
    if isinstance(control_image, (list, tuple)):
        if len(control_image) != n:
            raise InvalidArgument("control_image", f"control_image has {len(control_image)} entries but this engine "
                                  f"has {n} ControlNet{'s' if n > 1 else ''}; pass one per ControlNet, in export "
                                  "order (None for an inpaint ControlNet to get the masked picture, or for a "
                                  "ControlNet to leave off)", f"pass {n} control image{'s' if n > 1 else ''}, one "
                                  "per ControlNet in export order")
        return list(control_image)
    if n > 1 and control_image is not None:
        raise InvalidArgument("control_image", f"this engine has {n} ControlNets; pass control_image as a list of "
                              f"{n} pictures, one per ControlNet in export order (None where none is wanted)",
                              f"pass {n} control images, one per ControlNet in export order")
    return [control_image] * n


def _number(value, name: str) -> float:
    return check.real(value, name)


def _scales(scale, n: int) -> list[float]:
    if isinstance(scale, (list, tuple)):
        if len(scale) != n:
            raise InvalidArgument("controlnet_conditioning_scale", f"controlnet_conditioning_scale has {len(scale)} "
                                  f"entries but this engine has {n} ControlNet{'s' if n > 1 else ''}; give one "
                                  "number, or one per ControlNet", f"pass one number, or {n} (one per ControlNet)")
        return [_number(s, "controlnet_conditioning_scale") for s in scale]
    return [_number(scale, "controlnet_conditioning_scale")] * n


def _window(start, end, n: int) -> tuple[list[float], list[float]]:
    """diffusers' alignment: a number next to a list is repeated to the list's length."""
    if not isinstance(start, (list, tuple)) and isinstance(end, (list, tuple)):
        start = [start] * len(end)
    elif not isinstance(end, (list, tuple)) and isinstance(start, (list, tuple)):
        end = [end] * len(start)
    elif not isinstance(start, (list, tuple)):
        start, end = [start] * n, [end] * n
    if len(start) != len(end) or len(start) != n:
        field = "control_guidance_start" if len(start) != n else "control_guidance_end"
        raise InvalidArgument(field, f"control_guidance_start has {len(start)} entries and control_guidance_end "
                              f"{len(end)}; this engine has {n} ControlNet{'s' if n > 1 else ''}: give numbers, or "
                              "one per ControlNet", f"pass one number, or {n} (one per ControlNet)")
    starts = [_number(s, "control_guidance_start") for s in start]
    ends = [_number(e, "control_guidance_end") for e in end]
    for s, e in zip(starts, ends):
        if not 0 <= s < e <= 1:
            field = "control_guidance_end" if 0 <= s < 1 and not 0 < e <= 1 else "control_guidance_start"
            raise InvalidArgument(field, f"control_guidance_start={s} and control_guidance_end={e} must satisfy "
                                  "0 <= start < end <= 1 (the fractions of the steps during which the ControlNet "
                                  "steers)", "pass 0 <= control_guidance_start < control_guidance_end <= 1")
    return starts, ends


def _inpaint_condition(pixels: np.ndarray, mask_pixels: np.ndarray) -> np.ndarray:
    """make_inpaint_condition: the picture in [0, 1], -1 where the mask repaints."""
    return np.where(mask_pixels >= 0.5, np.float32(-1), (pixels + 1) / 2).astype(np.float32)


def control_pixels(value, name: str, channels: int, height: int, width: int, crop, image_size,
                   max_pixels: int) -> np.ndarray:
    """(1, channels, height, width) float32 as diffusers' control_image_processor makes it."""
    if not isinstance(value, np.ndarray) and hasattr(value, "__array__") and hasattr(value, "shape"):
        value = _channels_last(np.asarray(value), name)  # a CPU torch tensor: (C, H, W) or (1, C, H, W)
    elif isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating):
        value = _float_layout(value, name, channels)
    if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating) and value.ndim == 3:
        pixels = value
    else:
        pixels = imaging.load_picture(value, name, max_pixels)
    size = imaging.picture_size(pixels)
    allowed = {(width, height)} | ({tuple(image_size)} if image_size else set())
    if size not in allowed:
        raise InvalidArgument("control_image", f"{name} is {size[0]}x{size[1]} (width x height); pass it at the "
                              "image's size" + (f" ({image_size[0]}x{image_size[1]})" if image_size else "")
                              + f" or at the output size ({width}x{height}), so that it lines up with the picture",
                              "pass the control image at the image's size")
    if isinstance(pixels, Image.Image):
        if channels != 3:
            raise InvalidArgument("control_image", f"{name}: this ControlNet takes {channels}-channel conditions; "
                                  "pass a float array", f"pass a float array of {channels} channels")
        rgb = imaging._float_pixels(pixels, height, width, "RGB", crop)  # crop, Lanczos, then RGB: diffusers' order
        return rgb.transpose(2, 0, 1)[None].astype(np.float32)
    if crop is not None:
        raise InvalidArgument("control_image", f"{name}: padding_mask_crop needs PIL or uint8 control images "
                              "(diffusers crops only those)", "pass PIL or uint8 control images, or no padding_mask_crop")
    if pixels.shape[2] != channels:
        raise InvalidArgument("control_image", f"{name} has {pixels.shape[2]} channels; this ControlNet takes "
                              f"{channels}", f"pass {channels}-channel control images")
    if not np.isfinite(pixels).all():
        raise InvalidArgument("control_image", f"{name} contains NaN or infinite values", "pass finite values")
    return imaging.nearest_resize(pixels.transpose(2, 0, 1), height, width)[None].astype(np.float32)


def _channels_last(array: np.ndarray, name: str) -> np.ndarray:
    if array.ndim == 4:
        if array.shape[0] != 1:
            raise InvalidArgument("control_image", f"{name} holds {array.shape[0]} pictures; pass one control "
                                  "image per ControlNet", "pass one control image per ControlNet")
        array = array[0]
    if array.ndim != 3:
        raise InvalidArgument("control_image", f"{name} has shape {array.shape}; pass (C, H, W) or (1, C, H, W)",
                              "pass (C, H, W) or (1, C, H, W)")
    return np.ascontiguousarray(array.transpose(1, 2, 0)).astype(np.float32)


def _float_layout(array: np.ndarray, name: str, channels: int) -> np.ndarray:
    """H x W x C as diffusers reads numpy arrays; also C x H x W and 1 x C x H x W (make_inpaint_condition's)."""
    if array.ndim == 4:
        if array.shape[0] != 1:
            raise InvalidArgument("control_image", f"{name} holds {array.shape[0]} pictures; pass one control "
                                  "image per ControlNet", "pass one control image per ControlNet")
        array = array[0]
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise InvalidArgument("control_image", f"{name} has shape {array.shape}; pass H x W x C (or C x H x W) "
                              "floats", "pass H x W x C (or C x H x W) floats")
    if array.shape[2] != channels and array.shape[0] == channels:
        array = array.transpose(1, 2, 0)
    return array.astype(np.float32)
