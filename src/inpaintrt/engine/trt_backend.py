"""TensorRT backend for TensorRT 10.8+ and 11.x: only Python API names both majors have (named
tensors, set_tensor_address, execute_async_v3, device_memory_size_v2, set_device_memory(ptr, size)).

- Every plan's input and output buffers are allocated once, at the largest shape of its profile;
  a call with a smaller batch uses the leading part of each buffer (batch is the outer axis, so
  that part is contiguous and starts at the same address): addresses are set once and never change.
- Contexts are created without activation memory (USER_MANAGED); one scratch buffer, as large as
  the largest plan needs, serves all of them, since the components run one after another on one
  stream (docs/architecture.md, "Backends").
- Optionally the UNet call is captured as a CUDA graph per input shape and replayed.
- A plan's inputs and outputs (names, dtypes) must be the manifest's, checked when it is loaded;
  components are whatever the manifest lists (SDXL: `text_encoder_2`, a UNet with `text_embeds` and
  `time_ids`), and an SDXL VAE that is not fp16-safe must have fp32 plans.
The TensorRT module, array module (cupy) and stream are passed in, so all of it runs in the tests
against fake TensorRT modules of both API surfaces without a GPU (tests/support/trt_fakes.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..runtime.xp import device_address
from .plans import PlanMismatchError, check_batch, check_plan_key, fp32_components, latent_sized, select_plan

# TensorRT DataType member names -> numpy dtype names; by name, so no helper that one major lacks is needed
NUMPY_DTYPES = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "INT32": "int32", "INT64": "int64",
                "UINT8": "uint8", "BOOL": "bool"}


def numpy_dtype(trt_dtype) -> np.dtype:
    name = NUMPY_DTYPES.get(trt_dtype.name)
    if name is None:
        raise ValueError(f"TensorRT tensor type {trt_dtype.name} has no numpy equivalent; inpaintrt plans take "
                         f"{', '.join(NUMPY_DTYPES)}")
    return np.dtype(name)


def plan_io(trt, engine) -> dict[str, tuple[str, str]]:
    """{tensor name: ("input" | "output", numpy dtype name)} of a deserialized plan."""
    io = {}
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        mode = "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
        io[name] = (mode, numpy_dtype(engine.get_tensor_dtype(name)).name)
    return io


def io_mismatch(trt, engine, component: dict) -> str | None:
    """How a plan's inputs and outputs differ from the manifest component's, or None when they agree.
    A strongly typed plan takes the graph's IO types, so this catches graphs converted without
    float32 IO as well as plans that belong to another export."""
    expected = {t["name"]: ("input", t["dtype"]) for t in component["inputs"]}
    expected.update({t["name"]: ("output", t["dtype"]) for t in component["outputs"]})
    got = plan_io(trt, engine)

    def describe(entry):
        return "nothing" if entry is None else f"a {entry[1]} {entry[0]}"

    return "; ".join(f"{name!r}: the plan has {describe(got.get(name))}, the manifest {describe(expected.get(name))}"
                     for name in sorted(set(got) | set(expected)) if got.get(name) != expected.get(name)) or None


class SharedScratch:
    """The one activation buffer of all execution contexts; grows when a larger plan is loaded."""

    def __init__(self, xp):
        self.xp, self.buffer, self.contexts, self.generation = xp, None, [], 0

    def attach(self, context, size: int) -> None:
        if self.buffer is None or self.buffer.nbytes < size:
            self.buffer = self.xp.empty(max(size, 1), dtype=self.xp.uint8)
            self.generation += 1  # captured CUDA graphs hold the old address: they are recaptured
            for other in self.contexts:
                other.set_device_memory(device_address(self.buffer), self.buffer.nbytes)
        self.contexts.append(context)
        context.set_device_memory(device_address(self.buffer), self.buffer.nbytes)


class PlanRunner:
    """One deserialized plan: its context, its fixed buffers, run(feeds) -> outputs (host numpy)."""

    def __init__(self, trt, engine, scratch: SharedScratch, stream, xp, cuda_graph: bool = False):
        self.engine, self.scratch, self.stream, self.xp = engine, scratch, stream, xp
        self.context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if self.context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
        # device_memory_size_v2 exists from 10.1 on; 11.x removed the unsuffixed one
        scratch.attach(self.context, engine.device_memory_size_v2)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.limits = {n: engine.get_tensor_profile_shape(n, 0) for n in self.inputs}  # (min, opt, max)
        for name in self.inputs:  # at the largest input shapes the context reports the largest outputs
            self.context.set_input_shape(name, tuple(self.limits[name][2]))
        self.buffers = {}
        for name in names:
            shape = tuple(self.limits[name][2]) if name in self.inputs else tuple(self.context.get_tensor_shape(name))
            self.buffers[name] = xp.empty(shape, dtype=numpy_dtype(engine.get_tensor_dtype(name)))
            self.context.set_tensor_address(name, device_address(self.buffers[name]))
        self.cuda_graph, self.graphs = cuda_graph, {}

    def _view(self, name: str, shape) -> object:
        buffer = self.buffers[name]
        return buffer.reshape(-1)[: int(np.prod(shape))].reshape(shape)

    def _check_shape(self, name: str, shape: tuple) -> None:
        low, _, high = (tuple(s) for s in self.limits[name])
        if len(shape) != len(high) or any(not lo <= s <= hi for s, lo, hi in zip(shape, low, high)):
            raise ValueError(f"TensorRT input {name!r} has shape {shape}; this plan takes {low} to {high}")

    def run(self, feeds: dict) -> dict[str, np.ndarray]:
        missing = set(self.inputs) - set(feeds)
        if missing:
            raise ValueError(f"TensorRT plan needs inputs {sorted(missing)}")
        with self.stream:
            for name in self.inputs:
                value = feeds[name]
                shape = tuple(value.shape)
                self._check_shape(name, shape)
                self.context.set_input_shape(name, shape)
                self._view(name, shape)[...] = self.xp.asarray(value, dtype=self.buffers[name].dtype)
            self._execute(tuple(tuple(feeds[n].shape) for n in self.inputs))
            results = {n: self._view(n, tuple(self.context.get_tensor_shape(n))) for n in self.outputs}
            host = {n: _to_host(self.xp, v) for n, v in results.items()}
        self.stream.synchronize()
        return host

    def _execute(self, shapes_key: tuple) -> None:
        key = (shapes_key, self.scratch.generation)
        graph = self.graphs.get(key) if self.cuda_graph else None
        if graph is not None:
            graph.launch(self.stream)
            return
        if not self.context.execute_async_v3(self.stream.ptr):
            raise RuntimeError("TensorRT failed to run the plan (see its log above)")
        if self.cuda_graph:  # capture after a plain run: TensorRT does its per-shape setup outside the graph
            self.stream.begin_capture()
            self.context.execute_async_v3(self.stream.ptr)
            self.graphs[key] = self.stream.end_capture()


def _to_host(xp, value) -> np.ndarray:
    return xp.asnumpy(value) if hasattr(xp, "asnumpy") else np.array(value)


class TensorRTComponent:
    """One component's plans (one per static size), each deserialized on first use."""

    def __init__(self, name: str, plans: list[dict], runtime: "TensorRTRuntime", latent: bool, cuda_graph: bool):
        self.name, self.plans, self.runtime, self.latent, self.cuda_graph = name, plans, runtime, latent, cuda_graph
        self.runners: dict[str, PlanRunner] = {}

    def _size(self, feeds: dict) -> tuple[int | None, int | None]:
        picture = next((v for v in feeds.values() if np.ndim(v) == 4), None)
        if picture is None:
            return None, None
        scale = self.runtime.vae_scale if self.latent else 1
        return picture.shape[2] * scale, picture.shape[3] * scale

    def run(self, feeds: dict) -> dict[str, np.ndarray]:
        plan = select_plan(self.plans, *self._size(feeds), self.name)
        check_batch(plan, next(iter(feeds.values())).shape[0], self.name)
        if plan["file"] not in self.runners:
            self.runners[plan["file"]] = self.runtime.open(self.name, plan["file"], self.cuda_graph)
        return self.runners[plan["file"]].run(feeds)


