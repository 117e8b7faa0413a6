"""Image and mask pre/post-processing with diffusers' VaeImageProcessor semantics (DESIGN.md §3).

PIL images are resized with Lanczos in their own mode and then converted (RGB / L), as diffusers
does; uint8 arrays are treated as the PIL images they describe; float arrays in [0, 1] are taken
as they are and, like diffusers' tensors, resized with nearest-neighbour interpolation.
"""
from __future__ import annotations

import numpy as np
from PIL import Image


def input_size(image, name: str) -> tuple[int, int]:
    """(width, height) of a PIL image or HxW[xC] array."""
    if isinstance(image, Image.Image):
        return image.size
    if isinstance(image, np.ndarray) and image.ndim >= 2:
        return image.shape[1], image.shape[0]
    raise ValueError(f"{name} must be a PIL.Image or an HxW / HxWxC numpy array, got {type(image).__name__}")


def _as_pil_or_float(value, name: str):
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        if value.ndim not in (2, 3) or (value.ndim == 3 and value.shape[2] not in (1, 3, 4)):
            raise ValueError(f"{name} must be an HxW or HxWxC (C = 1, 3 or 4) array, got shape {value.shape}")
        if value.shape[0] == 0 or value.shape[1] == 0:
            raise ValueError(f"{name} is empty (shape {value.shape}); pass a picture with pixels")
        if value.dtype == np.uint8:
            return Image.fromarray(value[..., 0] if value.ndim == 3 and value.shape[2] == 1 else value)
        if np.issubdtype(value.dtype, np.floating):
            if not np.isfinite(value).all():
                raise ValueError(f"{name} contains NaN or infinite values; pass finite values in [0, 1]")
            if value.min() < 0 or value.max() > 1:
                raise ValueError(f"{name} float values must lie in [0, 1], got [{value.min():.3g}, {value.max():.3g}]")
            return value.astype(np.float32)
        raise ValueError(f"{name} array has dtype {value.dtype}; pass uint8 (0-255) or float (0-1)")
    raise ValueError(f"{name} must be a PIL.Image or a numpy array, got {type(value).__name__}")


def nearest_resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """torch.nn.functional.interpolate(mode='nearest') over the last two axes."""
    def index(src: int, dst: int) -> np.ndarray:
        scale = np.float32(src / dst)
        return np.minimum(np.floor(np.arange(dst, dtype=np.float32) * scale).astype(np.int64), src - 1)

    return array[..., index(array.shape[-2], height)[:, None], index(array.shape[-1], width)[None, :]]


def _float_pixels(value, height: int, width: int, mode: str) -> np.ndarray:
    """float32 HxWxC in [0, 1] at (height, width): RGB for 'RGB', one channel for 'L'."""
    value = _as_pil_or_float(value, "image" if mode == "RGB" else "mask_image")
    if isinstance(value, Image.Image):
        value = value.resize((width, height), resample=Image.LANCZOS).convert(mode)
        pixels = np.asarray(value, dtype=np.float32) / 255.0
        return pixels[..., None] if pixels.ndim == 2 else pixels
    pixels = value if value.ndim == 3 else value[..., None]
    if mode == "RGB" and pixels.shape[2] != 3:
        pixels = np.repeat(pixels[..., :1], 3, axis=2) if pixels.shape[2] == 1 else pixels[..., :3]
    if mode == "L" and pixels.shape[2] != 1:
        rgb = pixels[..., :3]
        pixels = (rgb @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    return nearest_resize(pixels.transpose(2, 0, 1), height, width).transpose(1, 2, 0)


def preprocess_image(image, height: int, width: int) -> np.ndarray:
    """(1, 3, H, W) float32 in [-1, 1]."""
    pixels = _float_pixels(image, height, width, "RGB")
    return (2.0 * pixels - 1.0).transpose(2, 0, 1)[None].astype(np.float32)


def preprocess_mask(mask, height: int, width: int) -> np.ndarray:
    """(1, 1, H, W) float32 of 0/1: 1 where the picture is repainted."""
    pixels = _float_pixels(mask, height, width, "L")
    binary = (pixels >= 0.5).astype(np.float32)
    return binary.transpose(2, 0, 1)[None]


def postprocess(decoded: np.ndarray, output_type: str):
    """VAE output (B, 3, H, W) in [-1, 1] -> float (B, H, W, 3) in [0, 1] or a list of PIL images."""
    images = np.clip(decoded / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1).astype(np.float32)
    if output_type == "np":
        return images
    return [Image.fromarray(x) for x in (images * 255).round().astype(np.uint8)]
