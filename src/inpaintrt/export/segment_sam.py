"""Segment Anything (SAM ViT-B / ViT-L / ViT-H, and MobileSAM) in torch: the model, its checkpoint layout, a strict
loader, SamPredictor's prediction path as the torch reference, and (segment_sam_onnx) the two ONNX graphs.

Official checkpoints are plain state dicts with three prefixes: `image_encoder.*` (a ViT, segment_sam_vit, or
MobileSAM's TinyViT, segment_sam_tinyvit), `prompt_encoder.*` and `mask_decoder.*` (segment_sam_decoder, the same
in all four). `pixel_mean` / `pixel_std` are not in them (SAM registers them non-persistent): the runtime normalises.

Telling the variants apart (sam_layout): a ViT has `image_encoder.blocks.N`; its embedding width is
`patch_embed.proj.weight`'s first dimension, its depth the number of blocks, and its global-attention blocks are
the ones whose `attn.rel_pos_h` spans the whole grid (2 * 64 - 1 = 127 rows) instead of a 14-wide window (27 rows).
SAM's builders: vit_b 768 x 12, global (2, 5, 8, 11); vit_l 1024 x 24, (5, 11, 17, 23); vit_h 1280 x 32,
(7, 15, 23, 31); 12 / 16 / 16 heads. TinyViT has `image_encoder.layers.0.blocks.0.conv1.c.weight` instead;
MobileSAM's widths are (64, 128, 160, 320) with depths (2, 2, 6, 2).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .eraser_lama import strict_load
from .segment_sam_decoder import MaskDecoder, PromptEncoder
from .segment_sam_onnx import export_sam_decoder_onnx, export_sam_encoder_onnx  # noqa: F401  (public here)
from .segment_sam_tinyvit import TinyViT, drop_derived_keys
from .segment_sam_vit import ImageEncoderViT

EXPECTED_SAM = ("an official Segment Anything checkpoint (sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth, "
                "sam_vit_h_4b8939.pth: image_encoder.*, prompt_encoder.*, mask_decoder.*) or MobileSAM's mobile_sam.pt")


@dataclass(frozen=True)
class VitConfig:
    img_size: int = 1024
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    global_attn_indexes: tuple = (2, 5, 8, 11)
    window_size: int = 14
    mlp_ratio: float = 4.0
    out_chans: int = 256

    def build(self):
        return ImageEncoderViT(**dataclasses.asdict(self))


@dataclass(frozen=True)
class TinyVitConfig:
    img_size: int = 1024
    embed_dims: tuple = (64, 128, 160, 320)
    depths: tuple = (2, 2, 6, 2)
    num_heads: tuple = (2, 4, 5, 10)
    window_sizes: tuple = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    num_classes: int = 1000
    out_chans: int = 256

    def build(self):
        return TinyViT(**dataclasses.asdict(self))


@dataclass(frozen=True)
class DecoderConfig:
    prompt_dim: int = 256
    mask_in_chans: int = 16
    depth: int = 2
    num_heads: int = 8
    mlp_dim: int = 2048
    iou_hidden: int = 256
    num_multimask: int = 3


@dataclass(frozen=True)
class SamConfig:
    name: str
    encoder: VitConfig | TinyVitConfig
    decoder: DecoderConfig = DecoderConfig()


SAM_VARIANTS = {
    "vit_b": SamConfig("vit_b", VitConfig(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11))),
    "vit_l": SamConfig("vit_l", VitConfig(embed_dim=1024, depth=24, num_heads=16,
                                          global_attn_indexes=(5, 11, 17, 23))),
    "vit_h": SamConfig("vit_h", VitConfig(embed_dim=1280, depth=32, num_heads=16,
                                          global_attn_indexes=(7, 15, 23, 31))),
    "tiny_vit": SamConfig("tiny_vit", TinyVitConfig()),
}


class SamModel(nn.Module):
    """The three parts under their checkpoint names. `img_size` is the square frame S the encoder sees."""

    def __init__(self, config: SamConfig):
        super().__init__()
        self.config = config
        enc, dec = config.encoder, config.decoder
        self.img_size = enc.img_size
        self.embedding_size = enc.img_size // 16 if isinstance(enc, TinyVitConfig) else enc.img_size // enc.patch_size
        if enc.out_chans != dec.prompt_dim:
            raise ValueError(f"the encoder gives {enc.out_chans} channels, the decoder takes {dec.prompt_dim}")
        self.image_encoder = enc.build()
        self.prompt_encoder = PromptEncoder(dec.prompt_dim, self.embedding_size, enc.img_size, dec.mask_in_chans)
        self.mask_decoder = MaskDecoder(dec.prompt_dim, dec.depth, dec.num_heads, dec.mlp_dim, dec.iou_hidden,
                                        dec.num_multimask)


# --- layout and loading --------------------------------------------------------------------------------------

def _unwrap(state_dict: Mapping) -> Mapping:
    for key in ("model", "state_dict"):
        if key in state_dict and isinstance(state_dict[key], Mapping):
            return state_dict[key]
    return state_dict


def _indexes(state_dict: Mapping, pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in state_dict if (m := re.match(pattern, k))})


def sam_layout(state_dict: Mapping) -> str:
    """"vit_b", "vit_l", "vit_h" or "tiny_vit", read from the image encoder's keys and shapes; ValueError naming
    what was found when it is none of them."""
    state_dict = _unwrap(state_dict)
    blocks = _indexes(state_dict, r"image_encoder\.blocks\.(\d+)\.")
    if blocks:
        proj = state_dict.get("image_encoder.patch_embed.proj.weight")
        if proj is None:
            raise ValueError(f"a SAM ViT encoder with {len(blocks)} blocks but no "
                             f"image_encoder.patch_embed.proj.weight. Expected {EXPECTED_SAM}")
        dim, depth = int(proj.shape[0]), len(blocks)
        rows = {i: int(state_dict[k].shape[0]) for i in blocks
                if (k := f"image_encoder.blocks.{i}.attn.rel_pos_h") in state_dict}
        pos = state_dict.get("image_encoder.pos_embed")
        grid = int(pos.shape[1]) if pos is not None and pos.ndim == 4 else max(rows.values(), default=1) // 2 + 1
        found_global = tuple(i for i, r in rows.items() if r == 2 * grid - 1)  # spans the grid, not a window
        for name, config in SAM_VARIANTS.items():
            enc = config.encoder
            if isinstance(enc, VitConfig) and (enc.embed_dim, enc.depth) == (dim, depth):
                if found_global != enc.global_attn_indexes:
                    raise ValueError(f"a {dim}-wide, {depth}-block SAM ViT ({name}'s size) whose global-attention "
                                     f"blocks are {found_global}, not {enc.global_attn_indexes}. "
                                     f"Expected {EXPECTED_SAM}")
                return name
        raise ValueError(f"an unknown SAM ViT layout: embedding width {dim}, {depth} blocks, global-attention blocks "
                         f"{found_global} (known: vit_b 768 x 12, vit_l 1024 x 24, vit_h 1280 x 32). "
                         f"Expected {EXPECTED_SAM}")
    if "image_encoder.layers.0.blocks.0.conv1.c.weight" in state_dict:
        stages = _indexes(state_dict, r"image_encoder\.layers\.(\d+)\.")
        depths = tuple(len(_indexes(state_dict, rf"image_encoder\.layers\.{s}\.blocks\.(\d+)\.")) for s in stages)
        dims = tuple(int(state_dict[f"image_encoder.layers.{s}.downsample.conv1.c.weight"].shape[1])
                     for s in stages[:-1] if f"image_encoder.layers.{s}.downsample.conv1.c.weight" in state_dict)
        last = state_dict.get("image_encoder.neck.0.weight")
        dims += (int(last.shape[1]),) if last is not None else ()
        want = SAM_VARIANTS["tiny_vit"].encoder
        if (dims, depths) != (want.embed_dims, want.depths):
            raise ValueError(f"a TinyViT encoder with widths {dims} and depths {depths}, not MobileSAM's "
                             f"{want.embed_dims} / {want.depths}. Expected {EXPECTED_SAM}")
        return "tiny_vit"
    prefixes = sorted({k.split(".")[0] for k in state_dict})
    raise ValueError(f"not a SAM image encoder: no image_encoder.blocks.N (ViT) or image_encoder.layers.0 (TinyViT) "
                     f"keys; top-level names found: {prefixes[:8]}. Expected {EXPECTED_SAM}")


def load_sam(state_dict: Mapping, config: SamConfig | None = None) -> SamModel:
    """A SamModel shaped as the checkpoint (or as `config`, for tiny copies), loaded strictly, in eval mode."""
    state_dict = dict(_unwrap(state_dict))
    config = config or SAM_VARIANTS[sam_layout(state_dict)]
    module = SamModel(config)
    if isinstance(config.encoder, TinyVitConfig):
        state_dict = drop_derived_keys(module.image_encoder, state_dict)
    return strict_load(module, state_dict, f"SAM {config.name}", EXPECTED_SAM).eval()


# --- SamPredictor's path, the torch reference for the decoder graph -------------------------------------------

def preprocess_size(h: int, w: int, long_side: int) -> tuple[int, int]:
    """The size ResizeLongestSide gives (h, w) before padding to the square: Python floats, then int(x + 0.5)."""
    scale = long_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def postprocess_masks(masks, img_size: int, input_size, original_size):
    """SamPredictor's (Sam.postprocess_masks): bilinear up to the padded square, crop the padding, bilinear to the
    original size (align_corners False, no antialias)."""
    masks = F.interpolate(masks, (img_size, img_size), mode="bilinear", align_corners=False)
    masks = masks[..., : input_size[0], : input_size[1]]
    return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)


@torch.no_grad()
def sam_predict(model: SamModel, image_embeddings, original_size, point_coords=None, point_labels=None, box=None,
                mask_input=None, multimask_output: bool = True):
    """SamPredictor.predict_torch with return_logits: coordinates already in the S-frame, (1,N,2) / (1,N) / (1,4);
    mask_input (1,1,4E,4E). Returns (masks at original_size, iou (1,K), low-res logits (1,K,4E,4E))."""
    points = (point_coords, point_labels) if point_coords is not None else None
    sparse, dense = model.prompt_encoder(points, box, mask_input)
    low, iou = model.mask_decoder(image_embeddings, model.prompt_encoder.dense_pe(), sparse, dense, multimask_output)
    input_size = preprocess_size(*original_size, model.img_size)
    return postprocess_masks(low, model.img_size, input_size, original_size), iou, low
