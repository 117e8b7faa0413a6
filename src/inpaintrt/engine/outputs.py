"""What an engine call returns, shared by every family's engine and by outpaint (a leaf: it imports no engine)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class InpaintOutput:
    images: list | np.ndarray  # PIL images, float (B, H, W, 3) in [0, 1], or latents (B, C, h, w)
    # per image, True where the safety checker blacked it out; None where none ran (diffusers' field)
    nsfw_content_detected: list[bool] | None = None
