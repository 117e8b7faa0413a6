"""Stand-ins for TensorRT in the tests: a fake `tensorrt` module per Python API surface, a cupy stand-in
on numpy, a stream that records CUDA graph capture, and engines whose "kernel" reads and writes the memory
at the addresses the backend set (a UNet-like toy, and ONNX Runtime running the graph a fake plan names).

Each surface holds the names this project calls plus the documented differences between the majors
(NVIDIA's "Migrating from TensorRT 10.x to 11.x" and its removed Python APIs), and nothing else, so a
call to a name that one major lacks raises AttributeError in a test:
- "10.x" (10.8 to 10.16): BuilderFlag.FP16 and the other precision flags, Builder.platform_has_fast_fp16,
  strong typing only with NetworkDefinitionCreationFlag.STRONGLY_TYPED, unsuffixed and _v2 memory sizes.
- "11.x": every network strongly typed (the flag is accepted and ignored), no precision flags, no
  platform_has_fast_fp16, only the _v2 memory sizes; no trt.nptype (11.x's documents do not confirm it).
A fake build writes a JSON "plan": the graph's path and bytes (self-contained, like a plan: it still runs
after an export renames its directory), its profile, whether the network was strongly typed, the builder
flags set. The fake runtime turns it into an engine that runs the graph.
"""
from __future__ import annotations

import base64
import ctypes
import enum
import itertools
import json
import types

import numpy as np

VERSIONS = {"10.x": "10.8.0.43", "11.x": "11.4.0.106"}
SURFACES = tuple(VERSIONS)
# the precision flags 11.x removed (BuilderFlag.FP16 ... PREFER_PRECISION_CONSTRAINTS, DIRECT_IO)
REMOVED_FLAGS = ("FP16", "BF16", "INT8", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS",
                 "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO")


class DataType(enum.Enum):
    FLOAT, HALF, INT8, INT32, BOOL, UINT8, FP8, BF16, INT64 = range(9)


class TensorIOMode(enum.Enum):
    NONE, INPUT, OUTPUT = range(3)


class ExecutionContextAllocationStrategy(enum.Enum):
    STATIC, ON_PROFILE_CHANGE, USER_MANAGED = range(3)


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0


class Logger:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self, min_severity=WARNING):
        self.min_severity = min_severity


ORT_TYPES = {"tensor(float)": DataType.FLOAT, "tensor(float16)": DataType.HALF,
             "tensor(int64)": DataType.INT64, "tensor(int32)": DataType.INT32}
NUMPY_TYPES = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT64: np.int64,
               DataType.INT32: np.int32}


# ---- CUDA stand-ins ---------------------------------------------------------------------------------

class FakeStream:
    """Records CUDA graph capture; a captured graph replays the recorded enqueues. Contexts find the
    stream by the handle they are given, as a driver would."""
    _handles = itertools.count(0x1000)
    by_handle: dict[int, "FakeStream"] = {}

    def __init__(self, non_blocking: bool = False):
        self.ptr = next(self._handles)
        FakeStream.by_handle[self.ptr] = self
        self.capturing, self.recorded, self.launches = False, [], 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        pass

    def begin_capture(self):
        self.capturing, self.recorded = True, []

    def end_capture(self):
        self.capturing = False
        recorded, stream = self.recorded, self

        class Graph:
            def launch(self, _stream):
                stream.launches += 1
                for call in recorded:
                    call()
        return Graph()


def fake_cupy():
    """The cupy names the backend uses, on numpy: the "device" is host memory. `.streams` lists the
    streams made, for tests that count graph launches."""
    streams = []

    def stream(non_blocking=False):
        streams.append(FakeStream(non_blocking))
        return streams[-1]
    return types.SimpleNamespace(empty=np.empty, uint8=np.uint8, asarray=np.asarray, streams=streams,
                                 cuda=types.SimpleNamespace(Stream=stream))


def _memory(address: int, shape, dtype) -> np.ndarray:
    """The array at a raw address: what a GPU kernel would read or write."""
    count = int(np.prod(shape))
    buffer = (ctypes.c_byte * (count * np.dtype(dtype).itemsize)).from_address(address)
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


# ---- engines and contexts ---------------------------------------------------------------------------

class FakeContext:
    def __init__(self, engine):
        self.engine, self.shapes, self.addresses, self.memory, self.executions = engine, {}, {}, [], 0
        self.address_calls = []

    def set_device_memory(self, memory: int, size: int):
        self.memory.append((memory, size))

    def set_input_shape(self, name, shape):
        assert self.engine.tensors[name][0] is TensorIOMode.INPUT
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return self.shapes[name] if name in self.shapes else self.engine.output_shape(self.shapes, name)

    def set_tensor_address(self, name, address):
        assert name in self.engine.tensors
        self.address_calls.append(name)
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream_handle):
        stream = FakeStream.by_handle[stream_handle]
        if stream.capturing:
            stream.recorded.append(self._kernel)
        else:
            self._kernel()
        return True

    def _kernel(self):
        self.executions += 1
        feeds = {n: _memory(self.addresses[n], s, NUMPY_TYPES[self.engine.tensors[n][1]]).copy()
                 for n, s in self.shapes.items()}
        for name, value in self.engine.compute(feeds).items():
            _memory(self.addresses[name], value.shape, value.dtype)[...] = value


