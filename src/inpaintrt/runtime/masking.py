"""Mask helpers of diffusers' inpainting guide: blur, the padded crop box, and pasting back.

- `blur`: VaeImageProcessor.blur (a Gaussian blur of the mask, before preprocessing).
- `crop_region`: VaeImageProcessor.get_crop_region (mask bounding box, padded, grown to the
  output's aspect ratio, kept inside the picture).
- `overlay`: VaeImageProcessor.apply_overlay (the result pasted over the original through the
  inverted soft mask, so unmasked pixels come back byte for byte).
- `match_colours` (beyond diffusers): before that paste, the result's colours shifted so that, on a
  band of pixels just outside the mask, their per-channel mean and spread are the original's.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter, ImageOps


def as_pil(picture, mode: str) -> Image.Image:
    """A loaded picture (PIL or float array in [0, 1]) as a PIL image of `mode`."""
    if isinstance(picture, Image.Image):
        return picture
    pixels = (picture * 255).round().astype(np.uint8)
    return Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).convert(mode)


def blur(mask, radius: float) -> Image.Image:
    return as_pil(mask, "L").filter(ImageFilter.GaussianBlur(radius))


def crop_region(mask, width: int, height: int, pad: int) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) of the padded mask box with the output's aspect ratio."""
    values = np.asarray(as_pil(mask, "L").convert("L"))
    h, w = values.shape
    cols, rows = np.flatnonzero(values.any(axis=0)), np.flatnonzero(values.any(axis=1))
    if cols.size == 0:
        raise ValueError("mask_image is all black, so there is nothing to repaint; white marks what to repaint")
    x1, y1 = int(max(cols[0] - pad, 0)), int(max(rows[0] - pad, 0))
    x2, y2 = int(min(cols[-1] + 1 + pad, w)), int(min(rows[-1] + 1 + pad, h))
    if (x2 - x1) / (y2 - y1) > width / height:
        y1, y2 = _grow(y1, y2, int((x2 - x1) / (width / height) - (y2 - y1)), h)
    else:
        x1, x2 = _grow(x1, x2, int((y2 - y1) * (width / height) - (x2 - x1)), w)
    return x1, y1, x2, y2


def _grow(lo: int, hi: int, extra: int, limit: int) -> tuple[int, int]:
    """Widen [lo, hi) by `extra`, split evenly, shifted back inside [0, limit] (diffusers' arithmetic)."""
    lo -= extra // 2
    hi += extra - extra // 2
    if hi >= limit:
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        lo, hi = 0, hi - lo
    return lo, min(hi, limit)


def overlay(mask, original, result: Image.Image, crop=None, color_match: bool = False) -> Image.Image:
    """The result over the original: original pixels where the mask is black, blended where it is soft;
    with color_match, the result's colours matched to the original's around the mask first."""
    original = as_pil(original, "RGB")
    width, height = original.size
    kept = Image.new("RGBa", (width, height))
    kept.paste(original.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(as_pil(mask, "L").convert("L")))
    kept = kept.convert("RGBA")
    if crop is not None:
        x1, y1, x2, y2 = crop
        base = Image.new("RGBA", (width, height))
        base.paste(_resize_and_crop(result, x2 - x1, y2 - y1), (x1, y1))
        result = base.convert("RGB")
    elif result.size != (width, height):
        result = result.resize((width, height), resample=Image.LANCZOS)
    if color_match:
        result = match_colours(result, original, mask, crop)
    result = result.convert("RGBA")
    result.alpha_composite(kept)
    return result.convert("RGB")


# how far outside the mask the colours are compared (pixels): wide enough for stable statistics, near enough
# that the picture there is the one the repaint continues
COLOR_BAND = 16


def match_colours(result: Image.Image, original: Image.Image, mask, box=None) -> Image.Image:
    """The result with each channel moved to the original's mean and standard deviation, both measured on
    the band of COLOR_BAND pixels around the mask (inside `box` where only that part was generated).
    The band is where the model was asked to keep the picture, so any difference there is its colour
    drift (a VAE round trip, a fill of the wrong hue); removing it there removes the seam. Per-channel
    mean and spread in RGB (Reinhard's transfer, without the Lab step): the drift to undo is a shift and
    a scale of each channel, which RGB corrects exactly, and the values stay in the space they are pasted in."""
    repaint = np.asarray(as_pil(mask, "L").convert("L")) >= 128
    band = (max_filter(repaint.astype(np.float32), COLOR_BAND) > 0) & ~repaint
    if box is not None:
        inside = np.zeros_like(band)
        inside[box[1]:box[3], box[0]:box[2]] = True
        band &= inside
    if band.sum() < 16:  # no picture around the mask to match: leave the colours as made
        return result
    made = np.asarray(result.convert("RGB"), np.float32)
    kept = np.asarray(as_pil(original, "RGB").convert("RGB"), np.float32)
    mean_made, mean_kept = made[band].mean(0), kept[band].mean(0)
    gain = np.clip(kept[band].std(0) / np.maximum(made[band].std(0), 1.0), 0.5, 2.0)  # a flat band: no blow-up
    matched = (made - mean_made) * gain + mean_kept
    return Image.fromarray(np.clip(np.round(matched), 0, 255).astype(np.uint8))


