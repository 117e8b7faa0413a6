"""Backend "ort-cuda": ONNX Runtime's CUDA provider with IO binding onto device buffers.

Run on a lent H100 (docs/benchmarks.md, "GPU"); the CPU tests run the same class on ONNX Runtime's CPU provider
with numpy buffers (binding, buffers allocated once per shape, copy-into-bound-buffers, outputs in the
feeds' module), the provider check and its missing-library message, and the fp16 decode fallback.
The CUDA provider's tunable options (convolution layout and algorithm search, arena, workspace) come
from one checked table (cuda_options.py).

- Per component one session; per input shape one binding whose input and output buffers are
  allocated once (cupy on the GPU; the last MAX_BINDINGS shapes keep theirs). A call copies the feeds
  into the bound input buffers and never rebinds, so the UNet can be replayed as a CUDA graph
  (`cuda_graph=True`: ONNX Runtime's `enable_cuda_graph`, one graph id per shape).
- A component whose output shapes follow an input's *values* (VALUE_SHAPED: Segment Anything's decoder answers
  masks of the `orig_im_size` it is given) cannot keep buffers per input shape: its inputs are bound per call
  and ONNX Runtime allocates its outputs.
- `run` returns arrays of the feeds' module: cupy feeds give cupy outputs (device to device, no
  host synchronisation: ONNX Runtime runs on our stream, `disable_synchronize_execution_providers`),
  numpy feeds give numpy outputs (one device-to-host copy).
- onnxruntime-gpu silently falls back to the CPU when CUDA or cuDNN libraries are missing: the
  session's providers are checked and a BackendError names the missing libraries and the install.
- The fp16 VAE decoder is checked for NaN/Inf; such a decode is redone with the fp32 graph and a
  warning says so (never a black image returned as fine).
"""
from __future__ import annotations

import contextlib
import ctypes
import io
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..runtime.xp import array_module, device_address, to_host
from .manifest import EngineDirectoryError
from .ort_session import ORT_TYPES, BackendError, add_initializers, lora_session_args, open_session
from .cuda_options import chosen_options, provider_options

CUDA_PROVIDER = "CUDAExecutionProvider"
CUDA_INSTALL = ("install onnxruntime-gpu and cupy for your CUDA major: `pip install 'inpaintrt[cuda]'` (CUDA 13) or "
                "`pip install 'inpaintrt[cuda12]'` (CUDA 12), then `pip uninstall -y onnxruntime && "
                "pip install --force-reinstall --no-deps onnxruntime-gpu` (the CPU build shares its module)")
# what the CUDA provider dlopens, by the CUDA major it was built for; cuDNN 9 for both
CUDA_LIBRARIES = {
    12: ["libcudart.so.12", "libcublasLt.so.12", "libcublas.so.12", "libcurand.so.10", "libcufft.so.11",
         "libcudnn.so.9"],
    13: ["libcudart.so.13", "libcublasLt.so.13", "libcublas.so.13", "libcurand.so.10", "libcufft.so.12",
         "libcudnn.so.9"],
}
MAX_BINDINGS = 8  # input shapes whose buffers stay bound, the least recently used dropped first (not under a
# CUDA graph: ONNX Runtime keeps each capture, and its replay needs the buffers it was captured with)
VALUE_SHAPED = ("sam_decoder",)  # components whose output shapes follow an input's values, not its shape
PIP_PACKAGES_CU12 = {"libcudart": "nvidia-cuda-runtime-cu12", "libcublasLt": "nvidia-cublas-cu12",
                     "libcublas": "nvidia-cublas-cu12", "libcurand": "nvidia-curand-cu12",
                     "libcufft": "nvidia-cufft-cu12", "libcudnn": "nvidia-cudnn-cu12"}


def cuda_major(ort) -> int | None:
    """The CUDA major onnxruntime-gpu was built for (None for a CPU build)."""
    version = getattr(ort, "cuda_version", "") or ""
    return int(version.split(".")[0]) if version.split(".")[0].isdigit() else None


