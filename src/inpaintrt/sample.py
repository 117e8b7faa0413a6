"""The sample picture and mask of the quick start, drawn here (no third-party photo)."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def sample_picture(width: int = 512, height: int = 512) -> tuple[Image.Image, Image.Image]:
    """A small landscape (sky, sun, hills, a house) and a mask over the house's right half."""
    y = np.linspace(0, 1, height)[:, None, None]
    sky = (np.array([90, 150, 230]) * (1 - y) + np.array([200, 225, 250]) * y).astype(np.uint8)
    image = Image.fromarray(np.broadcast_to(sky, (height, width, 3)).copy())
    draw = ImageDraw.Draw(image)
    s = min(width, height) / 512
    draw.ellipse([380 * s, 50 * s, 460 * s, 130 * s], fill=(255, 220, 80))
    draw.polygon([(0, 330 * s), (180 * s, 260 * s), (360 * s, 320 * s), (width, 270 * s), (width, height), (0, height)],
                 fill=(70, 150, 70))
    draw.rectangle([120 * s, 260 * s, 300 * s, 400 * s], fill=(190, 90, 60))
    draw.polygon([(105 * s, 265 * s), (210 * s, 180 * s), (315 * s, 265 * s)], fill=(120, 50, 40))
    draw.rectangle([190 * s, 330 * s, 230 * s, 400 * s], fill=(80, 50, 30))
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).ellipse([200 * s, 200 * s, 400 * s, 420 * s], fill=255)
    return image, mask


def side_by_side(pictures: list[Image.Image]) -> Image.Image:
    """Pictures in a row, at the first one's height."""
    height = pictures[0].height
    row = [p.convert("RGB").resize((round(p.width * height / p.height), height)) for p in pictures]
    canvas = Image.new("RGB", (sum(p.width for p in row), height), (255, 255, 255))
    x = 0
    for picture in row:
        canvas.paste(picture, (x, 0))
        x += picture.width
    return canvas
