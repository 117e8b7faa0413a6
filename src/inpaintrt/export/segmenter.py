"""Export a mask maker into an engine directory: Segment Anything here, CLIPSeg through segment_clipseg.

Segment Anything's sources are the official checkpoints (sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth,
sam_vit_h_4b8939.pth) and MobileSAM's mobile_sam.pt, plain state dicts read by the eraser's tensors-only
unpickler, or the same weights as .safetensors; the variant is told from the weights (segment_sam.sam_layout).
Two components go through the same component export as every other: `sam_encoder` (the picture, once) and
`sam_decoder` (each click; every mask token, so one graph answers multimask_output True and False).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..engine.families import CLIPSEG, SAM, family
from ..engine.manifest import SEGMENTER
from .exporter import export_component, library_versions, check_output, engine_directory, ExportError
from .segment_sam import EXPECTED_SAM, SamModel, load_sam
from .segment_sam_onnx import DECODER_INPUTS, DECODER_OUTPUTS, SamDecoderGraph, SamEncoderGraph, decoder_example
from .specs import ComponentSpec, TensorSpec

SEGMENTER_KINDS = (SAM, CLIPSEG)
# SAM's normalisation of 0-255 RGB (not stored in its checkpoints: Sam registers them as non-persistent buffers)
SAM_PIXEL_MEAN, SAM_PIXEL_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


class SegmenterSourceError(ValueError):
    """The source is not a mask maker's checkpoint this export reads (the message says what it expected)."""


def detect_segmenter(source: str | Path) -> str | None:
    """SAM or CLIPSEG when `source` looks like a mask maker's checkpoint (its path alone; a folder's config), else None."""
    path = Path(source)
    if path.is_dir():
        from .segment_clipseg import detect_clipseg

        return CLIPSEG if detect_clipseg(path) else None
    name = path.name.lower()  # the official files' names; a .safetensors named so may be anything: --kind sam
    named = name.startswith(("sam_", "mobile_sam")) or "segment_anything" in name or "mobilesam" in name
    return SAM if named and path.suffix in (".pth", ".pt") else None


def export_segmenter(source: str | Path, output: str | Path, kind: str | None = None, overwrite: bool = False,
                     optimize: bool = True, fp16: bool = False, log=print) -> Path:
    kind = kind or detect_segmenter(source)
    if kind is None:
        raise SegmenterSourceError(f"{source}: its name says neither Segment Anything (sam_*.pth, mobile_sam.pt) nor "
                                   "CLIPSeg (a folder whose config.json has model_type clipseg); pass --kind sam or "
                                   "--kind clipseg")
    if kind not in SEGMENTER_KINDS:
        raise SegmenterSourceError(f"--kind {kind!r} is not a mask maker; choose one of {', '.join(SEGMENTER_KINDS)}")
    if kind == CLIPSEG:
        from .segment_clipseg import export_clipseg

        return export_clipseg(source, output, overwrite=overwrite, optimize=optimize, fp16=fp16, log=log)
    check_output(Path(output), overwrite)  # before the checkpoint is read
    return export_sam(read_sam(source), output, str(source), overwrite, optimize, fp16, log)


def read_sam(source: str | Path) -> SamModel:
    """The SamModel of an official checkpoint file (.pth / .pt, or .safetensors), loaded strictly."""
    path = Path(source)
    if not path.is_file():
        raise SegmenterSourceError(f"--model {str(source)!r} is not a file; pass {EXPECTED_SAM}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        weights = load_file(str(path))
    else:
        from .eraser import EraserSourceError, read_state_dict

        try:
            weights = read_state_dict(path)
        except EraserSourceError as e:
            raise SegmenterSourceError(str(e)) from None
    try:
        return load_sam(weights)
    except ValueError as e:
        raise SegmenterSourceError(f"{path}: {e}") from None


def sam_specs(model: SamModel) -> list[ComponentSpec]:
    s, e, dim = model.img_size, model.embedding_size, model.prompt_encoder.embed_dim
    tokens = model.mask_decoder.num_mask_tokens

    def encoder_inputs(batch, height, width):
        return (torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(height)),)

    def decoder_inputs(points, height, width):  # "batch" is the number of prompt points here
        inputs = list(decoder_example(model, points, (height, width)))
        inputs[4] = torch.ones(1) * (points % 2)  # with and without a mask input
        return tuple(inputs)

    encoder = ComponentSpec(
        "sam_encoder", SamEncoderGraph(model).eval(), [TensorSpec("image", "float32", (1, 3, s, s))],
        [TensorSpec("image_embeddings", "float32", (1, dim, e, e))], encoder_inputs, [(1, s, s)])
    shapes = dict(zip(DECODER_INPUTS, [(1, dim, e, e), (1, "num_points", 2), (1, "num_points"),
                                       (1, 1, 4 * e, 4 * e), (1,), (2,)]))
    decoder = ComponentSpec(
        "sam_decoder", SamDecoderGraph(model, None).eval(),
        [TensorSpec(name, "float32", shape) for name, shape in shapes.items()],
        [TensorSpec(name, "float32", shape) for name, shape in zip(DECODER_OUTPUTS, [
            (1, tokens, "height", "width"), (1, tokens), (1, tokens, 4 * e, 4 * e)])],
        # non-square sizes both ways, with and without a box's corners' worth of points
        decoder_inputs, [(3, 48, 40), (2, 37, 61), (5, 300, 17)])
    return [encoder, decoder]


def export_sam(model: SamModel, output: str | Path, source: str = "", overwrite: bool = False, optimize: bool = True,
               fp16: bool = False, log=print) -> Path:
    """Write a Segment Anything engine directory, atomically: a failure leaves nothing. fp16 adds the encoder's
    fp16 graphs (ort-cuda); the decoder stays fp32 there (orig_im_size's pixel counts pass 2048, fp16's last
    exact integer)."""
    with engine_directory(output, overwrite, log) as (work, manifest):
        components = {}
        for spec in sam_specs(model):
            log(f"exporting {spec.name} ...")
            half = ("fp32" if spec.name == "sam_decoder" else "fp16") if fp16 else None
            components[spec.name] = export_component(spec, work, optimize, half)
            log(f"  {spec.name}: max relative error vs torch {components[spec.name]['parity']['max_rel_error']:.2e}")
        model_info = {"family": SAM, "kind": SEGMENTER, "resolution": model.img_size, "variant": model.config.name,
                      "embedding_size": model.embedding_size, "mask_input_size": 4 * model.embedding_size,
                      "mask_tokens": model.mask_decoder.num_mask_tokens, "pixel_mean": list(SAM_PIXEL_MEAN),
                      "pixel_std": list(SAM_PIXEL_STD), "parameters": sum(p.numel() for p in model.parameters())}
        manifest.update(source=source, model=model_info, components=components, versions=library_versions())
    log(f"wrote {family(SAM).title} ({model.config.name}) engine to {output}")
    return Path(output)


__all__ = ["ExportError", "SegmenterSourceError", "detect_segmenter", "export_segmenter", "export_sam", "read_sam"]
