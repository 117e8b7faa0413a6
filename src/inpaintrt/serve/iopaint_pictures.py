"""Pictures as IOPaint's server reads and writes them (its iopaint/helper.py, read, not imported): the upload turned
upright by its EXIF orientation with its alpha set aside, the page's painted mask read as grey levels, the answer
in the upload's own format with the alpha put back, and masks sent to the page in its brush colour.

Every decode goes through pictures.py first (base64, the size limit read from the header, then the pixels), so a
bad upload is a 4xx naming its field, as on the native routes.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter, ImageOps, PngImagePlugin

from .errors import ApiError
from .pictures import decode_base64, decode_picture, png_bytes

# PIL's format of the upload -> the answer's; MPO is how PIL reports many phone cameras' JPEGs (a JPEG with a
# second picture appended), answered as a plain JPEG; any other format is answered as PNG
FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "WEBP": "webp", "BMP": "bmp", "GIF": "gif", "TIFF": "tiff"}
QUALITY = 95  # IOPaint's default --quality for JPEG and WebP answers
BRUSH = (255, 203, 0, 186)  # IOPaint's mask colour on the page ("#ffcc00bb" as its server writes it)
SEGMENT_DILATION = 9  # IOPaint grows a plugin's mask by a 9x9 square before sending it to the page
THRESHOLD = 127  # cv2.threshold(mask, 127, 255, THRESH_BINARY): grey above 127 is repainted


@dataclass
class Upload:
    rgb: Image.Image  # upright, RGB (an RGBA upload's colour channels, not composited)
    alpha: Image.Image | None  # an RGBA upload's alpha, put back on the answer
    format: str  # the answer's format: the upload's
    info: dict = field(default_factory=dict)  # what is carried over: PNG "parameters" text, ICC profile


def read_upload(text, name: str, max_pixels: int) -> Upload:
    picture = _upright(text, name, max_pixels)
    kind = FORMATS.get(picture.format or "", "png")
    info = {key: picture.info[key] for key in ("parameters", "icc_profile") if isinstance(picture.info.get(key),
                                                                                        (str, bytes))}
    if picture.mode == "RGBA":  # as IOPaint: only RGBA keeps an alpha channel, every other mode becomes RGB
        return Upload(picture.convert("RGB"), picture.getchannel("A"), kind, info)
    return Upload(picture.convert("RGB"), None, kind, info)


def read_mask(text, name: str, size: tuple[int, int], max_pixels: int) -> Image.Image:
    """The painted mask as an L picture of 0 / 255: grey levels (alpha ignored, as PIL's convert("L") does for
    IOPaint) above 127. The page paints in its brush colour on a transparent canvas."""
    grey = np.asarray(_upright(text, name, max_pixels).convert("L"))
    if grey.shape[::-1] != size:
        raise ApiError(422, name, f"{name} is {grey.shape[1]}x{grey.shape[0]} but image is {size[0]}x{size[1]}",
                       f"send a {name} of exactly the picture's size")
    return Image.fromarray(np.where(grey > THRESHOLD, 255, 0).astype(np.uint8), "L")


def _upright(text, name: str, max_pixels: int) -> Image.Image:
    if not isinstance(text, str) or not text:
        raise ApiError(422, name, f"{name} is required", f"send {name} as a data: URL or base64 text")
    data = decode_base64(text, name)
    picture = decode_picture(data, name, max_pixels)  # size from the header first, then the pixels
    kind = Image.open(io.BytesIO(data)).format
    try:
        upright = ImageOps.exif_transpose(picture)
    except Exception:  # a broken EXIF block: IOPaint keeps the picture as stored, and so does this
        upright = picture
    upright.format = kind
    return upright


def encode_answer(result: Image.Image, upload: Upload) -> tuple[bytes, str]:
    """(bytes, media type): the engine's picture at the upload's size, its alpha put back, in its format."""
    picture = result.convert("RGB")
    if picture.size != upload.rgb.size:  # IOPaint answers at the upload's size whatever size it generated at
        picture = picture.resize(upload.rgb.size, Image.BICUBIC)
    if upload.alpha is not None:
        picture.putalpha(upload.alpha)
    kind = upload.format
    options: dict = {"quality": QUALITY} if kind in ("jpeg", "webp") else {}
    if upload.info.get("icc_profile"):
        options["icc_profile"] = upload.info["icc_profile"]
    if kind == "png" and upload.info.get("parameters"):
        text = PngImagePlugin.PngInfo()
        text.add_text("parameters", upload.info["parameters"])
        options["pnginfo"] = text
    # no fallback format: the picture is RGB, or RGBA only from an upload whose format held an alpha channel
    # (PNG, WebP, GIF, TIFF, BMP), and each format of FORMATS writes those modes (JPEG, the one that cannot write
    # RGBA, never decodes to it); an error here is a bug to see, not a PNG to answer instead
    buffer = io.BytesIO()
    picture.save(buffer, format=kind.upper(), **options)
    return buffer.getvalue(), f"image/{kind}"


def page_mask(inside: np.ndarray, grow: int = 0) -> bytes:
    """A mask for the page: RGBA PNG in the brush colour where `inside` (bool HxW), grown by a grow x grow square
    first (IOPaint's gen_frontend_mask dilation), transparent elsewhere."""
    grey = Image.fromarray(inside.astype(np.uint8) * 255, "L")
    if grow > 1:
        grey = grey.filter(ImageFilter.MaxFilter(grow))  # a centred square's maximum: cv2.dilate with np.ones
    pixels = np.zeros((*inside.shape, 4), np.uint8)
    pixels[np.asarray(grey) > 128] = BRUSH
    return png_bytes(Image.fromarray(pixels, "RGBA"), fast=True)  # two colours: the fast level costs little size


def ellipse(size: int) -> np.ndarray:
    """cv2.getStructuringElement(MORPH_ELLIPSE, (size, size)) as bool, by OpenCV's own rows-of-spans rule."""
    kernel = np.zeros((size, size), bool)
    r = c = size // 2
    for i in range(size):
        dy = i - r
        if abs(dy) <= r:
            dx = int(np.rint(c * np.sqrt((r * r - dy * dy) / (r * r)))) if r else 0
            kernel[i, max(c - dx, 0):min(c + dx + 1, size)] = True
    return kernel


def morph(mask: np.ndarray, kernel: np.ndarray, grow: bool) -> np.ndarray:
    """Dilation (grow) or erosion of a bool HxW mask by a centred kernel whose rows are spans (an ellipse); outside
    the picture never counts, as with OpenCV's default border for each. Erosion is the dilation of the outside."""
    source = mask if grow else ~mask
    height, width = mask.shape
    k = kernel.shape[0] // 2
    rows = np.pad(source, ((k, k), (0, 0)))
    out = np.zeros_like(source)
    for i, row in enumerate(kernel):
        spread = int(row.sum()) // 2  # the span's half-width around the centre column
        if not row.any():
            continue
        shifted = rows[i:i + height]
        # any True within +-spread columns: differences of a running count
        counts = np.cumsum(np.pad(shifted, ((0, 0), (spread + 1, spread))).astype(np.int32), axis=1)
        out |= (counts[:, 2 * spread + 1:] - counts[:, :width]) > 0
    return out if grow else ~out


def adjusted_mask(text, operate: str, kernel_size: int, max_pixels: int) -> bytes:
    """IOPaint's adjust_mask: the page's mask (grey >= 127) reversed, expanded or shrunk by an ellipse of
    2 * kernel_size + 1, in the brush colour."""
    grey = np.asarray(_upright(text, "mask", max_pixels).convert("L"))
    inside = grey >= THRESHOLD
    if operate == "reverse":
        return page_mask(~inside)
    return page_mask(morph(inside, ellipse(2 * kernel_size + 1), operate == "expand"))