def missing_libraries(major: int | None, load=ctypes.CDLL) -> list[str]:
    """The CUDA / cuDNN libraries of that major that cannot be loaded here."""
    missing = []
    for name in CUDA_LIBRARIES.get(major or 12, CUDA_LIBRARIES[12]):
        try:
            load(name)
        except OSError:
            missing.append(name)
    return missing


def require_cuda_provider(providers: list[str], major: int | None, load=ctypes.CDLL) -> None:
    """Raise BackendError unless the session really runs on CUDA, naming what is missing and how to install it."""
    if CUDA_PROVIDER in providers:
        return
    missing = missing_libraries(major, load)
    if missing and (major or 12) == 12:
        packages = sorted({PIP_PACKAGES_CU12[name.split(".so")[0]] for name in missing})
        how = (f"install them with `pip install 'onnxruntime-gpu[cuda,cudnn]'` (or `pip install {' '.join(packages)}`), "
               "or put the CUDA 12 toolkit and cuDNN 9 on LD_LIBRARY_PATH")
    else:
        how = (f"install the CUDA {major} runtime libraries and cuDNN 9 with `pip install 'onnxruntime-gpu[cuda,cudnn]'` "
               "or put them on LD_LIBRARY_PATH")
    what = f"cannot load {', '.join(missing)}" if missing else "did not start (its libraries load; see ONNX Runtime's log)"
    raise BackendError(f"ONNX Runtime fell back to {providers}: its CUDA provider {what}; {how}")


def load_ort_cuda():
    """(onnxruntime, cupy) ready for the CUDA provider, or BackendError saying what is missing and how to install it."""
    import onnxruntime as ort

    if CUDA_PROVIDER not in ort.get_available_providers():
        raise BackendError(f"the installed onnxruntime {ort.__version__} has no CUDA provider (it offers "
                           f"{ort.get_available_providers()}); {CUDA_INSTALL}")
    try:
        import cupy
    except Exception as e:
        raise BackendError(f"cupy, which holds ort-cuda's device buffers, cannot be imported ({e}); {CUDA_INSTALL}") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        raise BackendError(f"no CUDA GPU is usable ({e}); ort-cuda needs an NVIDIA GPU and driver") from None
    if count < 1:
        raise BackendError("no CUDA GPU is visible; ort-cuda needs an NVIDIA GPU and driver")
    ours, theirs = cuda_major(ort), cupy.cuda.runtime.runtimeGetVersion() // 1000
    if ours is not None and ours != theirs:
        raise BackendError(f"onnxruntime-gpu is built for CUDA {ours} but cupy for CUDA {theirs}; install cupy-cuda{ours}x "
                           f"(or the onnxruntime-gpu build for CUDA {theirs})")
    if hasattr(ort, "preload_dlls"):  # finds the CUDA / cuDNN of NVIDIA's pip packages; it prints what fails
        with contextlib.redirect_stdout(io.StringIO()):
            with contextlib.suppress(Exception):
                ort.preload_dlls()
    return ort, cupy


class _Binding:
    """The buffers and IO binding of one input shape: allocated and bound once, then only copied into."""

    def __init__(self, component: "BoundComponent", feeds: dict, graph_id: int):
        c, xp = component, component.xp
        self.graph_id = graph_id
        self.inputs = {name: xp.empty(tuple(v.shape), c.input_types[name]) for name, v in feeds.items()}
        # the output shapes come from one unbound run of this shape (ONNX Runtime allocates them), after
        # which the real binding gets buffers of its own
        probe = c.session.io_binding()
        for name, value in feeds.items():
            self._copy(self.inputs[name], value, xp)
            probe.bind_input(name, c.device_type, c.device_id, self.inputs[name].dtype, list(value.shape),
                             device_address(self.inputs[name]))
        for name in c.output_names:
            probe.bind_output(name, c.device_type, c.device_id)
        c.session.run_with_iobinding(probe, c.run_options(-1))
        first = dict(zip(c.output_names, probe.copy_outputs_to_cpu()))
        self.outputs = {name: xp.empty(value.shape, value.dtype) for name, value in first.items()}
        self.first = first
        self.io = c.session.io_binding()
        for name, buf in self.inputs.items():
            self.io.bind_input(name, c.device_type, c.device_id, buf.dtype, list(buf.shape), device_address(buf))
        for name, buf in self.outputs.items():
            self.io.bind_output(name, c.device_type, c.device_id, buf.dtype, list(buf.shape), device_address(buf))
        self.options = c.run_options(graph_id)

    @staticmethod
    def _copy(buffer, value, xp):
        buffer[...] = value if array_module(value) is xp else xp.asarray(value)


