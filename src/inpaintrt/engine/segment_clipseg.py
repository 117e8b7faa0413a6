"""ClipSegEngine: a mask from words ("the sky"), one per phrase, with CLIPSeg's one graph (export/segment_clipseg.py).

The picture is prepared as CLIPSegProcessor's image processor (transformers' PIL backend) prepares it: the 8-bit RGB
picture resized by PIL to the square frame with the recorded resample, times rescale_factor in float64, then cast
to float32 and normalized with the mean and std. The phrases are tokenized from the exported tokenizer.json,
padded to the tokenizer's length ("max_length" padding). The graph's logits are resized back to the picture as
torch's bilinear interpolate does (align_corners=False, no antialias): numpy here, so no torch is needed.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from ..runtime.errors import InvalidArgument
from ..runtime.images import MAX_PIXELS
from ..runtime.tokenizer import PromptTokenizer
from . import arguments as check
from .argument_specs import SEGMENT_SPECS
from .base import first_output
from .outputs import Segmentation
from .segmenter import SegmenterEngine, check_text, load_rgb

MAX_PHRASES = 16  # per call: each phrase is one row of the decoder's batch, and one full-size mask back


class ClipSegEngine(SegmenterEngine):
    """A CLIPSeg directory; `Engine.load` returns one for it."""

    def __init__(self, root, manifest: dict, opened):
        super().__init__(root, manifest, opened)
        info = manifest["tokenizer"]
        self.tokenizer = PromptTokenizer(root / info["file"], info["max_length"], info["pad_id"])
        self.resample = Image.Resampling(self.model["resample"])
        self.rescale_factor = float(self.model["rescale_factor"])
        self.image_mean = np.asarray(self.model["image_mean"], np.float32)
        self.image_std = np.asarray(self.model["image_std"], np.float32)

    def segment(self, image, text=None, threshold: float = 0.5, max_pixels: int = MAX_PIXELS,
                **others) -> Segmentation:
        """One mask per phrase of `text` (a string, or a list of them): Segmentation with masks (K, H, W) True where
        the probability (sigmoid of the logit) is above `threshold`, scores (K,) each mask's largest probability
        (so a mask is empty exactly when its score is at most the threshold), and logits (K, H, W) at the picture's
        size. Segment Anything's points, labels, box, multimask_output and mask_input are refused by name."""
        self.refuse_others(others)
        phrases = _phrases(text)
        threshold = check.from_table("threshold", threshold, SEGMENT_SPECS["threshold"])
        rgb = load_rgb(image, max_pixels)
        logits = self._forward(self.pixel_values(rgb), self.tokenizer(phrases))
        height, width = rgb.shape[:2]
        full = resize_bilinear(logits, height, width)
        probability = sigmoid(full)
        return Segmentation(masks=probability > threshold,
                            scores=probability.reshape(len(phrases), -1).max(axis=1).astype(np.float32),
                            logits=full)

    def pixel_values(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 HxWx3 -> (1, 3, R, R) float32, the processor's resize, rescale and normalize in its order."""
        frame = self.resolution
        resized = np.asarray(Image.fromarray(rgb, "RGB").resize((frame, frame), resample=self.resample))
        scaled = (resized.astype(np.float64) * self.rescale_factor).astype(np.float32)  # the processor's rescale
        normalized = (scaled - self.image_mean) / self.image_std
        return np.ascontiguousarray(normalized.transpose(2, 0, 1)[None], np.float32)

    def _forward(self, pixels: np.ndarray, ids: np.ndarray) -> np.ndarray:
        logits = np.asarray(first_output(self.sessions["clipseg"].run({"pixel_values": pixels, "input_ids": ids})),
                            np.float32)
        if not np.isfinite(logits).all():
            raise FloatingPointError(f"CLIPSeg returned NaN or infinite logits on {self.backend} (fp16 overflow?): "
                                     "load it with precision='fp32'")
        return logits


def _phrases(text) -> list[str]:
    """text as a list of phrases, each checked; a list is capped at MAX_PHRASES."""
    if isinstance(text, (list, tuple)):
        if not text:
            raise InvalidArgument("text", "text is an empty list; give at least one phrase, e.g. ['the sky']",
                                  "send a phrase such as 'the sky', or a list of them")
        if len(text) > MAX_PHRASES:
            raise InvalidArgument("text", f"{len(text)} phrases given; at most {MAX_PHRASES} per call",
                                  f"send at most {MAX_PHRASES} phrases, or split them over several calls")
        return [check_text(phrase) for phrase in text]
    return [check_text(text)]


def sigmoid(values: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp of a very negative logit is inf: its probability is 0, as it should be
        return (1.0 / (1.0 + np.exp(-values))).astype(np.float32)


def resize_bilinear(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """(K, h, w) float32 -> (K, height, width): torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False) without antialias, to float32 rounding (its source positions as torch's CPU kernel
    computes them)."""
    rows0, rows1, row_weight = _taps(values.shape[1], height)
    cols0, cols1, col_weight = _taps(values.shape[2], width)
    rows = values[:, rows0] * (1 - row_weight)[:, None] + values[:, rows1] * row_weight[:, None]
    return (rows[:, :, cols0] * (1 - col_weight) + rows[:, :, cols1] * col_weight).astype(np.float32)


def _taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output position: its two source indices and the second one's weight (half-pixel centres,
    positions before the first pixel clamped to it, the last index repeated at the far edge)."""
    scale = np.float64(np.float32(size_in) / np.float32(size_out))  # torch's float32 ratio
    # scale * (i + 0.5) - 0.5 rounded to float32 once, as torch's fused multiply-add gives: rounding each step
    # instead moves a position far from the origin by a float32 step (1e-4 of a pixel at 1000 pixels)
    source = np.maximum((scale * (np.arange(size_out) + 0.5) - 0.5).astype(np.float32), np.float32(0))
    first = source.astype(np.int64)  # source >= 0: truncation is floor
    second = np.minimum(first + 1, size_in - 1)
    return first, second, (source - first).astype(np.float32)
