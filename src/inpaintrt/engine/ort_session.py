"""One ONNX Runtime session and the error every backend raises: the leaf the backends all import.

OrtBackend runs a stored graph on the CPU provider; the weight overrides (LoRA-fused copies) and the
type map are shared with ort_cuda.py's IO-bound sessions.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


class BackendError(RuntimeError):
    """A backend was requested that cannot start on this machine."""


class OrtBackend:
    """One ONNX Runtime session; checks that the provider asked for is the one that runs."""

    def __init__(self, path: Path, provider: str = "CPUExecutionProvider", threads: int | None = None,
                 arena: bool = True, initializers: dict | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.enable_cpu_mem_arena = arena
        if threads:
            options.intra_op_num_threads = threads
        self.overrides = add_initializers(ort, options, initializers)
        self.session = open_session(ort, path, options, [provider], **lora_session_args(initializers))
        if self.session.get_providers()[0] != provider:
            raise BackendError(f"ONNX Runtime did not start {provider} (it runs {self.session.get_providers()})")
        self.input_types = {i.name: ORT_TYPES[i.type] for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {name: np.ascontiguousarray(value, dtype=self.input_types[name]) for name, value in feeds.items()}
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))


# ONNX Runtime's refusals of a graph file itself: a damaged engine directory, not a backend that cannot start
_GRAPH_ERRORS = ("InvalidProtobuf", "InvalidGraph", "NoSuchFile")


def open_session(ort, path: Path, options, providers: list, **kwargs):
    """ort.InferenceSession, its refusal of a damaged graph file an EngineDirectoryError naming the file (ONNX
    Runtime's own errors are plain Exceptions, which the command lines would show as tracebacks)."""
    from .manifest import EngineDirectoryError

    try:
        return ort.InferenceSession(str(path), options, providers=providers, **kwargs)
    except Exception as e:
        if type(e).__name__ in _GRAPH_ERRORS:
            raise EngineDirectoryError(f"{path} cannot be loaded by ONNX Runtime ({str(e)[:300]}); the engine "
                                       "directory is damaged: re-export it with `inpaint-export`") from None
        raise


# ONNX Runtime's CPU layout transform (NCHWc) reorders convolution weights from the stored values, not
# from the overrides (measured on onnxruntime 1.32: conv LoRAs had no effect): off where weights are overridden
LORA_DISABLED_OPTIMIZERS = ["NchwcTransformer"]


def lora_session_args(initializers: dict | None) -> dict:
    return {"disabled_optimizers": LORA_DISABLED_OPTIMIZERS} if initializers else {}


def add_initializers(ort, options, initializers: dict | None) -> list:
    """Replace stored weights with `initializers` ({name: array}: LoRA-fused copies, engine/lora.py) in the
    session these options open (open it with **lora_session_args(initializers)). The returned
    OrtValues and arrays must outlive the session."""
    kept = []
    for name, array in (initializers or {}).items():
        value = ort.OrtValue.ortvalue_from_numpy(array)
        options.add_initializer(name, value)
        kept.append((array, value))
    return kept


ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
             "tensor(int32)": np.int32, "tensor(double)": np.float64}
