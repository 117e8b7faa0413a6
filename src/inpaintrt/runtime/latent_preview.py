"""A cheap look at the latents while denoising: each latent pixel's 4 channels times a fixed 4x3
matrix give its RGB, at 1/8 of the picture's size. No VAE call, a few microseconds a step.

The coefficients are AUTOMATIC1111 stable-diffusion-webui's "Approx cheap" live preview
(modules/sd_vae_approx.py, cheap_approximation), fitted by least squares between latents and the VAE's
decoded pixels (https://discuss.huggingface.co/t/decoding-latents-to-rgb-without-upscaling/23204/2);
SDXL's VAE has its own latent space, hence its own matrix. They act on the latents as the UNet sees
them (not divided by the VAE's scaling factor) and give values in [-1, 1]. Kandinsky's MoVQ latents
have no such matrix: no preview.
"""
from __future__ import annotations

import base64
import io

import numpy as np

# rows: latent channels 0..3; columns: R, G, B
SD_COEFFICIENTS = np.array([
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
], np.float32)
SDXL_COEFFICIENTS = np.array([
    [0.3448, 0.4168, 0.4395],
    [-0.1953, -0.0290, 0.0250],
    [0.1074, 0.0886, -0.0163],
    [-0.3730, -0.2499, -0.2088],
], np.float32)


# a family's latent space (engine/families.py's `preview`) -> its matrix
COEFFICIENTS = {"sd": SD_COEFFICIENTS, "sdxl": SDXL_COEFFICIENTS}


def coefficients(space: str | None) -> np.ndarray | None:
    """The latent space's 4x3 matrix, or None where there is none (Kandinsky 2.2's MoVQ: space None)."""
    return COEFFICIENTS.get(space) if space else None


def preview_rgb(latents, space: str | None) -> np.ndarray | None:
    """HxWx3 uint8 of the first picture of `latents` ((batch,) 4, h, w; numpy or cupy), or None."""
    matrix = coefficients(space)
    if matrix is None:
        return None
    array = latents.get() if hasattr(latents, "get") and not isinstance(latents, np.ndarray) else latents
    array = np.asarray(array, np.float32)
    if array.ndim == 4:
        array = array[0]
    if array.ndim != 3 or array.shape[0] != 4:
        return None
    rgb = np.einsum("chw,cr->hwr", array, matrix)
    return (np.clip((rgb + 1) / 2, 0, 1) * 255).round().astype(np.uint8)


def preview_data_url(latents, space: str | None) -> str | None:
    """The preview as a PNG data: URL (a 64x64 latent is about 10 kB), or None."""
    from PIL import Image

    rgb = preview_rgb(latents, space)
    if rgb is None:
        return None
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
