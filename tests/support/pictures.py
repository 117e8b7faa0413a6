"""The suite's test pictures: a smooth colourful image and a rectangular mask whose edges miss the latent grid."""
from __future__ import annotations

import numpy as np
from PIL import Image


def sample_image(width: int = 160, height: int = 96, seed: int = 0) -> Image.Image:
    """A smooth colourful test picture."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    rng = np.random.default_rng(seed)
    channels = [np.sin(6 * x * rng.uniform(0.5, 2) + 3 * y * rng.uniform(0.5, 2) + rng.uniform(0, 6)) for _ in range(3)]
    return Image.fromarray(((np.stack(channels, -1) * 0.5 + 0.5) * 255).astype(np.uint8))


def sample_mask(width: int = 160, height: int = 96) -> Image.Image:
    """A rectangle whose edges do not fall on the 8-pixel latent grid, so resampling choices show."""
    mask = np.zeros((height, width), np.uint8)
    mask[height // 5 + 3: height * 3 // 4 + 1, width // 4 + 5: width * 2 // 3 - 3] = 255
    return Image.fromarray(mask)
