"""Executors for one exported component, all with one interface: run(feeds) -> outputs.

Only ONNX Runtime on the CPU exists so far; GPU providers and TensorRT plug in here.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

BACKENDS = ("auto", "ort-cpu", "ort-cuda", "tensorrt")


class BackendError(RuntimeError):
    """A backend was requested that cannot start on this machine."""


class OrtBackend:
    """One ONNX Runtime session; checks that the provider asked for is the one that runs."""

    def __init__(self, path: Path, provider: str = "CPUExecutionProvider", threads: int | None = None,
                 arena: bool = True):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.enable_cpu_mem_arena = arena
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=[provider])
        if self.session.get_providers()[0] != provider:
            raise BackendError(f"ONNX Runtime did not start {provider} (it runs {self.session.get_providers()})")
        self.input_types = {i.name: _NP_TYPES[i.type] for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {name: np.ascontiguousarray(value, dtype=self.input_types[name]) for name, value in feeds.items()}
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))


_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
             "tensor(int32)": np.int32, "tensor(double)": np.float64}


def resolve_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend {name!r} is unknown; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        return "ort-cpu"
    if name != "ort-cpu":
        raise BackendError(f"backend {name!r} is not available in this inpaintrt yet; use backend='ort-cpu'")
    return name


def create_backend(name: str, path: Path, hot: bool = True):
    """`hot` components run every step (the UNet): they keep ONNX Runtime's memory arena. The others
    run once per image, where the arena would only hold on to their peak (1 GB for a 512x512 decode)."""
    threads = int(os.environ.get("INPAINTRT_THREADS", "0")) or None
    return OrtBackend(path, "CPUExecutionProvider", threads, arena=hot)