class BoundComponent:
    """One ONNX Runtime session run through IO binding. With provider CUDAExecutionProvider the buffers
    are cupy arrays on the GPU; the tests run the same code on the CPU provider with numpy buffers."""

    def __init__(self, path: Path, ort, xp, provider: str = CUDA_PROVIDER, device_id: int = 0,
                 cuda_graph: bool = False, stream=None, threads: int | None = None,
                 options_for_cuda: dict | None = None, initializers: dict | None = None, value_shaped: bool = False):
        if cuda_graph and value_shaped:
            raise ValueError("a CUDA graph replays fixed output shapes; a value-shaped component has none")
        self.xp, self.device_id, self.cuda_graph, self.stream = xp, device_id, cuda_graph, stream
        self.value_shaped = value_shaped
        self.device_type = "cuda" if provider == CUDA_PROVIDER else "cpu"
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        self.overrides = add_initializers(ort, options, initializers)  # LoRA-fused weights (engine/lora.py)
        if provider == CUDA_PROVIDER:
            # options_for_cuda: checked {name: value} (cuda_options.py), on top of the engine's defaults
            self.provider_options = provider_options(device_id, cuda_graph, None if stream is None else stream.ptr,
                                                     options_for_cuda or {})
            providers = [(CUDA_PROVIDER, self.provider_options)]
        else:
            providers = [provider]
        self._ort = ort
        try:
            self.session = open_session(ort, path, options, providers, **lora_session_args(initializers))
        except Exception as e:
            if not cuda_graph or isinstance(e, EngineDirectoryError):
                raise
            raise BackendError(f"ONNX Runtime cannot capture {path.name} as a CUDA graph ({e}); "
                               "load with cuda_graph=False") from None
        if provider == CUDA_PROVIDER:
            require_cuda_provider(self.session.get_providers(), cuda_major(ort))
        self.input_types = {i.name: ORT_TYPES[i.type] for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.bindings: OrderedDict[tuple, _Binding] = OrderedDict()

    def run_options(self, graph_id: int):
        options = self._ort.RunOptions()
        if self.cuda_graph:
            options.add_run_config_entry("gpu_graph_id", str(graph_id))
        if self.stream is not None:  # ordering lives on the stream; no host wait at the end of each run
            options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        return options

    def _stream(self):
        return self.stream if self.stream is not None else contextlib.nullcontext()

    def run(self, feeds: dict) -> dict:
        on_host = all(array_module(v) is np for v in feeds.values())
        if self.value_shaped:
            return self._run_unbound_outputs(feeds, on_host)
        key = tuple(sorted((name, tuple(v.shape)) for name, v in feeds.items()))
        with self._stream():
            binding = self.bindings.get(key)
            if binding is None:
                graph_id = len(self.bindings) if self.cuda_graph else -1
                binding = self.bindings[key] = _Binding(self, feeds, graph_id)
                if not self.cuda_graph and len(self.bindings) > MAX_BINDINGS:  # a server sees endless sizes
                    self.bindings.popitem(last=False)
                outputs = binding.first  # this shape's first call already ran
                binding.first = None
                return outputs if on_host else {k: self.xp.asarray(v) for k, v in outputs.items()}
            self.bindings.move_to_end(key)
            for name, value in feeds.items():
                _Binding._copy(binding.inputs[name], value, self.xp)
            self.session.run_with_iobinding(binding.io, binding.options)
            # copies: the next call (or the graph replay) overwrites the bound buffers
            if on_host:
                return {name: to_host(buf).copy() for name, buf in binding.outputs.items()}
            return {name: buf.copy() for name, buf in binding.outputs.items()}

    def _run_unbound_outputs(self, feeds: dict, on_host: bool) -> dict:
        """One call with its inputs bound as they come and outputs ONNX Runtime allocates (their shape is
        known only once the graph has read the inputs' values); the outputs come back through the host."""
        xp = self.xp
        io = self.session.io_binding()
        inputs = {name: xp.empty(tuple(value.shape), self.input_types[name]) for name, value in feeds.items()}
        for name, buf in inputs.items():
            _Binding._copy(buf, feeds[name], xp)
            io.bind_input(name, self.device_type, self.device_id, buf.dtype, list(buf.shape), device_address(buf))
        for name in self.output_names:
            io.bind_output(name, self.device_type, self.device_id)
        with self._stream():
            self.session.run_with_iobinding(io, self.run_options(-1))
            outputs = dict(zip(self.output_names, io.copy_outputs_to_cpu()))
        return outputs if on_host else {name: xp.asarray(value) for name, value in outputs.items()}


class CheckedDecoder:
    """The fp16 VAE decoder, redone with the fp32 graph when its output has NaN or Inf (fp16 overflow).
    The check is one reduction and one host read per decoded image."""

    def __init__(self, fp16, make_fp32, name: str = "vae_decoder"):
        self.fp16, self.make_fp32, self.name = fp16, make_fp32, name
        self.fp32 = None

    def run(self, feeds: dict) -> dict:
        outputs = self.fp16.run(feeds)
        if all(bool(array_module(v).isfinite(v).all()) for v in outputs.values()):
            return outputs
        warnings.warn(f"the fp16 {self.name} produced NaN or infinite values (fp16 overflow); decoding again with "
                      "the fp32 graph", RuntimeWarning, stacklevel=2)
        if self.fp32 is None:
            self.fp32 = self.make_fp32()
        return self.fp32.run(feeds)


def graph_for_cuda(component: dict, precision: str | None = None) -> tuple[str, str]:
    """(file, precision) ort-cuda runs for a manifest component: the CUDA-optimized fp16 graph of
    `inpaint-export --fp16`, else the plain fp16 graph, else the fp32 one; precision "fp32" takes the
    fp32 graph."""
    for key in ("cuda", "fp16") if precision != "fp32" else ():
        if key in component:
            return component[key]["file"], component[key].get("precision", "fp16")
    return component["file"], "fp32"


def ort_cuda_sessions(root: Path, manifest: dict, options, lora=None) -> dict:
    """{component: executor} on the GPU, or BackendError, for engine/load_options.py's options. Their
    cuda_options: CUDA provider options over the manifest's `cuda.provider_options` (cuda_options.py names
    those accepted). lora: engine/lora.py's Overrides, applied to each graph that runs (fp16 graphs get
    fp16 weights)."""
    cuda_graph, precision, cuda_options = options.cuda_graph, options.precision, options.cuda_options
    chosen = chosen_options(manifest, cuda_options)
    graphs = {name: graph_for_cuda(c, precision) for name, c in manifest["components"].items()}
    if precision == "fp16" and not any(p == "fp16" for _, p in graphs.values()):
        raise BackendError(f"{root} has no fp16 graphs; export with `inpaint-export --fp16`, or load with "
                           "precision='fp32'")
    ort, cupy = load_ort_cuda()
    stream = cupy.cuda.Stream(non_blocking=False)  # blocking: the loop's default-stream math waits for it

    def open_one(name: str, file: str, graph: bool = False) -> BoundComponent:
        return BoundComponent(root / file, ort, cupy, CUDA_PROVIDER, cupy.cuda.Device().id, graph, stream,
                              options_for_cuda=chosen, initializers=lora and lora.for_graph(name, file),
                              value_shaped=name in VALUE_SHAPED)

    sessions = {}
    for name, component in manifest["components"].items():
        file, graph_precision = graphs[name]
        executor = open_one(name, file, cuda_graph and name == "unet")
        if name == "vae_decoder" and graph_precision == "fp16":
            executor = CheckedDecoder(executor, lambda c=component: open_one("vae_decoder", c["file"]))
        sessions[name] = executor
    if precision is None and not any(p == "fp16" for _, p in graphs.values()):
        warnings.warn(f"{root} has no fp16 graphs; ort-cuda runs the fp32 ones. Export with `inpaint-export --fp16` "
                      "for the CUDA-optimized fp16 graphs", RuntimeWarning, stacklevel=3)
    return sessions