class TensorRTRuntime:
    """The TensorRT runtime, stream and shared scratch of one engine directory."""

    def __init__(self, root: Path, manifest: dict, trt, xp, device: dict, cuda_graph: bool = False):
        section = manifest["tensorrt"]
        check_plan_key(section, trt.__version__, device["compute_capability"], root)
        fp16 = [name for name in fp32_components(manifest["model"])
                if any(plan.get("precision", "fp16") != "fp32" for plan in section["plans"][name])]
        if fp16:  # plans from before the SDXL VAE was kept fp32: its decoder would overflow
            raise PlanMismatchError(f"the TensorRT plans of {', '.join(fp16)} in {root} are fp16, but this SDXL VAE is "
                                    f"not fp16-safe (vae_force_upcast); re-export with `inpaint-export --fp16` and "
                                    f"rebuild with `inpaint-build-plans --engine {root}`, or use backend='ort-cpu'")
        self.root, self.trt, self.xp = root, trt, xp
        self.manifest_components = manifest["components"]
        self.vae_scale = manifest["model"].get("vae_scale_factor", 1)  # erasers have no VAE
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.stream = xp.cuda.Stream(non_blocking=True)
        self.scratch = SharedScratch(xp)
        self.components = {
            name: TensorRTComponent(name, plans, self, latent=latent_sized(manifest["components"][name]),
                                    cuda_graph=cuda_graph and name == "unet")
            for name, plans in section["plans"].items()
        }

    def open(self, component: str, file: str, cuda_graph: bool) -> PlanRunner:
        engine = self.runtime.deserialize_cuda_engine((self.root / file).read_bytes())
        if engine is None:
            raise RuntimeError(f"TensorRT could not load {self.root / file}; rebuild it with "
                               f"`inpaint-build-plans --engine {self.root}`")
        mismatch = io_mismatch(self.trt, engine, self.manifest_components[component])
        if mismatch:
            raise PlanMismatchError(f"{self.root / file} does not fit the manifest ({mismatch}); rebuild the plans "
                                    f"with `inpaint-build-plans --engine {self.root}`")
        return PlanRunner(self.trt, engine, self.scratch, self.stream, self.xp, cuda_graph)
