"""Executors for the engine's components, all with one interface: run(feeds) -> outputs.

ONNX Runtime on the CPU runs the stored fp32 graphs; TensorRT runs the plans of the manifest's
`tensorrt` section (trt_backend.py); "ort-cuda" runs ONNX Runtime's CUDA provider (ort_cuda.py).
"auto" takes TensorRT when the directory has plans that can run here, else ort-cuda when it starts,
else ONNX Runtime on the CPU, with a warning that says why (only a log line when the installed
onnxruntime has no CUDA provider at all). An explicit backend never falls back: it starts or raises.
"openvino" runs the same graphs on OpenVINO's CPU plugin in bf16 or fp32 (openvino_backend.py);
"auto" with precision="bf16" means it (never without: "auto" on the CPU stays exact fp32).
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from .families import family
from .ort_session import BackendError, OrtBackend  # noqa: F401 (BackendError: importers' home for it)
from .plans import PlanMismatchError, refuse_unplanned

BACKENDS = ("auto", "ort-cpu", "ort-cuda", "tensorrt", "openvino")
LORA_BACKENDS = ("LoRAs and textual-inversion embeddings given at load run on backends ort-cpu and ort-cuda, not "
                 "on {backend}: load with one of those, or bake the LoRAs into a new engine with `inpaint-export --lora "
                 "FILE:SCALE` (repeatable)")
TRT_INSTALL = ("install TensorRT 10.8+ or 11.x and cupy for your CUDA version on a machine with an NVIDIA GPU: "
               "`pip install 'inpaintrt[trt]'` (CUDA 12) or `pip install 'inpaintrt[trt-cu13]'` (CUDA 13)")


def load_tensorrt():
    """(tensorrt module, cupy module, {name, compute_capability} of GPU 0), or BackendError saying how to install."""
    try:
        import tensorrt as trt
    except Exception as e:  # PyPI's stub package raises on import, not only ImportError
        raise BackendError(f"TensorRT cannot be imported ({type(e).__name__}: {e}); {TRT_INSTALL}") from None
    try:
        import cupy
    except Exception as e:
        raise BackendError(f"cupy, which holds TensorRT's buffers, cannot be imported ({e}); {TRT_INSTALL}") from None
    if tuple(int(p) for p in trt.__version__.split(".")[:2]) < (10, 8):
        raise BackendError(f"TensorRT {trt.__version__} is too old; {TRT_INSTALL}")
    try:
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    except Exception as e:
        raise BackendError(f"no CUDA GPU is usable ({e}); TensorRT needs an NVIDIA GPU and driver") from None
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return trt, cupy, {"name": name, "compute_capability": f"{props['major']}.{props['minor']}"}


PRECISIONS = ("fp16", "fp32", "bf16")
# the precisions each backend can be asked for ("auto": any; tensorrt runs what its plans were built in)
BACKEND_PRECISIONS = {"ort-cuda": ("fp16", "fp32"), "openvino": ("bf16", "fp32"), "ort-cpu": ("fp32",), "tensorrt": ()}


def check_choice(name: str, precision: str | None) -> None:
    """ValueError naming the fix when `name` is no backend or cannot be asked for `precision`."""
    if name not in BACKENDS:
        raise ValueError(f"backend {name!r} is unknown; choose one of {', '.join(BACKENDS)}")
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is unknown; choose one of {', '.join(PRECISIONS)} or leave it unset")
    if precision is not None and name != "auto" and precision not in BACKEND_PRECISIONS[name]:
        where = {"fp16": "chooses ort-cuda's graphs", "bf16": "runs on OpenVINO (backend 'openvino' or 'auto')",
                 "fp32": "is not a choice there"}[precision]
        runs = BACKEND_PRECISIONS[name]
        raise ValueError(f"precision={precision!r} {where}; backend {name!r} runs " + (
            " or ".join(runs) if runs else "the precision its plans were built in") + ": leave precision unset, "
            "or choose the backend that runs it")


def check_cuda_choice(name: str, manifest: dict, cuda_options: dict | None) -> None:
    """ValueError when cuda_options are malformed or given to a backend that does not read them."""
    if cuda_options is None:
        return
    from .cuda_options import chosen_options

    chosen_options(manifest, cuda_options)
    if name not in ("auto", "ort-cuda"):
        raise ValueError(f"cuda_options are ONNX Runtime CUDA provider options; backend {name!r} does not read "
                         "them: load with backend='ort-cuda' (or 'auto'), or leave cuda_options out")


def unread_files(name: str, root: Path, manifest: dict, precision: str | None) -> set[str]:
    """Files of the manifest that opening this backend will not read, so their hashes need no check:
    OpenVINO bf16 compiles the IR it converted (from files that matched their hashes) and cached."""
    check_choice(name, precision)  # before any hashing
    if precision == "bf16" and name in ("openvino", "auto"):
        from .openvino_backend import converted_graphs

        return converted_graphs(root, manifest, precision)
    return set()


def open_backend(options, root: Path, manifest: dict, checked: set[str] = frozenset(), lora=None) -> tuple[str, dict]:
    """(the backend that runs, {component: executor}) for engine/load_options.py's options. Their
    `precision` picks ort-cuda's graphs: "fp16" (its default where the directory has them) or "fp32"
    (diffusers' exact results); "bf16" is OpenVINO on the CPU (backend "openvino", or "auto", which then
    takes it). `checked`: the files whose hashes this load checked. `lora`: engine/lora.py's Overrides,
    fused into the weights at load (ONNX Runtime's backends only)."""
    name, precision = options.backend, options.precision
    check_choice(name, precision)
    check_cuda_choice(name, manifest, options.cuda_options)
    if name == "openvino" or (name == "auto" and precision == "bf16"):
        if lora is not None:
            raise BackendError(LORA_BACKENDS.format(backend="openvino"))
        from .openvino_backend import openvino_sessions

        return "openvino", openvino_sessions(root, manifest, precision, checked)
    if name == "ort-cuda":
        from .ort_cuda import ort_cuda_sessions

        return "ort-cuda", ort_cuda_sessions(root, manifest, options, lora)
    if name == "tensorrt" or (name == "auto" and "tensorrt" in manifest):
        try:
            if lora is not None:  # refitting the plans' weights is not done yet
                raise BackendError(LORA_BACKENDS.format(backend="tensorrt"))
            return "tensorrt", _tensorrt_sessions(root, manifest, options.cuda_graph)
        except (BackendError, PlanMismatchError) as e:
            if name == "tensorrt":
                raise
            warnings.warn(f"{e}. backend='auto' runs ONNX Runtime on the CPU instead", RuntimeWarning, stacklevel=3)
    if name == "auto":
        cuda = _auto_ort_cuda(root, manifest, options, lora)
        if cuda is not None:
            return "ort-cuda", cuda
    files = {c: manifest["components"][c]["file"] for c in manifest["components"]}
    hot = hot_component(manifest)
    return "ort-cpu", {c: _ort_cpu(root / file, c == hot, lora and lora.for_graph(c, file)) for c, file in files.items()}


def _auto_ort_cuda(root: Path, manifest: dict, options, lora=None) -> dict | None:
    """ort-cuda's executors when it starts; None, saying why, when backend='auto' has to take the CPU."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():  # the plain CPU install: nothing to warn about
        logging.getLogger("inpaintrt").info("backend='auto' runs ONNX Runtime on the CPU: the installed onnxruntime "
                                            "has no CUDA provider")
        return None
    from .ort_cuda import ort_cuda_sessions

    try:
        return ort_cuda_sessions(root, manifest, options, lora)
    except BackendError as e:
        warnings.warn(f"{e}. backend='auto' runs ONNX Runtime on the CPU instead", RuntimeWarning, stacklevel=4)
        return None


def _tensorrt_sessions(root: Path, manifest: dict, cuda_graph: bool) -> dict:
    from .trt_backend import TensorRTRuntime

    refuse_unplanned(manifest, root)
    if "tensorrt" not in manifest:
        raise BackendError(f"{root} has no TensorRT plans; build them with `inpaint-build-plans --engine {root}` "
                           "or export with `inpaint-export --backend tensorrt`")
    trt, cupy, device = load_tensorrt()
    return TensorRTRuntime(root, manifest, trt, cupy, device, cuda_graph).components


def _ort_cpu(path: Path, hot: bool, initializers: dict | None = None) -> OrtBackend:
    """`hot` components run every step (the UNet): they keep ONNX Runtime's memory arena. The others
    run once per image, where the arena would only hold on to their peak (1 GB for a 512x512 decode)."""
    threads = int(os.environ.get("INPAINTRT_THREADS", "0")) or None
    return OrtBackend(path, "CPUExecutionProvider", threads, arena=hot, initializers=initializers)


def hot_component(manifest: dict) -> str:
    """The component that runs most (the UNet; an eraser's one graph): engine.precision is its precision."""
    return family(manifest["model"]["family"]).hot


def running_precision(backend: str, manifest: dict, sessions: dict, requested: str | None) -> str:
    """The precision the hot component (the UNet) runs in, as `engine.precision` reports it."""
    if backend == "openvino":
        return sessions[hot_component(manifest)].precision
    if backend == "ort-cuda":
        from .ort_cuda import graph_for_cuda

        return graph_for_cuda(manifest["components"][hot_component(manifest)], requested)[1]
    if backend == "tensorrt":
        return manifest["tensorrt"].get("precision", "fp16")
    return "fp32"
