"""SamEngine: Segment Anything's masks from clicks and a box, as SamPredictor makes them, without torch.

The picture goes through the image encoder once (SamPredictor.set_image: longest side to `resolution` with PIL's
bilinear resize, SAM's mean / std on 0-255 RGB, zeros padding bottom and right); its embedding is kept in a
small cache keyed by the picture's pixels, so each further click on the same picture runs only the decoder.
The decoder graph takes the prompt as SAM's own ONNX export does (points, then a padding point when there is no
box; the box's corners labelled 2 and 3), in the encoder's frame (SamPredictor's apply_coords), and answers all
mask tokens at the picture's size: token 0 for multimask_output=False (SamPredictor's choice), 1.. for True.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np
from PIL import Image

from ..runtime import images as imaging
from ..runtime.errors import InvalidArgument
from . import arguments as check
from .argument_specs import SEGMENT_SPECS
from .outputs import Segmentation
from .segmenter import SegmenterEngine, check_box, check_points, check_prompt, load_rgb

EMBEDDING_CACHE_BYTES = 64 << 20  # 16 pictures' ViT embeddings (4 MiB each at 1024)


class SamEngine(SegmenterEngine):
    """A Segment Anything directory (ViT-B/L/H or MobileSAM); `Engine.load` returns one for it."""

    def __init__(self, root, manifest: dict, opened):
        super().__init__(root, manifest, opened)
        self.mask_input_size = self.model["mask_input_size"]
        self.pixel_mean = np.asarray(self.model["pixel_mean"], np.float32)
        self.pixel_std = np.asarray(self.model["pixel_std"], np.float32)
        self.embedding_cache = EmbeddingCache(EMBEDDING_CACHE_BYTES)

    def segment(self, image, points=None, labels=None, box=None, multimask_output=False, mask_input=None,
                max_pixels=imaging.MAX_PIXELS, **others) -> Segmentation:
        """Masks of the object under `points` ([x, y] pixels of the picture; `labels` 1 adds, 0 takes away,
        default all 1) and/or inside `box` ([x0, y0, x1, y1]). multimask_output=False gives one mask (SAM's first
        token, as SamPredictor), True three candidates with their predicted IoU as `scores`. mask_input: an
        earlier call's `low_res_logits[i]` on the same picture, to refine it. `logits` are at the picture's size;
        `masks` are logits > 0."""
        self.refuse_others(others)
        multimask = check.from_table("multimask_output", multimask_output, SEGMENT_SPECS["multimask_output"])
        rgb = load_rgb(image, max_pixels)
        height, width = rgb.shape[:2]
        coords, marks = check_points(points, labels, width, height)
        corners = check_box(box, width, height)
        check_prompt(coords, corners)
        feeds = {"image_embeddings": self.image_embedding(rgb), **self._prompt(coords, marks, corners, height, width),
                 **self._mask_feeds(mask_input), "orig_im_size": np.array([height, width], np.float32)}
        outputs = self.sessions["sam_decoder"].run(feeds)
        keep = slice(1, None) if multimask else slice(0, 1)
        logits, scores, low = (np.asarray(outputs[name], np.float32)[0, keep]
                               for name in ("masks", "iou_predictions", "low_res_masks"))
        if not (np.isfinite(logits).all() and np.isfinite(scores).all()):
            raise FloatingPointError(f"Segment Anything returned NaN or infinite logits on {self.backend} "
                                     "(fp16 overflow?): load it with precision='fp32'")
        return Segmentation(logits > 0.0, scores, logits, low)

    def image_embedding(self, rgb: np.ndarray) -> np.ndarray:
        """The encoder's (1, C, E, E) embedding of a uint8 HxWx3 picture, from the cache when it was seen."""
        digest = hashlib.blake2b(str(rgb.shape).encode(), digest_size=16)  # the size too: the same bytes, reshaped
        digest.update(rgb.tobytes())
        key = digest.hexdigest()
        found = self.embedding_cache.get(key)
        if found is None:
            found = np.asarray(self.sessions["sam_encoder"].run({"image": self._encoder_input(rgb)})
                               ["image_embeddings"], np.float32)
            if not np.isfinite(found).all():
                raise FloatingPointError(f"Segment Anything's image encoder returned NaN or infinite values on "
                                         f"{self.backend} (fp16 overflow?): load it with precision='fp32'")
            self.embedding_cache.put(key, found)
        return found

    def _encoder_input(self, rgb: np.ndarray) -> np.ndarray:
        height, width = rgb.shape[:2]
        new_h, new_w = self._resized(height, width)
        resized = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.BILINEAR))
        s = self.resolution
        frame = np.zeros((1, 3, s, s), np.float32)  # padded after normalising: the padding is exact zeros
        frame[0, :, :new_h, :new_w] = ((resized.astype(np.float32) - self.pixel_mean) / self.pixel_std).transpose(2, 0, 1)
        return frame

    def _resized(self, height: int, width: int) -> tuple[int, int]:
        """ResizeLongestSide.get_preprocess_shape: in Python floats, rounded half up."""
        scale = self.resolution * 1.0 / max(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def _prompt(self, coords, marks, corners, height, width) -> dict:
        """point_coords / point_labels in the encoder's frame, laid out as SAM's prompt encoder reads them."""
        new_h, new_w = self._resized(height, width)
        scale = np.array([new_w / width, new_h / height])
        parts, labels = [coords * scale], [marks]
        if corners is not None:
            parts.append(corners.reshape(2, 2) * scale)
            labels.append(np.array([2, 3], np.float32))
        else:
            parts.append(np.zeros((1, 2)))
            labels.append(np.array([-1], np.float32))
        return {"point_coords": np.concatenate(parts).astype(np.float32)[None],
                "point_labels": np.concatenate(labels).astype(np.float32)[None]}

    def _mask_feeds(self, mask_input) -> dict:
        size = self.mask_input_size
        if mask_input is None:
            return {"mask_input": np.zeros((1, 1, size, size), np.float32), "has_mask_input": np.zeros(1, np.float32)}
        try:
            found = np.asarray(mask_input, np.float32)
        except (TypeError, ValueError):
            found = np.zeros(0, np.float32)
        if found.size != size * size or not np.isfinite(found).all():
            raise InvalidArgument("mask_input", f"mask_input must be {size}x{size} finite logits (an earlier call's "
                                  f"low_res_logits[i]); got shape {found.shape}",
                                  "pass segmentation.low_res_logits[i] from a call on the same picture")
        return {"mask_input": found.reshape(1, 1, size, size), "has_mask_input": np.ones(1, np.float32)}


class EmbeddingCache:
    """The image embeddings of the last pictures, least recently used dropped first, bounded in bytes. Locked: an
    engine runs one call at a time, but nothing stops a caller's threads from sharing it. hits / misses count
    the lookups (what the cache saves)."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.hits, self.misses = max_bytes, 0, 0
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return found

    def put(self, key: str, value: np.ndarray) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > 1 and sum(v.nbytes for v in self._items.values()) > self.max_bytes:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
