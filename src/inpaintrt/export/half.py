"""fp16 copies of the traced graphs, the input of the TensorRT build (docs/architecture.md, "Backends"), and the error
measure of every parity check.

They are converted from the plain traced graph, not from the CPU-optimized one: ONNX Runtime's
fused operators (com.microsoft domain) are unknown to TensorRT's ONNX parser. Inputs and outputs
stay float32 so the runtime feeds every backend the same arrays; weights and activations are fp16.
The SDXL VAE whose config says `force_upcast` is the exception: its decoder overflows in fp16
(diffusers upcasts it to fp32 for the same reason), so its TensorRT input is an fp32 copy.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

FP32_TOLERANCE = 1e-4  # max |onnx - torch| / max |torch| of an fp32 graph
FP16_TOLERANCE = 3e-2  # max |fp16 - fp32| / max |fp32| accepted for an fp16 graph or TensorRT plan
# kept in float32: ONNX Runtime's own list (non-numeric and index ops) plus the softmax of attention,
# whose fp16 overflow turns SD 2.x images black
EXTRA_FP32_OPS = ["Softmax"]


def convert_to_fp16(traced: Path, output: Path, external_data_bytes: int) -> list[str]:
    """Write the fp16 graph of `traced` (weights may lie beside it) to `output`; return the files written."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    # shape inference through the file API works past protobuf's 2 GiB; the converter's own does not
    shaped = traced.with_name(traced.stem + ".shaped.onnx")
    onnx.shape_inference.infer_shapes_path(str(traced), str(shaped))
    model = onnx.load(str(shaped))
    model = convert_float_to_float16(
        model, keep_io_types=True, disable_shape_infer=True,
        op_block_list=DEFAULT_OP_BLOCK_LIST + EXTRA_FP32_OPS,
    )
    big = sum(t.ByteSize() for t in model.graph.initializer) > external_data_bytes
    output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(output), save_as_external_data=big, all_tensors_to_one_file=True,
                    location=f"{output.name}.data")
    shaped.unlink()
    return [output.name] + ([f"{output.name}.data"] if big else [])


def copy_fp32(traced: Path, output: Path, external_data_bytes: int) -> list[str]:
    """Write the plain traced graph (weights inline or beside it) to `output`, still fp32; return the files."""
    import onnx

    model = onnx.load(str(traced))
    big = sum(t.ByteSize() for t in model.graph.initializer) > external_data_bytes
    output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(output), save_as_external_data=big, all_tensors_to_one_file=True,
                    location=f"{output.name}.data")
    return [output.name] + ([f"{output.name}.data"] if big else [])


def relative_error(got: dict, expected: dict) -> float:
    """max |got - expected| / max |expected| over the outputs; the measure every tolerance here applies to."""
    worst = 0.0
    for name, e in expected.items():
        g = got[name].astype(np.float32)
        if not np.isfinite(g).all():
            return float("inf")
        worst = max(worst, float(np.abs(g - e).max() / max(np.abs(e).max(), 1e-12)))
    return worst
