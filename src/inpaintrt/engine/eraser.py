"""EraserEngine: remove what the mask covers with one forward pass of LaMa or MI-GAN, no prompt.

Every eraser graph speaks the same terms (engine/manifest.py, ERASER): the picture in [0, 1], the mask 1 = hole,
the fill in [0, 1]. What differs is the size it runs at: LaMa any size, a multiple of `size_multiple`
(the picture is padded at the bottom and right with numpy's "symmetric" mode, as LaMa's own prediction and
IOPaint pad, then cropped back); MI-GAN its fixed `resolution` (a square crop around the hole, resized to it
and back, as MI-GAN's own pipeline does). Where on a big picture it runs is the hd strategy
(runtime/regions.py). The output is composited: masked pixels from the model, every other pixel exactly the
input's.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from ..runtime import images as imaging
from ..runtime import masking, notices
from ..runtime.errors import InvalidArgument
from ..runtime.regions import crop_box, limited_size, mask_boxes, square_crop
from . import arguments as check
from .base import EngineBase, first_output, progress_bar
from .outputs import InpaintOutput
from .plans import fitting_plan_size

MIGAN_PADDING = 128  # MI-GAN's pipeline: context on each side of the hole's box before the resize
NOTHING_TO_ERASE = "mask_image is all black: there is nothing to erase, so the picture comes back unchanged"


class EraserEngine(EngineBase):
    """An eraser directory (families LaMa, MI-GAN); `Engine.load` returns one for it."""
    missing_methods = {
        "encode_prompt": "an eraser takes no prompt",
        "outpaint": "an eraser fills holes inside a picture; grow the canvas with a diffusion engine's outpaint",
        "inpaint_batch": "call inpaint once per picture: an eraser call is one forward pass",
    }

    def __init__(self, root, manifest: dict, opened):
        super().__init__(root, manifest, opened)
        self.default_scheduler = None
        self.size_multiple = self.model.get("size_multiple") or 1
        self.resolution = self.model.get("resolution")  # None: any size

    def facts(self) -> dict:
        return {"family": self.family, "kind": self.record.kind, "backend": self.backend, "precision": self.precision,
                "size_multiple": self.size_multiple, "resolution": self.resolution, "safety_checker": False,
                "loras": [], "embeddings": [], "controlnets": [], "image_prompts": False}

    def inpaint(self, image, mask_image=None, output_type="pil", hd_strategy="crop", hd_strategy_crop_margin=128,
                hd_strategy_crop_trigger_size=800, hd_strategy_resize_limit=1280, mask_grow=0, mask_shrink=0,
                mask_invert=False, progress=True, max_pixels=imaging.MAX_PIXELS, **diffusion) -> InpaintOutput:
        """Erase the white part of `mask_image` from `image`: one picture back, the mask's area filled from its
        surroundings, every unmasked pixel unchanged (uint8-equal for output_type="pil"; "np" gives float
        (1, H, W, 3) in [0, 1]). hd_strategy (IOPaint's): "crop" (default) runs each connected masked region
        with hd_strategy_crop_margin pixels around it when the picture's longer side exceeds
        hd_strategy_crop_trigger_size; "resize" runs the picture scaled down to hd_strategy_resize_limit on its
        longer side and keeps every original pixel outside the mask; "original" runs the whole picture.
        mask_invert / mask_grow / mask_shrink edit the mask first, as for every engine. Prompt, steps and
        the other diffusion arguments are refused by name."""
        check.refuse_diffusion(diffusion, self.record)
        strategy = check.from_table("hd_strategy", hd_strategy)
        margin, trigger, limit = (check.from_table(name, value) for name, value in (
            ("hd_strategy_crop_margin", hd_strategy_crop_margin),
            ("hd_strategy_crop_trigger_size", hd_strategy_crop_trigger_size),
            ("hd_strategy_resize_limit", hd_strategy_resize_limit)))
        if check.from_table("output_type", output_type) == "latent":
            raise InvalidArgument("output_type", "output_type='latent' is for diffusion engines; an eraser returns "
                                  "pictures: use 'pil' or 'np'", "use output_type='pil' or 'np'")
        check.mask_options("binary", "original", mask_grow, mask_shrink, mask_invert)
        picture, mask = self._load(image, mask_image, max_pixels)
        hole = np.asarray(masking.edit(mask, mask_invert, mask_grow, mask_shrink).convert("L")) >= 128
        pixels = np.asarray(picture, np.float32) / 255.0
        if not hole.any():
            notices.warn(NOTHING_TO_ERASE, stacklevel=2)
            filled = pixels
        else:
            filled = self._erase(pixels, hole, strategy, margin, trigger, limit, progress)
        if output_type == "np":
            return InpaintOutput(filled[None].astype(np.float32))
        # rounding only the model's pixels: the others are the input's bytes
        result = np.where(hole[..., None], np.round(np.clip(filled, 0, 1) * 255), np.asarray(picture))
        return InpaintOutput([Image.fromarray(result.astype(np.uint8), "RGB")])

    def erase(self, pixels: np.ndarray, hole: np.ndarray) -> np.ndarray:
        """The composited fill of float HxWx3 `pixels` in [0, 1] where the HxW bool `hole` is set, the whole
        picture in one window (hd_strategy "original"): the pre-fill diffusion engines use."""
        return self._composite(pixels, hole, self._run_window(pixels, hole))

    def _load(self, image, mask_image, max_pixels):
        picture, mask = imaging.load_pair(image, mask_image, max_pixels)  # no mask: the picture's transparent pixels
        check.same_size(imaging.picture_size(picture), imaging.picture_size(mask))
        return _as_pil(picture, "RGB"), _as_pil(mask, "L")

    def _erase(self, pixels, hole, strategy, margin, trigger, limit, progress) -> np.ndarray:
        height, width = hole.shape
        if strategy == "resize" and max(height, width) > limit:
            return self._erase_resized(pixels, hole, limit)
        if strategy == "crop" and max(height, width) > trigger:
            boxes = [crop_box(box, margin, width, height) for box in mask_boxes(hole)]
        else:
            boxes = [(0, 0, width, height)]
        out = pixels.copy()
        windows = progress_bar(progress and len(boxes) > 1, "erasing")(boxes)
        for x0, y0, x1, y1 in windows:  # each from the original picture: IOPaint's order and result
            window, window_hole = pixels[y0:y1, x0:x1], hole[y0:y1, x0:x1]
            out[y0:y1, x0:x1] = self._composite(window, window_hole, self._run_window(window, window_hole))
        return out

    def _erase_resized(self, pixels, hole, limit) -> np.ndarray:
        height, width = hole.shape
        small_w, small_h = limited_size(width, height, limit)
        small = _resize(pixels, small_w, small_h, Image.BICUBIC)
        small_hole = _resize(hole.astype(np.float32), small_w, small_h, Image.NEAREST) >= 0.5
        filled = self._composite(small, small_hole, self._run_window(small, small_hole))
        return self._composite(pixels, hole, _resize(filled, width, height, Image.BICUBIC))

    def _run_window(self, pixels, hole) -> np.ndarray:
        """The model's fill of one window, at the window's size (not yet composited)."""
        if self.resolution is None:
            return self._run_padded(pixels, hole)
        height, width = hole.shape
        if not hole.any():
            return pixels
        x0, y0, x1, y1 = square_crop(_union(hole), MIGAN_PADDING, self.resolution, width, height)
        crop, crop_hole, r = pixels[y0:y1, x0:x1], hole[y0:y1, x0:x1], self.resolution
        model_in = _resize(crop, r, r, Image.BILINEAR)
        hole_in = _resize(crop_hole.astype(np.float32), r, r, Image.NEAREST) >= 0.5
        out = pixels.copy()
        out[y0:y1, x0:x1] = _resize(self._forward(model_in, hole_in), x1 - x0, y1 - y0, Image.BILINEAR)
        return out

    def _run_padded(self, pixels, hole) -> np.ndarray:
        height, width = hole.shape
        padded_h, padded_w = self._padded_size(height, width)
        pad = ((0, padded_h - height), (0, padded_w - width))
        padded = np.pad(pixels, pad + ((0, 0),), mode="symmetric")
        padded_hole = np.pad(hole, pad, mode="symmetric")
        return self._forward(padded, padded_hole)[:height, :width]

    def _padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The size a window runs at: the next multiple of size_multiple, or on TensorRT (static plans) the
        smallest plan's size that holds it."""
        if self.backend != "tensorrt":
            return height + -height % self.size_multiple, width + -width % self.size_multiple
        plans = self.manifest["tensorrt"]["plans"]["eraser"]
        fitting = fitting_plan_size(plans, height, width)
        if fitting is None:
            built = ", ".join(f"{h}x{w}" for h, w in (p["size"] for p in plans))
            largest = max(min(p["size"]) for p in plans)
            fix = (f"erase with hd_strategy='resize' and hd_strategy_resize_limit={largest}, or 'crop' with a smaller "
                   f"margin, or build larger plans (`inpaint-build-plans --sizes`), or use backend='ort-cpu'")
            raise InvalidArgument("hd_strategy", f"a {height}x{width} window is larger than every TensorRT plan of this "
                                  f"eraser (built: {built}); {fix}", fix)
        return fitting

    def _forward(self, pixels, hole) -> np.ndarray:
        feeds = {"image": np.ascontiguousarray(pixels.transpose(2, 0, 1)[None], np.float32),
                 "mask": hole[None, None].astype(np.float32)}
        out = np.asarray(first_output(self.sessions["eraser"].run(feeds)), np.float32)[0].transpose(1, 2, 0)
        if not np.isfinite(out).all():
            raise FloatingPointError(f"the {self.record.title} eraser returned NaN or infinite pixels on {self.backend}"
                                     " (fp16 overflow?): load it with precision='fp32'")
        return np.clip(out, 0, 1)

    @staticmethod
    def _composite(pixels, hole, fill) -> np.ndarray:
        return np.where(hole[..., None], fill, pixels)


def _union(hole: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(hole.any(axis=1))[0], np.nonzero(hole.any(axis=0))[0]
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _resize(values: np.ndarray, width: int, height: int, resample) -> np.ndarray:
    """A float HxW(x3) array in [0, 1] resized with PIL, per channel in float32 (no 8-bit rounding)."""
    if values.shape[1] == width and values.shape[0] == height:
        return values
    planes = values[..., None] if values.ndim == 2 else values
    out = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(planes[..., c]), "F").resize(
        (width, height), resample)) for c in range(planes.shape[2])], axis=-1)
    return out[..., 0] if values.ndim == 2 else out


def _as_pil(picture, mode: str) -> Image.Image:
    if isinstance(picture, Image.Image):
        return picture.convert(mode)
    values = np.clip(np.asarray(picture, np.float32), 0, 1)
    values = values[..., 0] if mode == "L" and values.ndim == 3 else values
    if mode == "RGB" and values.ndim == 2:
        values = np.repeat(values[..., None], 3, axis=2)
    return Image.fromarray(np.round(values * 255).astype(np.uint8), mode)