class _Engine:
    """What both majors' ICudaEngine has of what the backend calls."""

    def __init__(self, tensors: dict, scratch_bytes: int):
        self.tensors, self.scratch_bytes, self.contexts = tensors, scratch_bytes, []  # name: (mode, dtype, profile)

    @property
    def num_io_tensors(self):
        return len(self.tensors)

    def get_tensor_name(self, index):
        return list(self.tensors)[index]

    def get_tensor_mode(self, name):
        return self.tensors[name][0]

    def get_tensor_dtype(self, name):
        return self.tensors[name][1]

    def get_tensor_profile_shape(self, name, profile):
        assert profile == 0 and self.tensors[name][0] is TensorIOMode.INPUT
        return self.tensors[name][2]

    def create_execution_context(self, strategy=ExecutionContextAllocationStrategy.STATIC):
        assert strategy is ExecutionContextAllocationStrategy.USER_MANAGED  # no activation memory of its own
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]

    @property
    def device_memory_size_v2(self):
        return self.scratch_bytes

    def get_device_memory_size_for_profile_v2(self, profile):
        return self.scratch_bytes


class _Engine10Names:
    """The unsuffixed memory sizes, deprecated in 10.x and removed in 11.x."""

    @property
    def device_memory_size(self):
        return self.scratch_bytes

    def get_device_memory_size_for_profile(self, profile):
        return self.scratch_bytes


class ToyEngine(_Engine):
    """A UNet-like plan: sample and timestep with a batch range 1..4 in, noise_pred out."""

    def __init__(self, scratch_bytes: int, channels: int = 9):
        shapes = [(b, channels, 8, 12) for b in (1, 2, 4)]
        super().__init__({"sample": (TensorIOMode.INPUT, DataType.FLOAT, shapes),
                          "timestep": (TensorIOMode.INPUT, DataType.FLOAT, [(1,), (2,), (4,)]),
                          "noise_pred": (TensorIOMode.OUTPUT, DataType.FLOAT, None)}, scratch_bytes)

    def output_shape(self, shapes, name):
        return (shapes["sample"][0], 4, *shapes["sample"][2:])

    def compute(self, feeds):
        return {"noise_pred": feeds["sample"][:, :4] * 2 + feeds["timestep"][:, None, None, None]}


class OrtEngine(_Engine):
    """A deserialized fake plan: the tensors of the graph it names, run by ONNX Runtime."""

    def __init__(self, plan: dict):
        import onnxruntime as ort

        self.plan, self.shape_cache = plan, {}
        self.session = ort.InferenceSession(base64.b64decode(plan["onnx"]), providers=["CPUExecutionProvider"])
        tensors = {t.name: (TensorIOMode.INPUT, ORT_TYPES[t.type], [tuple(s) for s in plan["profile"][t.name]])
                   for t in self.session.get_inputs()}
        tensors.update({t.name: (TensorIOMode.OUTPUT, ORT_TYPES[t.type], None) for t in self.session.get_outputs()})
        super().__init__(tensors, scratch_bytes=1 << 16)

    def output_shape(self, shapes, name):  # what TensorRT infers from the input shapes
        key = tuple(sorted(shapes.items()))
        if key not in self.shape_cache:
            zeros = {n: np.zeros(s, NUMPY_TYPES[self.tensors[n][1]]) for n, s in shapes.items()}
            outputs = [n for n, t in self.tensors.items() if t[0] is TensorIOMode.OUTPUT]
            self.shape_cache[key] = dict(zip(outputs, (v.shape for v in self.session.run(outputs, zeros))))
        return self.shape_cache[key][name]

    def compute(self, feeds):
        outputs = [n for n, t in self.tensors.items() if t[0] is TensorIOMode.OUTPUT]
        return dict(zip(outputs, self.session.run(outputs, feeds)))


def engine_class(base: type, surface: str) -> type:
    return type(f"{base.__name__}{surface[:2]}", (_Engine10Names, base) if surface == "10.x" else (base,), {})


def toy_engine(surface: str, scratch_bytes: int, channels: int = 9) -> ToyEngine:
    return engine_class(ToyEngine, surface)(scratch_bytes, channels)


# ---- builder side -----------------------------------------------------------------------------------

