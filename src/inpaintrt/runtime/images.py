"""Pictures in and out, with diffusers' VaeImageProcessor semantics (docs/architecture.md, "One loop").

Inputs may be PIL images of any common mode, file paths, bytes, uint8 arrays (read as the PIL
image they describe) or float arrays in [0, 1] (taken as they are and, like diffusers' tensors,
resized with nearest-neighbour interpolation). PIL images are resized with Lanczos in their own
mode and then converted (RGB / L), as diffusers does. Files are checked for size from their
header before a pixel is decoded.
"""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import InvalidArgument

MAX_PIXELS = 8192 * 8192  # larger inputs are refused before decoding (decompression bombs)
MIN_SIDE = 8  # one latent pixel


def load_picture(value, name: str, max_pixels: int = MAX_PIXELS):
    """A PIL image in a mode diffusers handles, or a float32 HxWxC array in [0, 1]."""
    if isinstance(value, (str, Path, bytes, bytearray)):
        value = _open(value, name, max_pixels)
    if isinstance(value, Image.Image):
        return _normal_mode(_checked_size(value, name, max_pixels), name)
    if isinstance(value, np.ndarray):
        return _array(value, name, max_pixels)
    raise InvalidArgument(name, f"{name} must be a PIL.Image, an HxW / HxWxC numpy array, a file path or bytes; got "
                          f"{type(value).__name__}", f"pass {name} as a PIL.Image, a numpy array, a file path or bytes")


def load_pair(image, mask_image=None, max_pixels: int = MAX_PIXELS):
    """(picture, mask): mask_image loaded as given, or, without one, taken from the picture's alpha channel
    (white where it is transparent: repainted) with the picture returned as RGB. Sizes are the caller's check."""
    picture = load_picture(image, "image", max_pixels)
    if mask_image is not None:
        return picture, load_picture(mask_image, "mask_image", max_pixels)
    return alpha_mask(picture)


# Any transparency is repainted (alpha < 255), as AUTOMATIC1111's img2img inpaint tab reads an uploaded
# picture's alpha (ImageOps.invert(alpha) > 0): a cut-out's soft, half-transparent edge is repainted too,
# not left as a fringe. (IOPaint keeps a picture's alpha to put back on the result; it takes no mask from it.)
OPAQUE = 255


def alpha_mask(picture):
    """(RGB picture, L mask of 0 / 255) from a loaded picture's alpha channel; refused without one."""
    no_mask = "pass mask_image, or a picture whose transparent pixels mark the area to repaint"
    if isinstance(picture, np.ndarray):  # float HxWxC in [0, 1]
        if picture.shape[2] != 4:
            raise InvalidArgument("mask_image", f"no mask_image was given and image has {picture.shape[2]} channel(s), "
                                  f"no alpha channel to take one from; {no_mask}", no_mask)
        alpha = np.round(picture[..., 3] * 255)
        rgb = np.ascontiguousarray(picture[..., :3])
        mask = Image.fromarray(np.where(alpha < OPAQUE, 255, 0).astype(np.uint8), "L")
    else:
        if "A" not in picture.getbands() and ("a" in picture.getbands() or "transparency" in picture.info):
            picture = picture.convert("RGBA")  # premultiplied alpha, or a PNG's transparent colour (tRNS)
        if "A" not in picture.getbands():
            raise InvalidArgument("mask_image", f"no mask_image was given and image (mode {picture.mode}) has no "
                                  f"alpha channel to take one from; {no_mask}", no_mask)
        rgb = picture.convert("RGB")
        mask = picture.getchannel("A").point([255] * OPAQUE + [0] * (256 - OPAQUE))
    if not np.asarray(mask).any():  # as the engine refuses an all-black mask: nothing would change
        fix = "make the area to repaint transparent, or pass mask_image"
        raise InvalidArgument("mask_image", f"no mask_image was given and image's alpha channel is opaque everywhere, "
                              f"so nothing is marked to repaint; {fix}", fix)
    return rgb, mask


def reason(error: Exception, sent: str = "the given bytes") -> str:
    """PIL's complaint without the object it was handed: bytes arrive as `<_io.BytesIO object at 0x...>`."""
    return re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", sent, str(error))


