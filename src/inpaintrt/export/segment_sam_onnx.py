"""SAM's two ONNX graphs: the image encoder, and the prompt encoder + mask decoder + mask postprocessing.

Encoder graph: `image` (1,3,S,S), already normalised with SAM's pixel mean / std and zero-padded bottom / right to
the S-square (S = img_size, 1024 for every official model) -> `image_embeddings` (1,256,S/16,S/16). All static.

Decoder graph: the inputs of SAM's own export (segment_anything/utils/onnx.py): `image_embeddings`,
`point_coords` (1,N,2) in the S-frame (x, y), `point_labels` (1,N) float (-1 padding, 0 negative, 1 positive,
2 / 3 box corners), `mask_input` (1,1,4E,4E) low-res logits, `has_mask_input` (1) 0 or 1, `orig_im_size` (2) float
(h, w). N is dynamic. Outputs: `masks` (1,K,h,w) logits (threshold at 0), `iou_predictions` (1,K),
`low_res_masks` (1,K,4E,4E). K is fixed at export: `multimask_output=True` gives mask tokens 1..3, False token 0
alone, as SamPredictor does for multimask_output=False (SamOnnxModel's return_single_mask instead picks by score).

The graph feeds the prompt as SamPredictor does when the runtime lays it out as SamPredictor's prompt encoder
would: points then one padding point (0, 0, label -1) when there is no box; points (if any) then the box's two
corners (labels 2, 3) when there is one.

Mask postprocessing follows SamPredictor (Sam.postprocess_masks): bilinear to S x S, crop to the resized image's
size, bilinear to orig_im_size. The two differ only in that crop size: SamPredictor's comes from
ResizeLongestSide.get_preprocess_shape in Python floats (double), `int(x * (S / max(h, w)) + 0.5)`, SamOnnxModel's
from float32 arithmetic and floor; the graph computes it in double and truncates, as the predictor.
"""
from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .eraser_lama import OPSET

DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
INLINE_LIMIT = 1 << 30  # protobuf holds 2 GiB: a bigger encoder (vit_h's is 2.5 GB) keeps its weights beside it


def crop_size(orig_im_size, img_size: int):
    """(h, w) int64 of the image resized into the S-frame, as ResizeLongestSide.get_preprocess_shape: in double
    and truncated, int(x + 0.5). (float32 as SamOnnxModel differs from it for 23 sizes with a long side <= 8192,
    e.g. 6730 x 7101 -> 970 rows, not 971.)"""
    size = orig_im_size.to(torch.float64)
    return (size * (img_size / size.max()) + 0.5).to(torch.int64)


class SamEncoderGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.image_encoder = model.image_encoder

    def forward(self, image):
        return self.image_encoder(image)


class SamDecoderGraph(nn.Module):
    def __init__(self, model, multimask_output: bool | None):
        """multimask_output: True mask tokens 1.., False token 0, None all of them (the engine's graph: the
        runtime picks, so one graph serves both answers)."""
        super().__init__()
        self.prompt_encoder, self.mask_decoder = model.prompt_encoder, model.mask_decoder
        self.img_size = model.img_size
        self.keep = slice(None) if multimask_output is None else slice(1, None) if multimask_output else slice(0, 1)

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size):
        pe = self.prompt_encoder
        sparse = pe.embed_labelled(point_coords, point_labels)
        has = has_mask_input.reshape(1, 1, 1, 1)
        dense = has * pe.mask_downscaling(mask_input) + (1 - has) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        low, iou = self.mask_decoder.predict_all(image_embeddings, pe.dense_pe(), sparse, dense)
        low, iou = low[:, self.keep], iou[:, self.keep]
        resized = crop_size(orig_im_size, self.img_size)
        masks = F.interpolate(low, (self.img_size, self.img_size), mode="bilinear", align_corners=False)
        masks = masks[..., : resized[0], : resized[1]]
        hw = orig_im_size.to(torch.int64)
        masks = F.interpolate(masks, size=(hw[0], hw[1]), mode="bilinear", align_corners=False)
        return masks, iou, low


def decoder_example(model, points: int = 3, orig=(48, 40)):
    """Inputs of the decoder graph's shapes (random values), `points` prompts, orig_im_size `orig`."""
    e, dim = model.embedding_size, model.prompt_encoder.embed_dim
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, dim, e, e, generator=g), torch.rand(1, points, 2, generator=g) * model.img_size,
            torch.tensor([[1.0, 0.0, -1.0][i % 3] for i in range(points)])[None],
            torch.randn(1, 1, 4 * e, 4 * e, generator=g), torch.ones(1), torch.tensor(orig, dtype=torch.float32))


def _export(graph: nn.Module, example, path: Path, inputs, outputs, axes, fixed=None) -> Path:
    """torch.onnx.export into a scratch folder, then one graph file (+ `<name>.data` past INLINE_LIMIT).
    `fixed` {output: {axis: size}} declares the sizes the exporter left symbolic beside a dynamic axis."""
    import onnx

    from .external_data import save_streaming, weight_bytes

    path = Path(path)
    scratch = Path(tempfile.mkdtemp(dir=path.parent))
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about python values taken from shapes
            torch.onnx.export(graph.eval(), example, str(scratch / "graph.onnx"), input_names=list(inputs),
                              output_names=list(outputs), dynamic_axes=axes, opset_version=OPSET, dynamo=False,
                              do_constant_folding=True)
        model = onnx.load(str(scratch / "graph.onnx"), load_external_data=False)
        for value in model.graph.output:
            for axis, size in (fixed or {}).get(value.name, {}).items():
                value.type.tensor_type.shape.dim[axis].dim_value = size
        if weight_bytes(model, scratch) > INLINE_LIMIT:
            save_streaming(model, scratch, path)
        else:
            onnx.load_external_data_for_model(model, str(scratch))
            onnx.save_model(model, str(path))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path


def export_sam_encoder_onnx(module, path) -> Path:
    """Write SAM's image encoder as ONNX: image (1,3,S,S) -> image_embeddings (1,256,S/16,S/16), static shapes."""
    was_training = module.training
    module.eval()
    s = module.img_size
    try:
        return _export(SamEncoderGraph(module), (torch.randn(1, 3, s, s),), path, ["image"], ["image_embeddings"], {})
    finally:
        module.train(was_training)


def export_sam_decoder_onnx(module, path, multimask_output: bool | None = True) -> Path:
    """Write SAM's prompt encoder + mask decoder + postprocessing as ONNX (see the module text for the tensors;
    multimask_output None: every mask token, as the engine's graph). Traced with 3 points and a non-square
    orig_im_size; N and the output height / width stay dynamic."""
    was_training = module.training
    module.eval()
    axes = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"},
            "masks": {2: "height", 3: "width"}}
    try:
        tokens = module.mask_decoder.num_mask_tokens
        k = tokens if multimask_output is None else tokens - 1 if multimask_output else 1
        return _export(SamDecoderGraph(module, multimask_output), decoder_example(module), path, DECODER_INPUTS,
                       DECODER_OUTPUTS, axes, fixed={"masks": {0: 1, 1: k}})
    finally:
        module.train(was_training)
