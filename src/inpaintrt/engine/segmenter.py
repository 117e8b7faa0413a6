"""What the mask makers share (Segment Anything: segment_sam.py; CLIPSeg: segment_clipseg.py): no inpaint call,
the picture loaded as every engine loads it, the checks of the `segment` arguments (one home: the server calls
them too), and the result type.

A mask maker's `segment(image, ...)` returns an `outputs.Segmentation` whose masks feed any engine's `inpaint`
(`segmentation.mask_image()`), where mask_grow / mask_blur apply as to a painted mask.
"""
from __future__ import annotations

import math

import numpy as np

from ..runtime import images as imaging
from ..runtime.errors import InvalidArgument
from . import arguments as check
from .argument_specs import MAX_POINTS, SEGMENT_SPECS
from .base import EngineBase

NOT_INPAINTING = "a mask maker makes masks; pass segmentation.mask_image() as mask_image to an inpainting engine"


class SegmenterEngine(EngineBase):
    missing_methods = {"inpaint": NOT_INPAINTING, "outpaint": NOT_INPAINTING, "inpaint_batch": NOT_INPAINTING,
                       "encode_prompt": "a mask maker's prompt is its segment call's points, box or text"}

    def __init__(self, root, manifest: dict, opened):
        super().__init__(root, manifest, opened)
        self.default_scheduler = None
        self.resolution = self.model["resolution"]

    def facts(self) -> dict:
        return {"family": self.family, "kind": self.record.kind, "backend": self.backend, "precision": self.precision,
                "resolution": self.resolution, "clicks": self.record.clicks, "phrases": self.record.phrases,
                "safety_checker": False, "loras": [], "embeddings": [], "controlnets": [], "image_prompts": False,
                "eraser": False}

    def refuse_others(self, others: dict) -> None:
        """`segment`'s **others: a name no mask maker takes as Python would; the other mask maker's arguments by
        name, unless at their defaults (a caller may send a full set)."""
        unknown = sorted(name for name in others if name not in SEGMENT_SPECS)
        if unknown:
            raise TypeError(f"segment() got an unexpected keyword argument {unknown[0]!r}")
        self.refuse_foreign(others)

    def refuse_foreign(self, given: dict) -> None:
        """The other mask maker's arguments, by name, unless at their defaults (a caller may send a full set)."""
        named = sorted(name for name, value in given.items() if value is not None and
                       not check.is_default(value, SEGMENT_SPECS[name].default))
        if named:
            other = "CLIPSeg" if self.record.clicks else "Segment Anything"
            raise InvalidArgument(named[0], f"{', '.join(named)} {'is' if len(named) == 1 else 'are'} for {other} "
                                  f"engines; this engine is {self.record.title}: leave "
                                  f"{'it' if len(named) == 1 else 'them'} out", "leave it out")


def load_rgb(image, max_pixels: int) -> np.ndarray:
    """The picture as uint8 HxWx3 RGB (a float array in [0, 1] is rounded to 8 bits, as a PIL picture would be)."""
    picture = imaging.load_picture(image, "image", max_pixels)
    if isinstance(picture, np.ndarray):
        values = picture if picture.ndim == 3 else picture[..., None]
        values = np.repeat(values, 3, axis=2) if values.shape[2] == 1 else values[..., :3]
        return np.round(np.clip(values, 0, 1) * 255).astype(np.uint8)
    return np.asarray(picture.convert("RGB"))


def check_points(points, labels, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(N x 2 float64 points, N float32 labels) with every point inside the picture and each label 0 or 1."""
    if points is None or (hasattr(points, "__len__") and len(points) == 0):
        if labels is not None and len(labels):
            raise InvalidArgument("labels", "labels were given without points; give one label per point in points",
                                  "give points, or leave labels out")
        return np.zeros((0, 2)), np.zeros((0,), np.float32)
    found = _numbers(points, "points", "a list of [x, y] pairs, e.g. [[120, 80]]")
    if found.ndim != 2 or found.shape[1] != 2:
        raise InvalidArgument("points", f"points must be a list of [x, y] pairs; got an array of shape {found.shape}",
                              "send points as [[x, y], ...]")
    if len(found) > MAX_POINTS:
        raise InvalidArgument("points", f"{len(found)} points given; at most {MAX_POINTS} per call",
                              f"send at most {MAX_POINTS} points")
    outside = [(x, y) for x, y in found if not (0 <= x <= width and 0 <= y <= height)]
    if outside:
        x, y = outside[0]
        raise InvalidArgument("points", f"the point ({_num(x)}, {_num(y)}) is outside the {width}x{height} picture; "
                              f"points are pixels, x from 0 to {width} and y from 0 to {height}",
                              "send points inside the picture, in its pixels")
    if labels is None:
        marks = np.ones(len(found), np.float32)
    else:
        marks = _numbers(labels, "labels", "a list of 0 and 1, one per point").reshape(-1)
        if len(marks) != len(found):
            raise InvalidArgument("labels", f"{len(marks)} labels for {len(found)} points; give one label per point "
                                  "(1 adds, 0 takes away)", "give one label per point")
        wrong = [v for v in marks if v not in (0, 1)]
        if wrong:
            raise InvalidArgument("labels", f"label {_num(wrong[0])} is not 0 or 1; 1 adds the object under a point, "
                                  "0 takes it away", "use labels of 0 and 1")
    return found, marks.astype(np.float32)


def check_prompt(coords: np.ndarray, corners: np.ndarray | None) -> None:
    """Segment Anything needs points or a box (checked points and box, as check_points / check_box return them)."""
    if not len(coords) and corners is None:
        raise InvalidArgument("points", "Segment Anything needs a prompt: give points (clicks) or a box",
                              "give points=[[x, y]] or box=[x0, y0, x1, y1]")


def check_box(box, width: int, height: int) -> np.ndarray | None:
    """[x0, y0, x1, y1] as float64, inside the picture with x0 < x1 and y0 < y1; None stays None."""
    if box is None:
        return None
    found = _numbers(box, "box", "[x0, y0, x1, y1]").reshape(-1)
    if found.shape != (4,):
        raise InvalidArgument("box", f"box must be four numbers [x0, y0, x1, y1]; got {found.size}",
                              "send box as [x0, y0, x1, y1]")
    x0, y0, x1, y1 = found
    if not (x0 < x1 and y0 < y1):
        raise InvalidArgument("box", f"box [{', '.join(_num(v) for v in found)}] is empty or reversed: x0 must be "
                              "below x1 and y0 below y1 (top left, then bottom right)",
                              "send the top-left corner first, then the bottom-right")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise InvalidArgument("box", f"box [{', '.join(_num(v) for v in found)}] reaches outside the {width}x{height} "
                              "picture", f"keep the box within 0..{width} and 0..{height}")
    return found


def check_text(text) -> str:
    if not isinstance(text, str) or not text.strip():
        raise InvalidArgument("text", f"text must name what to mask, e.g. 'the sky'; got {text!r}",
                              "send a phrase such as 'the sky'")
    return text


def _numbers(value, name: str, want: str) -> np.ndarray:
    try:
        found = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidArgument(name, f"{name} must be {want}; got {str(value)[:80]!r}", f"send {name} as {want}") from None
    if not np.isfinite(found).all():
        raise InvalidArgument(name, f"{name} holds a NaN or infinite number", f"send {name} as {want}")
    return found


def _num(value: float) -> str:
    return str(int(value)) if math.isfinite(value) and float(value).is_integer() else f"{value:g}"