class _Network:
    def __init__(self, flags: int, strongly_typed: bool):
        self.flags, self.strongly_typed, self.graph, self.onnx = flags, strongly_typed, None, None


class OnnxParser:
    def __init__(self, network, logger):
        self.network, self.errors = network, []

    def parse_from_file(self, path: str) -> bool:
        import onnx

        try:
            model = onnx.load(path, load_external_data=False)
        except Exception as e:
            self.errors = [f"could not read {path}: {e}"]
            return False
        unknown = sorted({n.op_type for n in model.graph.node if n.domain not in ("", "ai.onnx")})
        if unknown:  # TensorRT's parser knows no ONNX Runtime fusions
            self.errors = [f"no importer registered for op: {', '.join(unknown)}"]
            return False
        self.network.graph, self.network.onnx = path, model.SerializeToString()
        return True

    @property
    def num_errors(self):
        return len(self.errors)

    def get_error(self, index):
        return self.errors[index]


class _TimingCache:
    def __init__(self, data: bytes):
        self.builds = int(data.decode().rsplit(":", 1)[1]) if data else 0  # builds recorded so far

    def serialize(self):
        return memoryview(f"fake-timing-cache:{self.builds}".encode())


class _Profile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, low, opt, high):
        self.shapes[name] = [list(low), list(opt), list(high)]


class _BuilderConfig:
    def __init__(self):
        self.flags, self.pools, self.profiles, self.cache = [], {}, [], None

    def set_flag(self, flag):
        self.flags.append(flag.name)

    def set_memory_pool_limit(self, pool, size):
        self.pools[MemoryPoolType(pool)] = size

    def create_timing_cache(self, data):
        return _TimingCache(bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch):
        self.cache = cache
        return True

    def get_timing_cache(self):
        return self.cache

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)
        return len(self.profiles) - 1


class _Builder:
    def __init__(self, logger):
        self.logger = logger

    def create_network(self, flags=0):
        return _Network(flags, self.strongly_typed(flags))

    def create_builder_config(self):
        return _BuilderConfig()

    def create_optimization_profile(self):
        return _Profile()

    def build_serialized_network(self, network, config):
        if network.graph is None or len(config.profiles) != 1 or config.cache is None:
            return None
        config.cache.builds += 1
        plan = {"graph": network.graph, "onnx": base64.b64encode(network.onnx).decode(),
                "profile": config.profiles[0].shapes,
                "strongly_typed": network.strongly_typed, "flags": config.flags}
        return memoryview(json.dumps(plan).encode())


class _Builder10(_Builder):
    platform_has_fast_fp16 = True

    @staticmethod
    def strongly_typed(flags):
        return bool(flags & 1 << NetworkFlag10.STRONGLY_TYPED)


class _Builder11(_Builder):
    strongly_typed = staticmethod(lambda flags: True)


NetworkFlag10 = enum.IntEnum("NetworkDefinitionCreationFlag", {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1})
NetworkFlag11 = enum.IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 1})  # accepted, ignored


def tensorrt_module(surface: str) -> types.ModuleType:
    """A fresh fake `tensorrt` module of one API surface ("10.x" or "11.x")."""
    ten = surface == "10.x"
    trt = types.ModuleType("tensorrt")
    trt.__version__ = VERSIONS[surface]
    trt.DataType, trt.TensorIOMode, trt.MemoryPoolType, trt.Logger = DataType, TensorIOMode, MemoryPoolType, Logger
    trt.ExecutionContextAllocationStrategy = ExecutionContextAllocationStrategy
    trt.BuilderFlag = enum.Enum("BuilderFlag", ["REFIT", *(REMOVED_FLAGS if ten else ())])
    trt.NetworkDefinitionCreationFlag = NetworkFlag10 if ten else NetworkFlag11
    trt.Builder, trt.OnnxParser = _Builder10 if ten else _Builder11, OnnxParser
    engine = engine_class(OrtEngine, surface)

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            try:
                return engine(json.loads(bytes(data)))
            except ValueError:  # not a (fake) plan: TensorRT logs and returns None
                return None
    trt.Runtime = Runtime
    if ten:
        trt.nptype = NUMPY_TYPES.__getitem__
    return trt


def install(monkeypatch, surface: str, compute_capability: str = "9.0"):
    """Make the backend, the plan build and `inpaint-export --backend tensorrt` find this fake TensorRT
    and cupy; returns both."""
    from inpaintrt.engine import backends
    from inpaintrt.export import exporter, trt_build

    trt, cupy = tensorrt_module(surface), fake_cupy()
    found = (trt, cupy, {"name": "Fake GPU", "compute_capability": compute_capability})
    for module in (backends, trt_build, exporter):  # each bound the name when imported
        monkeypatch.setattr(module, "load_tensorrt", lambda: found)
    return trt, cupy
