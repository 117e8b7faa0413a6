"""Tiny Segment Anything models with the official key structure and random weights, SamPredictor-style prompts in
the decoder graph's form, and (when its wheel is on disk) the official segment_anything modeling code as a
reference, imported without its package __init__ (which needs torchvision)."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import torch

from inpaintrt.export.segment_sam import DecoderConfig, SamConfig, SamModel, TinyVitConfig, VitConfig

# 128-pixel frame, 16-pixel patches: an 8 x 8 embedding; a 3-wide window pads it to 9 x 9, as SAM's 14 pads 64
TINY_DECODER = DecoderConfig(prompt_dim=32, mask_in_chans=16, depth=2, num_heads=2, mlp_dim=64, iou_hidden=24)
TINY_VIT = SamConfig("tiny-vit-b", VitConfig(img_size=128, patch_size=16, embed_dim=32, depth=3, num_heads=2,
                                             global_attn_indexes=(1,), window_size=3, out_chans=32), TINY_DECODER)
# stages at 32, 16, 8, 8: windows 5 and 3 pad, 4 fits exactly
TINY_TINYVIT = SamConfig("tiny-mobile", TinyVitConfig(img_size=128, embed_dims=(8, 16, 24, 32), depths=(1, 1, 2, 1),
                                                      num_heads=(1, 2, 3, 4), window_sizes=(7, 5, 3, 4),
                                                      num_classes=10, out_chans=32), TINY_DECODER)
SAM_WHEEL = Path(os.environ.get("INPAINTRT_SAM_WHEEL", "/tmp/samref/segment_anything-1.0-py3-none-any.whl"))
_TOKENS = ("pos_embed", "point_embeddings.0.weight", "point_embeddings.1.weight", "point_embeddings.2.weight",
           "point_embeddings.3.weight", "not_a_point_embed.weight", "no_mask_embed.weight", "iou_token.weight",
           "mask_tokens.weight", "positional_encoding_gaussian_matrix", "rel_pos_h", "rel_pos_w", "attention_biases")


def randomize_sam(module, seed: int):
    """Random values for every tensor at scales that keep activations moderate: learned tokens and position
    tables at unit scale (they stand in for trained ones), linear and conv weights 1/sqrt(fan-in)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                t.fill_(7)  # num_batches_tracked
            elif name.endswith(_TOKENS):
                t.copy_(torch.randn(t.shape, generator=g) * (0.5 if "rel_pos" in name or "biases" in name else 1.0))
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif t.ndim == 1:  # norm scales
                t.copy_(1 + 0.2 * torch.randn(t.shape, generator=g))
            else:
                t.copy_(torch.randn(t.shape, generator=g) / t[0].numel() ** 0.5)
    return module.eval()


def tiny_sam(config=TINY_VIT, seed: int = 3) -> SamModel:
    return randomize_sam(SamModel(config), seed)


def graph_prompt(points=None, labels=None, box=None):
    """The decoder graph's (point_coords, point_labels) for SamPredictor's prompt: points, then a padding point
    when there is no box, then the box's corners labelled 2 and 3."""
    coords, marks = [], []
    if points is not None:
        coords.append(np.asarray(points, np.float32).reshape(-1, 2))
        marks.append(np.asarray(labels, np.float32).reshape(-1))
    if box is not None:
        coords.append(np.asarray(box, np.float32).reshape(2, 2))
        marks.append(np.array([2, 3], np.float32))
    elif points is not None:
        coords.append(np.zeros((1, 2), np.float32))
        marks.append(np.array([-1], np.float32))
    return np.concatenate(coords)[None], np.concatenate(marks)[None]


def _official_folder(tmp_root: Path | None) -> Path | None:
    """segment_anything's package folder: installed (`pip install --no-deps segment-anything==1.0`, as the README's
    test command does), else the wheel at SAM_WHEEL unpacked into tmp_root."""
    spec = importlib.util.find_spec("segment_anything") if "segment_anything" not in sys.modules else None
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    if not SAM_WHEEL.is_file() or tmp_root is None:
        return None
    with zipfile.ZipFile(SAM_WHEEL) as wheel:
        wheel.extractall(tmp_root)
    return tmp_root / "segment_anything"


def official_sam(tmp_root: Path | None = None):
    """(modeling, build_sam, utils.onnx) of segment-anything 1.0, or None when neither installed nor on disk. The
    package is registered without running its __init__ (which imports torchvision)."""
    if "segment_anything" not in sys.modules:
        folder = _official_folder(tmp_root)
        if folder is None:
            return None
        package = types.ModuleType("segment_anything")
        package.__path__ = [str(folder)]
        sys.modules["segment_anything"] = package
    return tuple(importlib.import_module(f"segment_anything.{m}") for m in ("modeling", "build_sam", "utils.onnx"))


def official_predictor(tmp_root: Path | None = None):
    """segment-anything's SamPredictor class, or None. Its transforms import torchvision for two PIL helpers
    (to_pil_image, and resize, which on a PIL picture is PIL's own bilinear resize); torchvision's wheel does not
    import beside this CPU torch, so those two are PIL itself while the module is imported, and nothing else."""
    if official_sam(tmp_root) is None:
        return None
    if "segment_anything.predictor" not in sys.modules:
        from PIL import Image

        functional = types.ModuleType("torchvision.transforms.functional")
        functional.to_pil_image = lambda array: Image.fromarray(array)
        functional.resize = lambda picture, size: picture.resize((size[1], size[0]), Image.BILINEAR)
        shims = {"torchvision": types.ModuleType("torchvision"),
                 "torchvision.transforms": types.ModuleType("torchvision.transforms"),
                 "torchvision.transforms.functional": functional}
        saved = {name: sys.modules.get(name) for name in shims}
        sys.modules.update(shims)
        try:
            importlib.import_module("segment_anything.predictor")
        finally:  # gone again: other code probing for torchvision must not find the stand-in
            for name, module in saved.items():
                if module is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = module
    return sys.modules["segment_anything.predictor"].SamPredictor


def official_tiny(modeling, config: SamConfig = TINY_VIT):
    """The official Sam built at TINY_VIT's sizes with the builders' fixed choices (rel pos, LayerNorm eps 1e-6)."""
    from functools import partial

    enc, dec = config.encoder, config.decoder
    grid = enc.img_size // enc.patch_size
    return modeling.Sam(
        image_encoder=modeling.ImageEncoderViT(
            img_size=enc.img_size, patch_size=enc.patch_size, embed_dim=enc.embed_dim, depth=enc.depth,
            num_heads=enc.num_heads, mlp_ratio=enc.mlp_ratio, out_chans=enc.out_chans, qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
            global_attn_indexes=enc.global_attn_indexes, window_size=enc.window_size),
        prompt_encoder=modeling.PromptEncoder(embed_dim=dec.prompt_dim, image_embedding_size=(grid, grid),
                                              input_image_size=(enc.img_size, enc.img_size),
                                              mask_in_chans=dec.mask_in_chans),
        mask_decoder=modeling.MaskDecoder(
            num_multimask_outputs=dec.num_multimask, transformer_dim=dec.prompt_dim,
            transformer=modeling.TwoWayTransformer(depth=dec.depth, embedding_dim=dec.prompt_dim,
                                                   mlp_dim=dec.mlp_dim, num_heads=dec.num_heads),
            iou_head_depth=3, iou_head_hidden_dim=dec.iou_hidden),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375]).eval()
