"""Outpainting: grow the canvas, pre-fill the new area, inpaint it in passes.

1. The canvas is the picture with `left`/`right`/`top`/`bottom` pixels added; the new area is
   pre-filled ("edge": the border pixels stretched outwards, then blurred; "mirror"; "noise").
2. Windows of at most the model's size (or height x width) cover the canvas, starting on the
   original and moving outwards; every new window keeps at least half of itself on pixels that
   already exist, so each pass is conditioned on what the earlier ones made.
3. Each window is inpainted with a mask that is white on the new pixels in it and fades to black
   over `overlap` pixels into the existing ones, and pasted back through that mask
   (`keep_unmasked`): existing pixels farther than `overlap` from new ones keep their bytes.
"""
from __future__ import annotations


import numpy as np
from PIL import Image, ImageFilter

from ..runtime import images as imaging
from ..runtime.masking import max_filter
from ..runtime.noise import as_generator, draw
from ..runtime.errors import InvalidArgument
from . import arguments as check
from .argument_specs import SPECS
from .outputs import InpaintOutput

# inpaint arguments outpaint sets itself, or that have no meaning for a canvas it builds (the table's
# not_outpaint column)
NOT_HERE = {"mask_image": "outpaint makes the mask itself from the extensions",
            **{name: spec.not_outpaint for name, spec in SPECS.items() if spec.not_outpaint}}


def outpaint(engine, image, sides: dict, overlap, fill, height, width, generator, output_type, max_pixels, kwargs):
    """The grown picture as InpaintOutput (one image); see Engine.outpaint."""
    check_outpaint_arguments(sides, overlap, fill, output_type, kwargs)
    factor = engine.model["vae_scale_factor"]
    window = check.check_size(engine.model["default_height"] if height is None else height,
                              engine.model["default_width"] if width is None else width, factor)
    if check.latent_image(image, engine.model["latent_channels"]) is not None:
        raise InvalidArgument("image", "image is latents; outpaint needs a picture", "pass a picture as image")
    original = np.asarray(_rgb(image, max_pixels))
    h, w = original.shape[:2]
    size = (h + sides["top"] + sides["bottom"], w + sides["left"] + sides["right"])
    if size[0] * size[1] > max_pixels:
        fix = "extend less or raise max_pixels"
        raise InvalidArgument(max(sides, key=sides.get), f"the grown canvas would be {size[1]}x{size[0]} pixels, more "
                              f"than max_pixels={max_pixels}; {fix}", fix)
    gen = as_generator(generator)
    box = (sides["top"], sides["left"], sides["top"] + h, sides["left"] + w)
    canvas = prefill(original, sides, fill, gen)
    known = np.zeros(size, bool)
    known[box[0]:box[2], box[1]:box[3]] = True
    nsfw = None  # the passes' safety-checker flag, None without a checker
    for y, x, wh, ww in plan(size, box, window):
        unknown = ~known[y:y + wh, x:x + ww]
        if not unknown.any():
            continue
        mask = Image.fromarray(np.round(feather(unknown, overlap) * 255).astype(np.uint8), "L")
        done = engine.inpaint(Image.fromarray(canvas[y:y + wh, x:x + ww]), mask, generator=gen, keep_unmasked=True,
                              height=_model_size(wh, factor), width=_model_size(ww, factor), max_pixels=max_pixels,
                              **kwargs)
        result, nsfw = done.images, done.nsfw_content_detected
        if len(result) != 1:
            raise InvalidArgument("prompt", f"this call would make {len(result)} pictures; outpaint makes one: pass "
                                  "one prompt", "pass one prompt")
        if nsfw and nsfw[0]:  # later passes would continue from its black window: the whole picture is black
            canvas[:] = 0
            break
        canvas[y:y + wh, x:x + ww] = np.asarray(result[0])
        known[y:y + wh, x:x + ww] = True
    if output_type == "np":
        return InpaintOutput(canvas[None].astype(np.float32) / 255.0, nsfw)
    return InpaintOutput([Image.fromarray(canvas)], nsfw)


