"""What an engine call returns, shared by every family's engine and by outpaint (a leaf: it imports no engine)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class InpaintOutput:
    images: list | np.ndarray  # PIL images, float (B, H, W, 3) in [0, 1], or latents (B, C, h, w)
    # per image, True where the safety checker blacked it out; None where none ran (diffusers' field)
    nsfw_content_detected: list[bool] | None = None


@dataclass
class Segmentation:
    """What a mask maker's `segment` returns: K candidate masks of the picture (K = 1 unless multimask_output)."""
    masks: np.ndarray  # bool (K, H, W): True inside the object
    scores: np.ndarray  # float32 (K,): SAM's predicted IoU of each mask; CLIPSeg's largest probability
    logits: np.ndarray  # float32 (K, H, W) at the picture's size, before the threshold (SAM: 0; CLIPSeg: its own)
    low_res_logits: np.ndarray | None = None  # SAM: (K, 256, 256), an earlier call's mask_input

    def mask_image(self, index: int = 0):
        """Mask `index` as a PIL "L" picture, white inside: what `inpaint`'s mask_image takes."""
        from PIL import Image

        return Image.fromarray(self.masks[index].astype(np.uint8) * 255, "L")
