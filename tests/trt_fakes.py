"""Stand-ins for the TensorRT library in tests/test_tensorrt.py: the few names of the module, a stream
that records CUDA graph capture, and engines whose "kernel" reads and writes the memory at the
addresses the backend set (a UNet-like toy, and ONNX Runtime running a component's fp16 graph)."""
from __future__ import annotations

import ctypes
from types import SimpleNamespace

import numpy as np


class FakeTrt:
    """The few names of the tensorrt module the backend uses."""
    __version__ = "10.14.1"
    TensorIOMode = SimpleNamespace(INPUT="input", OUTPUT="output")
    ExecutionContextAllocationStrategy = SimpleNamespace(USER_MANAGED="user-managed")

    @staticmethod
    def nptype(dtype):
        return dtype


class FakeStream:
    """Records CUDA graph capture; a captured graph replays the recorded enqueues."""
    ptr = 1234

    def __init__(self):
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


def _memory(address: int, shape, dtype) -> np.ndarray:
    """The array at a raw address: what a GPU kernel would read or write."""
    count = int(np.prod(shape))
    buffer = (ctypes.c_byte * (count * np.dtype(dtype).itemsize)).from_address(address)
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


class FakeContext:
    def __init__(self, engine):
        self.engine, self.shapes, self.addresses, self.memory, self.executions = engine, {}, {}, [], 0
        self.address_calls = []

    def set_device_memory(self, address, size):
        self.memory.append((address, size))

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return (self.shapes["sample"][0], 4, *self.shapes["sample"][2:])  # the output follows the sample

    def set_tensor_address(self, name, address):
        self.address_calls.append(name)
        self.addresses[name] = address

    def execute_async_v3(self, stream_handle):
        assert stream_handle == FakeStream.ptr
        if self.engine.stream.capturing:
            self.engine.stream.recorded.append(self._kernel)
        else:
            self._kernel()
        return True

    def _kernel(self):
        self.executions += 1
        sample = _memory(self.addresses["sample"], self.shapes["sample"], np.float32)
        timestep = _memory(self.addresses["timestep"], self.shapes["timestep"], np.float32)
        out = _memory(self.addresses["noise_pred"], self.get_tensor_shape("noise_pred"), np.float32)
        out[...] = sample[:, :4] * 2 + timestep[:, None, None, None]


class FakeEngine:
    """A UNet-like engine description: two inputs with a batch range 1..4, one output."""

    context_class = FakeContext

    def __init__(self, stream, scratch_bytes, channels=9):
        self.stream, self.device_memory_size_v2, self.contexts = stream, scratch_bytes, []
        self.tensors = {"sample": ("input", np.float32, [(1, channels, 8, 12), (2, channels, 8, 12), (4, channels, 8, 12)]),
                        "timestep": ("input", np.float32, [(1,), (2,), (4,)]),
                        "noise_pred": ("output", np.float32, None)}
        self.num_io_tensors = len(self.tensors)

    def get_tensor_name(self, index):
        return list(self.tensors)[index]

    def get_tensor_mode(self, name):
        return self.tensors[name][0]

    def get_tensor_dtype(self, name):
        return self.tensors[name][1]

    def get_tensor_profile_shape(self, name, profile):
        assert profile == 0
        return self.tensors[name][2]

    def create_execution_context(self, strategy):
        assert strategy == "user-managed"  # no activation memory of its own
        self.contexts.append(self.context_class(self))
        return self.contexts[-1]


class OrtPlanContext(FakeContext):
    def get_tensor_shape(self, name):  # what TensorRT infers from the input shapes
        zeros = {n: np.zeros(s, self.engine.tensors[n][1]) for n, s in self.shapes.items()}
        return self.engine.session.run([name], zeros)[0].shape

    def _kernel(self):
        self.executions += 1
        feeds = {n: _memory(self.addresses[n], s, self.engine.tensors[n][1]).copy() for n, s in self.shapes.items()}
        outputs = [n for n, (mode, _, _) in self.engine.tensors.items() if mode == "output"]
        for name, value in zip(outputs, self.engine.session.run(outputs, feeds)):
            _memory(self.addresses[name], value.shape, value.dtype)[...] = value


class OrtPlanEngine(FakeEngine):
    """A deserialized "plan": the tensor description TensorRT would give, and a kernel that runs the
    component's fp16 graph on the memory at the addresses the backend set."""
    context_class = OrtPlanContext

    def __init__(self, plan: dict, stream):
        import onnxruntime as ort

        self.session = ort.InferenceSession(plan["graph"], providers=["CPUExecutionProvider"])
        self.stream, self.device_memory_size_v2, self.contexts = stream, 1 << 16, []
        types = {"tensor(float)": np.float32, "tensor(int64)": np.int64}
        profile = {name: [tuple(s) for s in shapes] for name, shapes in plan["profile"].items()}
        self.tensors = {t.name: ("input", types[t.type], profile[t.name]) for t in self.session.get_inputs()}
        self.tensors.update({t.name: ("output", types[t.type], None) for t in self.session.get_outputs()})
        self.num_io_tensors = len(self.tensors)