def check_outpaint_arguments(sides: dict, overlap, fill, output_type, inpaint_arguments: dict) -> None:
    for name, reason in NOT_HERE.items():
        if name in inpaint_arguments:
            raise InvalidArgument(name, f"{name} is not an outpaint argument: {reason}", f"leave {name} out")
    for name, value in sides.items():
        check.from_table(name, value)
    if not any(sides.values()):
        fix = "give the number of pixels to add on at least one side, e.g. right=128"
        raise InvalidArgument("left", f"left, right, top and bottom are all 0: {fix}", fix)
    check.from_table("overlap", overlap)
    check.from_table("fill", fill)
    if output_type not in ("pil", "np"):
        raise InvalidArgument("output_type", f"output_type={output_type!r}: outpaint returns a picture; use 'pil' or "
                              "'np'", "use output_type 'pil' or 'np'")


def _rgb(image, max_pixels: int) -> Image.Image:
    picture = imaging.load_picture(image, "image", max_pixels)
    if not isinstance(picture, Image.Image):  # float array in [0, 1], HxWx1, 3 or 4
        rgb = np.repeat(picture, 3, axis=2) if picture.shape[2] == 1 else picture[..., :3]
        picture = Image.fromarray(np.round(rgb * 255).astype(np.uint8))
    return picture.convert("RGB")


def _model_size(pixels: int, factor: int) -> int:
    """The nearest multiple of factor (a window smaller than the model's size may be any size)."""
    return max(factor, int(round(pixels / factor)) * factor)


def prefill(original: np.ndarray, sides: dict, fill: str, generator) -> np.ndarray:
    """The canvas (H, W, 3) uint8: the original at its place, the new area pre-filled."""
    pad = ((sides["top"], sides["bottom"]), (sides["left"], sides["right"]), (0, 0))
    h, w = original.shape[:2]
    if fill == "mirror":
        canvas = np.pad(original, pad, mode="symmetric")
    elif fill == "noise":  # the picture's own colour statistics, per channel
        mean, std = original.reshape(-1, 3).mean(0), original.reshape(-1, 3).std(0) + 8
        shape = (h + sum(pad[0]), w + sum(pad[1]), 3)
        canvas = np.clip(np.round(mean + std * draw(generator, shape)), 0, 255).astype(np.uint8)
    else:  # edge: streaks of the border pixels, blurred so they become colour fields
        radius = max(4, max(sides.values()) // 8)
        stretched = Image.fromarray(np.pad(original, pad, mode="edge"))
        canvas = np.array(stretched.filter(ImageFilter.GaussianBlur(radius)))
    canvas[pad[0][0]:pad[0][0] + h, pad[1][0]:pad[1][0] + w] = original
    return canvas


def feather(unknown: np.ndarray, overlap: int) -> np.ndarray:
    """1 on the new pixels, then 1 - d / (overlap + 1) at chessboard distance d <= overlap into the
    existing ones, 0 beyond."""
    mask = unknown.astype(np.float32)
    reached = mask
    for d in range(1, overlap + 1):
        grown = max_filter(reached, 1)
        mask = np.where((grown > 0) & (reached == 0), 1 - d / (overlap + 1), mask)
        reached = grown
    return mask


def plan(size: tuple[int, int], box: tuple[int, int, int, int], window: tuple[int, int]):
    """[(y, x, height, width)] of the passes, in the order they run."""
    (height, width), (wh, ww) = size, window
    wh, ww = min(wh, height), min(ww, width)
    rows, cols = _starts(height, box[0], box[2], wh), _starts(width, box[1], box[3], ww)
    order = sorted(((ry + rx, ry, rx, y, x) for y, ry in rows for x, rx in cols))
    return [(y, x, wh, ww) for _, _, _, y, x in order]


def _starts(total: int, lo: int, hi: int, win: int) -> list[tuple[int, int]]:
    """Window starts along one axis with their rank (passes away from the original [lo, hi)): the
    first centred on the original, then outwards, each new one half on what is covered."""
    if total <= win:
        return [(0, 0)]
    keep = max(8, win // 16 * 8)  # half the window, on the 8-pixel grid
    first = min(max((lo + hi - win) // 2, 0), total - win)
    starts, (a, b) = [(first, 0)], (first, first + win)
    rank = 0
    while b < total:
        rank += 1
        start = min(b - keep, total - win)
        starts.append((start, rank))
        b = start + win
    rank = 0
    while a > 0:
        rank += 1
        start = max(a + keep - win, 0)
        starts.append((start, rank))
        a = start
    return starts