def _open(source, name: str, max_pixels: int) -> Image.Image:
    try:
        picture = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
    except FileNotFoundError:
        raise InvalidArgument(name, f"{name}: no such file {str(source)!r}", f"pass the path of an existing picture "
                              f"as {name}") from None
    except Image.DecompressionBombError as e:
        fix = f"pass a picture of at most {max_pixels} pixels"
        raise InvalidArgument(name, f"{name} is too large to decode safely ({e}); {fix}", fix) from None
    except (OSError, SyntaxError) as e:
        fix = "pass a PNG, JPEG or WebP file"
        raise InvalidArgument(name, f"{name} is not a picture PIL can read ({reason(e)}); {fix}", fix) from None
    _checked_size(picture, name, max_pixels)  # from the header, before decoding
    try:
        picture.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise InvalidArgument(name, f"{name} could not be decoded ({reason(e)}); the file is truncated or corrupt",
                              f"pass {name} as an intact picture file (save it again)") from None
    return picture


def _checked_size(picture: Image.Image, name: str, max_pixels: int) -> Image.Image:
    width, height = picture.size
    if width < MIN_SIDE or height < MIN_SIDE:
        fix = f"pass a picture of at least {MIN_SIDE}x{MIN_SIDE} pixels"
        raise InvalidArgument(name, f"{name} is {width}x{height}; {fix}", fix)
    if width * height > max_pixels:
        fix = "downscale it first (the model works at 512-1024 pixels anyway)"
        raise InvalidArgument(name, f"{name} is {width}x{height} = {width * height} pixels, more than the {max_pixels} "
                              f"allowed; {fix}", fix)
    return picture


def _normal_mode(picture: Image.Image, name: str) -> Image.Image:
    """16/32-bit integer and float pictures become 8-bit, palettes keep their colours."""
    if picture.mode.startswith("I"):  # I, I;16, I;16B, ...: scale the integer range down to 8 bits
        values = np.asarray(picture, dtype=np.float64)
        top = 65535.0 if picture.mode.startswith("I;16") or values.max() > 255 else 255.0
        return Image.fromarray(np.clip(np.round(values / top * 255), 0, 255).astype(np.uint8), "L")
    if picture.mode == "F":
        values = np.asarray(picture, dtype=np.float32)
        return _array(values, name, values.size)
    if picture.mode == "P":
        return picture.convert("RGBA" if "transparency" in picture.info else "RGB")
    return picture


def _array(value: np.ndarray, name: str, max_pixels: int):
    if value.ndim not in (2, 3) or (value.ndim == 3 and value.shape[2] not in (1, 3, 4)):
        raise InvalidArgument(name, f"{name} must be an HxW or HxWxC (C = 1, 3 or 4) array, got shape {value.shape}",
                              f"pass {name} as an HxW or HxWxC array with 1, 3 or 4 channels")
    if value.shape[0] < MIN_SIDE or value.shape[1] < MIN_SIDE:
        fix = f"pass a picture of at least {MIN_SIDE}x{MIN_SIDE} pixels"
        raise InvalidArgument(name, f"{name} has shape {value.shape}; {fix}", fix)
    if value.shape[0] * value.shape[1] > max_pixels:
        raise InvalidArgument(name, f"{name} has {value.shape[0] * value.shape[1]} pixels, more than the {max_pixels} "
                              "allowed", f"downscale {name} to at most {max_pixels} pixels")
    if value.dtype == np.uint8:
        return Image.fromarray(value[..., 0] if value.ndim == 3 and value.shape[2] == 1 else value)
    if np.issubdtype(value.dtype, np.floating):
        if not np.isfinite(value).all():
            raise InvalidArgument(name, f"{name} contains NaN or infinite values; pass finite values in [0, 1]",
                                  "pass finite values in [0, 1]")
        if value.min() < 0 or value.max() > 1:
            raise InvalidArgument(name, f"{name} float values must lie in [0, 1], got [{value.min():.3g}, "
                                  f"{value.max():.3g}]", "scale float pictures to [0, 1] (or pass uint8 0-255)")
        pixels = value.astype(np.float32)
        return pixels if pixels.ndim == 3 else pixels[..., None]
    raise InvalidArgument(name, f"{name} array has dtype {value.dtype}; pass uint8 (0-255) or float (0-1)",
                          "pass uint8 (0-255) or float (0-1)")


