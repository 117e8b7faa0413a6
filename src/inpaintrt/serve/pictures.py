"""Uploaded pictures: base64 text and file bytes decoded, every failure a refusal naming the field."""
from __future__ import annotations

import base64
import binascii
import io
import math

import numpy as np
from PIL import Image

from ..runtime import images as imaging
from ..runtime.errors import InvalidArgument
from .errors import ApiError, request_fix


def decode_base64(text: str, name: str) -> bytes:
    """A picture sent as base64 text (a data: URL is fine); a bad one is a 422 naming the field."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, name, f"{name} is not valid base64",
                       f"send {name} as standard base64 (A-Z a-z 0-9 + /, padded with =)") from None


def decode_picture(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Header first (size, bomb), then the pixels; every failure names the field."""
    if not data:
        raise ApiError(422, name, f"{name} is empty", f"send the file's bytes as {name}")
    try:
        header = Image.open(io.BytesIO(data))
        width, height = header.size
    except Image.DecompressionBombError:
        width = height = math.isqrt(max_pixels) + 1  # PIL's own bomb limit: far over ours
    except (OSError, SyntaxError, ValueError) as e:
        raise ApiError(422, name, f"{name} is not a picture ({imaging.reason(e, f'the uploaded {name}')})",
                       f"send {name} as a PNG, JPEG or WebP file") from None
    if width * height > max_pixels:
        raise ApiError(413, name, f"{name} is {width}x{height} = {width * height} pixels, over this server's "
                       f"limit of {max_pixels}", f"downscale {name} to at most {max_pixels} pixels")
    try:
        picture = imaging.load_picture(data, name, max_pixels)
    except ValueError as e:  # the engine's own check: its fix says what to send for this refusal
        message = str(e).replace("the given bytes", f"the uploaded {name}")
        fix = request_fix(getattr(e, "fix", None), f"send {name} as an intact PNG, JPEG or WebP file")
        raise ApiError(422, name, message, fix) from None
    if not isinstance(picture, Image.Image):  # a float picture (mode F): take it as 8-bit grey
        picture = Image.fromarray((np.clip(picture[..., 0], 0, 1) * 255).round().astype(np.uint8))
    return picture


def png_bytes(picture: Image.Image, fast: bool = False) -> bytes:
    """The picture as PNG bytes, the one encoder of the routes. fast (zlib level 1): for pictures handed on within
    the server, where the time to squeeze them counts more than their size; else PNG's default level."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", **({"compress_level": 1} if fast else {}))
    return buffer.getvalue()


def picture_pair(image: Image.Image, mask: Image.Image | None) -> tuple[Image.Image, Image.Image]:
    """The decoded picture and its mask: the mask as sent, or, when none was, the picture's transparent pixels
    (runtime/images.py load_pair, the engine's own reading); a picture with no alpha to read is a 422."""
    try:
        return imaging.load_pair(image, mask)
    except InvalidArgument as e:
        raise ApiError(422, e.field, str(e), request_fix(e.fix, f"send {e.field}")) from None
