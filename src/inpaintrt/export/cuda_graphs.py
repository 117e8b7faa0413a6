"""CUDA-optimized fp16 graphs for backend ort-cuda, made offline on any machine.

From the plain traced fp32 graph: ONNX Runtime's transformer optimizer with the fusions its CUDA
provider has (MultiHeadAttention, for which the CUDA provider picks flash / memory-efficient kernels
at run time; GroupNorm and SkipGroupNorm; BiasSplitGelu; BiasAdd; packed QKV/KV; NHWC convolution),
then the conversion to fp16 *after* fusion (the fusions match fp32 patterns). Inputs and outputs stay
float32, like every other graph of the engine. The CPU-fused graphs stay what ort-cpu runs.

Most of these operators have no CPU kernel, so the check is: run on ONNX Runtime's CPU provider when it
can (e.g. the text encoder) against torch's outputs; otherwise structural — the graph loads, every
operator is ONNX or a contrib operator the CUDA provider implements, inputs/outputs keep their types,
and the float weights are fp16 — beside the numeric check of the unfused fp16 graph the export
already makes. The manifest records the fusions applied, the operators and which check ran.
"""
from __future__ import annotations

import collections
import contextlib
import io
from pathlib import Path

from .half import EXTRA_FP32_OPS, FP16_TOLERANCE, FP32_TOLERANCE, relative_error
from .optimize import CUDA_ONLY, MODEL_TYPES

# contrib operators of the fusions above that ONNX Runtime's CUDA provider implements
CUDA_CONTRIB_OPS = {"MultiHeadAttention", "Attention", "PackedMultiHeadAttention", "GroupNorm", "SkipGroupNorm",
                    "NhwcConv", "BiasSplitGelu", "BiasAdd", "BiasGelu", "FastGelu", "Gelu", "QuickGelu",
                    "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization",
                    "EmbedLayerNormalization", "RotaryEmbedding"}
CUDA_FUSIONS = tuple(name.removeprefix("enable_") for name in CUDA_ONLY)  # what `--cuda-fusion-off` names
MIN_FP16_WEIGHT_FRACTION = 0.9  # of the float weight bytes; the rest feed ops kept in fp32


class CudaGraphError(ValueError):
    """The CUDA-optimized graph is not what ort-cuda can run (a ValueError, so the CLI prints it)."""


def model_type(component: str) -> str:
    return MODEL_TYPES["unet" if component.startswith("controlnet_") else component]  # a ControlNet is half a UNet