def picture_size(picture) -> tuple[int, int]:
    """(width, height) of a loaded picture."""
    return picture.size if isinstance(picture, Image.Image) else (picture.shape[1], picture.shape[0])


def nearest_resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """torch.nn.functional.interpolate(mode='nearest') over the last two axes."""
    def index(src: int, dst: int) -> np.ndarray:
        scale = np.float32(src / dst)
        return np.minimum(np.floor(np.arange(dst, dtype=np.float32) * scale).astype(np.int64), src - 1)

    return array[..., index(array.shape[-2], height)[:, None], index(array.shape[-1], width)[None, :]]


def _float_pixels(picture, height: int, width: int, mode: str, crop=None) -> np.ndarray:
    """float32 HxWxC in [0, 1] at (height, width): RGB for 'RGB', one channel for 'L'."""
    if isinstance(picture, Image.Image):
        if crop is not None:
            picture = resize_and_fill(picture.crop(crop), width, height)
        else:
            picture = picture.resize((width, height), resample=Image.LANCZOS)
        pixels = np.asarray(picture.convert(mode), dtype=np.float32) / 255.0
        return pixels[..., None] if pixels.ndim == 2 else pixels
    if crop is not None:
        raise ValueError("padding_mask_crop needs PIL or uint8 pictures (diffusers' 'fill' resize is PIL-only)")
    pixels = picture
    if mode == "RGB" and pixels.shape[2] != 3:
        pixels = np.repeat(pixels[..., :1], 3, axis=2) if pixels.shape[2] == 1 else pixels[..., :3]
    if mode == "L" and pixels.shape[2] != 1:
        pixels = (pixels[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    return nearest_resize(pixels.transpose(2, 0, 1), height, width).transpose(1, 2, 0)


def preprocess_image(picture, height: int, width: int, crop=None) -> np.ndarray:
    """(1, 3, H, W) float32 in [-1, 1]."""
    pixels = _float_pixels(picture, height, width, "RGB", crop)
    return (2.0 * pixels - 1.0).transpose(2, 0, 1)[None].astype(np.float32)


def preprocess_mask(picture, height: int, width: int, crop=None, soft: bool = False) -> np.ndarray:
    """(1, 1, H, W) float32 of 0/1: 1 where the picture is repainted; soft: the grey levels in [0, 1]."""
    pixels = _float_pixels(picture, height, width, "L", crop)
    values = pixels if soft else pixels >= 0.5
    return values.astype(np.float32).transpose(2, 0, 1)[None]


def area_resize(array: np.ndarray, factor: int) -> np.ndarray:
    """The mean of each factor x factor block over the last two axes (sizes are multiples of factor)."""
    *lead, height, width = array.shape
    blocks = array.reshape(*lead, height // factor, factor, width // factor, factor)
    return blocks.mean(axis=(-3, -1), dtype=np.float32)


def resize_and_fill(picture: Image.Image, width: int, height: int) -> Image.Image:
    """diffusers' resize_mode='fill': fit inside, centre, and stretch the edge rows/columns into the gaps."""
    ratio, src_ratio = width / height, picture.width / picture.height
    src_w = width if ratio < src_ratio else picture.width * height // picture.height
    src_h = height if ratio >= src_ratio else picture.height * width // picture.width
    resized = picture.resize((src_w, src_h), resample=Image.LANCZOS)
    out = Image.new("RGB", (width, height))
    out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if ratio < src_ratio:
        fill = height // 2 - src_h // 2
        if fill > 0:
            out.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
            out.paste(resized.resize((width, fill), box=(0, resized.height, width, resized.height)), box=(0, fill + src_h))
    elif ratio > src_ratio:
        fill = width // 2 - src_w // 2
        if fill > 0:
            out.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
            out.paste(resized.resize((fill, height), box=(resized.width, 0, resized.width, height)), box=(fill + src_w, 0))
    return out


def postprocess(decoded: np.ndarray) -> np.ndarray:
    """VAE output (B, 3, H, W) in [-1, 1] -> float32 (B, H, W, 3) in [0, 1]."""
    return np.clip(decoded / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1).astype(np.float32)


def to_pil(images: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(x) for x in (images * 255).round().astype(np.uint8)]