def _resize_and_crop(picture: Image.Image, width: int, height: int) -> Image.Image:
    """diffusers' resize_mode='crop': cover the box, centred."""
    ratio, src_ratio = width / height, picture.width / picture.height
    src_w = width if ratio > src_ratio else picture.width * height // picture.height
    src_h = height if ratio <= src_ratio else picture.height * width // picture.width
    out = Image.new("RGB", (width, height))
    out.paste(picture.resize((src_w, src_h), resample=Image.LANCZOS),
              box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    return out


# ---- beyond diffusers: mask editing -------------------------------------------------

def edit(mask, invert: bool = False, grow: int = 0, shrink: int = 0, blur_radius: float = 0):
    """The mask as the call uses it: inverted, then grown or shrunk by whole pixels (a square
    neighbourhood, ComfyUI's grow-mask-by), then blurred. Untouched when nothing is asked, so the
    defaults keep diffusers' path. PIL masks come back as L images, float arrays as float arrays."""
    if invert or grow or shrink:
        is_array = not isinstance(mask, Image.Image)
        values = _values(mask)
        if invert:
            values = 1.0 - values
        if grow:
            values = max_filter(values, grow)
        if shrink:
            values = 1.0 - max_filter(1.0 - values, shrink)
        if is_array:
            mask = values.reshape(np.shape(mask)[:2] + (1,))
        else:
            mask = Image.fromarray(np.round(values * 255).astype(np.uint8), "L")
    return blur(mask, blur_radius) if blur_radius else mask


def _values(mask) -> np.ndarray:
    """A loaded mask as float32 HxW in [0, 1] (grey levels kept)."""
    if isinstance(mask, Image.Image):
        return np.asarray(mask.convert("L"), np.float32) / 255.0
    if mask.ndim == 2 or mask.shape[2] == 1:
        return mask.reshape(mask.shape[:2]).astype(np.float32)
    return mask[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)


def max_filter(values: np.ndarray, radius: int) -> np.ndarray:
    """Grey dilation with a (2r+1)² square; outside the picture counts as nothing."""
    for axis in (0, 1):
        values = _max_1d(values, int(radius), axis)
    return values


def _max_1d(values: np.ndarray, radius: int, axis: int) -> np.ndarray:
    size, length = 2 * radius + 1, values.shape[axis]
    pad = [(0, 0), (0, 0)]
    pad[axis] = (radius, radius)
    span, current = 1, np.pad(values, pad, constant_values=-np.inf)
    while 2 * span <= size:  # current[i] = max over [i, i + span), doubling span each round
        shifted = np.take(current, np.arange(span, current.shape[axis]), axis=axis)
        current = np.maximum(np.take(current, np.arange(shifted.shape[axis]), axis=axis), shifted)
        span *= 2
    first = np.take(current, np.arange(length), axis=axis)
    last = np.take(current, np.arange(size - span, size - span + length), axis=axis)
    return np.maximum(first, last)


def fill(pixels: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """AUTOMATIC1111's "fill" masked content: (1, C, H, W) pixels whose `hole` (1, 1, H, W) > 0.5 part
    is replaced by a smooth blend of the surrounding colours (a push-pull pyramid: the known pixels
    averaged over ever larger blocks, then interpolated back down), so nothing of what was under the
    hole survives. Known pixels are returned unchanged; each filled value is a convex combination of
    known ones."""
    missing = hole[0, 0] > 0.5
    if not missing.any():
        return pixels
    if missing.all():
        return np.zeros_like(pixels)  # nothing to take colours from: mid-grey
    known = (~missing).astype(np.float32)
    filled = _push_pull(pixels[0] * known, known)
    return np.where(missing, filled, pixels[0])[None].astype(np.float32)


def _push_pull(values: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Colours (C, H, W) everywhere from weight-premultiplied `values` known where weight > 0."""
    height, width = weight.shape
    own = values / np.maximum(weight, 1e-12)
    if (weight > 0).all():
        return own
    ph, pw = height % 2, width % 2
    v = np.pad(values, ((0, 0), (0, ph), (0, pw)))
    w = np.pad(weight, ((0, ph), (0, pw)))
    h2, w2 = (height + ph) // 2, (width + pw) // 2
    coarse = _push_pull(v.reshape(len(v), h2, 2, w2, 2).sum((2, 4)), w.reshape(h2, 2, w2, 2).sum((1, 3)))
    up = _smooth(coarse.repeat(2, axis=1).repeat(2, axis=2))[:, :height, :width]
    alpha = np.minimum(weight, 1.0)
    return alpha * np.where(weight > 0, own, 0) + (1 - alpha) * up


def _smooth(values: np.ndarray) -> np.ndarray:
    """A [1, 2, 1] / 4 blur along both picture axes, edges repeated."""
    for axis in (1, 2):
        padded = np.pad(values, [(0, 0)] * axis + [(1, 1)] + [(0, 0)] * (2 - axis), mode="edge")
        n = values.shape[axis]
        values = (np.take(padded, range(0, n), axis) + 2 * np.take(padded, range(1, n + 1), axis)
                  + np.take(padded, range(2, n + 2), axis)) / 4
    return values
