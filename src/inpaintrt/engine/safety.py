"""The safety checker at run time: diffusers' feature extractor in numpy/PIL, the exported checker, the black-out.

diffusers' SD inpaint pipeline, after decoding, turns each image into an 8-bit PIL picture, runs its
CLIPImageProcessor on it, asks StableDiffusionSafetyChecker which images show a listed concept, zeroes
those (black) and returns `nsfw_content_detected`; only then does `padding_mask_crop` paste the result
into the input. The engine does the same at the same point (docs/safety-checker.md).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..runtime import notices
from ..runtime.errors import InvalidArgument
from .manifest import verify_files

NOTICE = ("Potential NSFW content was detected in {count} of {total} images; they are black. Try again with a "
          "different prompt and/or seed (the engine's safety checker can be turned off: docs/safety-checker.md)")


class SafetyChecker:
    """The exported StableDiffusionSafetyChecker with its preprocessing; `flags(pictures)` -> [bool per picture]."""

    def __init__(self, root: Path, section: dict, backend: str):
        from .ort_session import OrtBackend

        self.preprocessing = section["preprocessing"]
        self.session = OrtBackend(Path(root) / section["file"], _provider(backend), arena=False)

    def flags(self, pictures: list[Image.Image]) -> list[bool]:
        pixels = np.stack([clip_input(p, self.preprocessing) for p in pictures])
        found = self.session.run({"clip_input": pixels})["has_nsfw_concepts"]
        return [bool(f) for f in found]


def checker_files(manifest: dict) -> set[str]:
    """The safety checker's files: hashed when it is opened (open_safety_checker), not with the engine's graphs,
    so an engine loaded without it never reads them."""
    section = manifest.get("safety_checker")
    return set(section.get("files", [section["file"]])) if section else set()


def open_safety_checker(root: Path, manifest: dict, backend: str, wanted,
                        verify_hashes: bool = True) -> SafetyChecker | None:
    """The checker when the engine directory has one and `wanted` (Engine.load's safety_checker) is True;
    its files' hashes are checked first when `verify_hashes`."""
    if not isinstance(wanted, bool):
        fix = "pass True (run the checker when the engine has one, the default) or False (skip it)"
        raise InvalidArgument("safety_checker", f"safety_checker={wanted!r} must be True or False: {fix}", fix)
    section = manifest.get("safety_checker")
    if not (wanted and section):
        return None
    if verify_hashes:
        verify_files(root, manifest, skip=set(manifest["files"]) - checker_files(manifest))
    return SafetyChecker(root, section, backend)


def screen(checker: SafetyChecker | None, images: np.ndarray) -> tuple[np.ndarray, list[bool] | None]:
    """(images with the flagged ones black, nsfw_content_detected): float (B, H, W, 3) in [0, 1] in and out;
    (images, None) without a checker, as diffusers returns when its safety_checker is None."""
    if checker is None:
        return images, None
    found = checker.flags(to_pictures(images))
    if any(found):
        images = images.copy()
        images[np.array(found)] = 0.0
        # diffusers logs the same; as a notice, the server also returns it with the job
        notices.warn(NOTICE.format(count=sum(found), total=len(found)), stacklevel=3)
    return images, found


def to_pictures(images: np.ndarray) -> list[Image.Image]:
    """8-bit pictures as diffusers' image processor makes them (x * 255, rounded)."""
    return [Image.fromarray(x) for x in (images * 255).round().astype(np.uint8)]


def clip_input(picture: Image.Image, settings: dict) -> np.ndarray:
    """(3, H, W) float32: transformers' CLIPImageProcessor (its PIL backend) on one picture, step for step."""
    if settings["do_convert_rgb"]:
        picture = picture.convert("RGB")
    if settings["do_resize"]:
        height, width = _resized(picture.size, settings["size"])
        picture = picture.resize((width, height), resample=settings["resample"])
    pixels = np.asarray(picture)
    if settings["do_center_crop"]:
        pixels = _center_crop(pixels, settings["crop_size"]["height"], settings["crop_size"]["width"])
    if settings["do_rescale"]:  # transformers rescales in float64, then stores float32
        pixels = (pixels.astype(np.float64) * settings["rescale_factor"]).astype(np.float32)
    pixels = pixels.astype(np.float32)
    if settings["do_normalize"]:
        pixels = (pixels - np.array(settings["image_mean"], np.float32)) / np.array(settings["image_std"], np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _resized(size: tuple[int, int], target: dict) -> tuple[int, int]:
    """(height, width) after the resize: the short side to `shortest_edge`, the long one truncated, or a fixed size."""
    if "shortest_edge" not in target:
        return target["height"], target["width"]
    width, height = size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = target["shortest_edge"], int(target["shortest_edge"] * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def _center_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """transformers' center_crop: the top-left corner rounds down; a picture smaller than the crop is padded with 0."""
    h, w = pixels.shape[:2]
    padded = np.zeros((max(h, height), max(w, width), pixels.shape[2]), pixels.dtype)
    top_pad, left_pad = -(-(padded.shape[0] - h) // 2), -(-(padded.shape[1] - w) // 2)
    padded[top_pad:top_pad + h, left_pad:left_pad + w] = pixels
    top, left = (h - height) // 2 + top_pad, (w - width) // 2 + left_pad
    return padded[max(0, top):top + height, max(0, left):left + width]


def _provider(backend: str) -> str:
    """The checker runs once per image: on the GPU where the engine runs there and ONNX Runtime can, else the CPU."""
    if backend in ("ort-cuda", "tensorrt"):
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            return "CUDAExecutionProvider"
    return "CPUExecutionProvider"