def optimize_for_cuda(component: str, traced: Path, output: Path, external_data_bytes: int,
                      precision: str = "fp16", fusions_off: tuple[str, ...] = ()) -> dict:
    """Fuse `traced` (weights may lie beside it) for the CUDA provider, convert to fp16 unless precision is
    "fp32" (the SDXL VAE with force_upcast), write `output` (+ `.data` when big). Returns the manifest
    record, without the check (see check_cuda_graph). fusions_off: names from CUDA_FUSIONS to leave out."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_by_fusion

    kind = model_type(component)
    options = FusionOptions(kind)
    enabled = []
    for name in CUDA_ONLY:  # those this onnxruntime has; packed QKV / KV only in fp16 (fp16-only kernels)
        on = hasattr(options, name) and (precision == "fp16" or name not in ("enable_packed_qkv", "enable_packed_kv"))
        on = on and name.removeprefix("enable_") not in fusions_off
        setattr(options, name, on)
        if on:
            enabled.append(name.removeprefix("enable_"))
    if kind == "vae":
        options.enable_attention = False  # its VAE attention fusion fails on these graphs (as for the CPU)
    with contextlib.chdir(traced.parent):  # weights stay on disk while fusing; they are read relative to it
        model = onnx.load(str(traced), load_external_data=False)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            optimized = optimize_by_fusion(model, model_type=kind, optimization_options=options)
        fused = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
        onnx.load_external_data_for_model(optimized.model, str(traced.parent))
    if precision == "fp16":
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            optimized.convert_float_to_float16(keep_io_types=True, op_block_list=DEFAULT_OP_BLOCK_LIST + EXTRA_FP32_OPS)
    model = optimized.model
    big = sum(t.ByteSize() for t in model.graph.initializer) > external_data_bytes
    output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(output), save_as_external_data=big, all_tensors_to_one_file=True,
                    location=f"{output.name}.data")
    import onnxruntime

    return {"file": output.name, "files": [output.name] + ([f"{output.name}.data"] if big else []),
            "precision": precision, "target": "cuda", "onnxruntime": onnxruntime.__version__,
            "fusion_options": enabled, "fusions_off": sorted(fusions_off), "fused": fused, "operators": operator_counts(model)}


def export_cuda_graph(component: str, traced: Path, work: Path, references: list, precision: str,
                      external_data_bytes: int, unfused: dict | None = None, fusions_off: tuple[str, ...] = ()) -> dict:
    """The exporter's step: cuda/<component>.onnx from the traced graph, checked, as its manifest record.
    `unfused`: the record of the plain fp16 graph of the same component, whose parity with torch is the
    numeric check of the fp16 conversion when the fused graph cannot run on the CPU."""
    path = work / "cuda" / f"{component}.onnx"
    record = optimize_for_cuda(component, traced, path, external_data_bytes, precision, fusions_off)
    tolerance = FP16_TOLERANCE if precision == "fp16" else FP32_TOLERANCE
    record["check"] = check_cuda_graph(path, references, precision, tolerance)
    if unfused is not None:
        record["check"]["unfused_max_rel_error"] = unfused["max_rel_error"]
    for name in record["files"]:
        (path.parent / name).chmod(0o644)
    path.parent.chmod(0o755)
    record["file"], record["files"] = f"cuda/{path.name}", [f"cuda/{name}" for name in record["files"]]
    return record


def operator_counts(model) -> dict:
    return dict(sorted(collections.Counter(
        (f"{n.domain}." if n.domain not in ("", "ai.onnx") else "") + n.op_type for n in model.graph.node).items()))


def check_cuda_graph(path: Path, references: list, precision: str = "fp16", tolerance: float = FP16_TOLERANCE) -> dict:
    """Run the graph on ONNX Runtime's CPU provider against torch's outputs when it has kernels for every
    operator; else check it structurally. Raises CudaGraphError; returns what was checked."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path), load_external_data=False)
    structure = _structure(model, references, precision)
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # NOT_IMPLEMENTED: a CUDA-only kernel
        reason = str(e).split("Failed to find kernel for ")[-1].split("(")[0] if "Failed to find kernel" in str(e) else str(e)[:200]
        return {"kind": "structural", "why_not_run": f"no CPU kernel for {reason}", **structure}
    worst = 0.0
    for inputs, expected in references:
        got = session.run(list(expected), inputs)
        worst = max(worst, relative_error(dict(zip(expected, got)), expected))
    if not worst <= tolerance:
        raise CudaGraphError(f"{path.name}: the CUDA-optimized {precision} graph differs from torch by {worst:.2e} "
                             f"(relative) on ONNX Runtime's CPU provider, more than {tolerance:g}")
    return {"kind": "onnxruntime-cpu", "max_rel_error": float(worst), **structure}


def _structure(model, references: list, precision: str) -> dict:
    from onnx import TensorProto

    unknown = sorted({n.op_type for n in model.graph.node if n.domain == "com.microsoft"} - CUDA_CONTRIB_OPS)
    other = sorted({n.domain for n in model.graph.node} - {"", "ai.onnx", "com.microsoft"})
    if unknown or other:
        raise CudaGraphError(f"the CUDA-optimized graph has operators the CUDA provider may not run: "
                             f"{unknown + other}")
    inputs, expected = references[0]
    types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}
    want = {name: onnx_type(array.dtype) for name, array in {**inputs, **expected}.items()}
    wrong = {name: (types.get(name), t) for name, t in want.items() if types.get(name) != t}
    if wrong:
        raise CudaGraphError(f"the CUDA-optimized graph changed input/output types (got, wanted): {wrong}")
    weights = collections.Counter()
    for t in model.graph.initializer:
        if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16):
            size = 2 if t.data_type == TensorProto.FLOAT16 else 4
            count = 1
            for d in t.dims:
                count *= d
            weights["fp16" if size == 2 else "fp32"] += count * size
    fraction = weights["fp16"] / max(sum(weights.values()), 1)
    if precision == "fp16" and fraction < MIN_FP16_WEIGHT_FRACTION:
        raise CudaGraphError(f"only {fraction:.0%} of the float weight bytes of the fp16 graph are fp16")
    if precision == "fp32" and weights["fp16"]:
        raise CudaGraphError("the fp32 CUDA graph has fp16 weights")
    return {"fp16_weight_fraction": round(fraction, 4)}


def onnx_type(dtype) -> int:
    from onnx import helper

    return helper.np_dtype_to_tensor_dtype(dtype)
