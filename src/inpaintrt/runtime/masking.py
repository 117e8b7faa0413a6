"""Mask helpers of diffusers' inpainting guide: blur, the padded crop box, and pasting back.

- `blur`: VaeImageProcessor.blur (a Gaussian blur of the mask, before preprocessing).
- `crop_region`: VaeImageProcessor.get_crop_region (mask bounding box, padded, grown to the
  output's aspect ratio, kept inside the picture).
- `overlay`: VaeImageProcessor.apply_overlay (the result pasted over the original through the
  inverted soft mask, so unmasked pixels come back byte for byte).
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


def overlay(mask, original, result: Image.Image, crop=None) -> Image.Image:
    """The result over the original: original pixels where the mask is black, blended where it is soft."""
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
    result = result.convert("RGBA")
    result.alpha_composite(kept)
    return result.convert("RGB")


def _resize_and_crop(picture: Image.Image, width: int, height: int) -> Image.Image:
    """diffusers' resize_mode='crop': cover the box, centred."""
    ratio, src_ratio = width / height, picture.width / picture.height
    src_w = width if ratio > src_ratio else picture.width * height // picture.height
    src_h = height if ratio <= src_ratio else picture.height * width // picture.width
    out = Image.new("RGB", (width, height))
    out.paste(picture.resize((src_w, src_h), resample=Image.LANCZOS),
              box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    return out
