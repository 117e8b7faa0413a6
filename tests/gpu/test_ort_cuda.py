"""Backend ort-cuda (engine/ort_cuda.py). Without a GPU: the IO-binding component on ONNX Runtime's CPU
provider (the same class, numpy or a stand-in device module instead of cupy), the provider check and
its missing-library message, the fp16 decode fallback, backend='auto' on a CPU build. The `gpu`
tests run the real thing and skip here, saying why."""
from __future__ import annotations

import warnings

import re

import numpy as np
import onnxruntime as ort
import pytest

from inpaintrt.engine.backends import BackendError, _auto_ort_cuda
from inpaintrt.engine.load_options import LoadOptions
from inpaintrt.engine.ort_cuda import (BoundComponent, CheckedDecoder, graph_for_cuda, load_ort_cuda,
                                       require_cuda_provider)
from inpaintrt.runtime.xp import array_module, device_address
from device_arrays import DeviceArray, device


def _gpu_missing() -> str | None:
    try:
        load_ort_cuda()
        return None
    except BackendError as e:
        return str(e).split(";")[0]


GPU_MISSING = _gpu_missing()
gpu = pytest.mark.skipif(GPU_MISSING is not None, reason=f"ort-cuda cannot start here: {GPU_MISSING}")


@pytest.fixture(scope="module")
def tiny_graph(tmp_path_factory):
    """y = 2 x + t[:, None], z = x.sum(1) with a dynamic batch: small enough to check every number."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    t = helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch"])
    nodes = [
        helper.make_node("Constant", [], ["two"], value=helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])),
        helper.make_node("Constant", [], ["axis"], value=helper.make_tensor("axis", TensorProto.INT64, [1], [1])),
        helper.make_node("Mul", ["x", "two"], ["x2"]),
        helper.make_node("Unsqueeze", ["t", "axis"], ["t1"]),
        helper.make_node("Add", ["x2", "t1"], ["y"]),
        helper.make_node("ReduceSum", ["x", "axis"], ["z"], keepdims=0),
    ]
    model = helper.make_model(helper.make_graph(nodes, "tiny", [x, t], [y, z]), opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=9)  # a newer onnx writes an IR version an older ONNX Runtime refuses
    path = tmp_path_factory.mktemp("ortcuda") / "tiny.onnx"
    onnx.save(model, str(path))
    return path


def _feeds(batch, seed, module=np):
    rng = np.random.default_rng(seed)
    return {"x": module.asarray(rng.standard_normal((batch, 4), dtype=np.float32)),
            "t": module.asarray(rng.standard_normal(batch, dtype=np.float32))}


def _expected(feeds):
    x, t = (np.asarray(feeds[k]).view(np.ndarray) for k in ("x", "t"))
    return {"y": 2 * x + t[:, None], "z": x.sum(1)}


@pytest.mark.parametrize("module", [np, device], ids=["numpy", "device-stand-in"])
def test_bound_component_copies_into_buffers_bound_once_per_shape(tiny_graph, module):
    component = BoundComponent(tiny_graph, ort, module, provider="CPUExecutionProvider", threads=1)
    addresses = {}
    for call, batch in enumerate([2, 2, 3, 2, 3, 2]):
        feeds = _feeds(batch, call, module)
        outputs = component.run(feeds)
        for name, value in _expected(feeds).items():
            assert array_module(outputs[name]) is module  # outputs live where the feeds live
            np.testing.assert_allclose(np.asarray(outputs[name]).view(np.ndarray), value, rtol=1e-6, atol=1e-6)
        binding = component.bindings[(("t", (batch,)), ("x", (batch, 4)))]
        now = {name: device_address(buf) for name, buf in {**binding.inputs, **binding.outputs}.items()}
        assert addresses.setdefault(batch, (binding.io, now)) == (binding.io, now), "buffers reallocated or rebound"
        # the caller owns what it got: the bound buffers, which the next call overwrites, are not handed out
        assert not np.shares_memory(np.asarray(outputs["y"]), np.asarray(binding.outputs["y"]))
    assert len(component.bindings) == 2  # one binding (and one CUDA graph on the GPU) per shape


def test_only_the_last_shapes_stay_bound(tiny_graph):
    """A server sees endless picture sizes: the buffers of the least recently used shape go first."""
    from inpaintrt.engine.ort_cuda import MAX_BINDINGS

    component = BoundComponent(tiny_graph, ort, np, provider="CPUExecutionProvider", threads=1)
    batches = [1, *range(2, MAX_BINDINGS + 4), 1]  # 1 is used again after the others have come and gone
    for call, batch in enumerate(batches):
        feeds = _feeds(batch, call)
        outputs = component.run(feeds)
        for name, value in _expected(feeds).items():
            np.testing.assert_allclose(outputs[name], value, rtol=1e-6, atol=1e-6)
        assert len(component.bindings) <= MAX_BINDINGS
    kept = [key[0][1][0] for key in component.bindings]  # ("t", (batch,)) first: the batch of each binding
    assert kept == [*range(MAX_BINDINGS + 4 - MAX_BINDINGS + 1, MAX_BINDINGS + 4), 1], kept
    component.run(_feeds(kept[0], 99))  # a hit moves its shape to the newest end
    assert [key[0][1][0] for key in component.bindings][-1] == kept[0]


def test_host_feeds_to_a_device_component_come_back_on_the_host(tiny_graph):
    component = BoundComponent(tiny_graph, ort, device, provider="CPUExecutionProvider", threads=1)
    for call in range(2):
        outputs = component.run(_feeds(2, call))
        assert all(type(v) is np.ndarray for v in outputs.values())
    assert isinstance(next(iter(component.bindings.values())).inputs["x"], DeviceArray)


def test_cpu_fallback_is_refused_naming_the_missing_libraries():
    absent = {"libcublas.so.12", "libcudnn.so.9"}

    def load(name):
        if name in absent:
            raise OSError(f"{name}: cannot open shared object file")

    with pytest.raises(BackendError) as info:
        require_cuda_provider(["CPUExecutionProvider"], 12, load)
    message = str(info.value)
    assert "fell back to ['CPUExecutionProvider']" in message
    assert "cannot load libcublas.so.12, libcudnn.so.9" in message
    assert "pip install 'onnxruntime-gpu[cuda,cudnn]'" in message and "nvidia-cublas-cu12 nvidia-cudnn-cu12" in message
    with pytest.raises(BackendError, match="libcudnn.so.9.*CUDA 13 runtime libraries"):
        require_cuda_provider(["CPUExecutionProvider"], 13, lambda name: load("libcudnn.so.9"))
    require_cuda_provider(["CUDAExecutionProvider", "CPUExecutionProvider"], 12, load)  # really on CUDA: fine


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="onnxruntime-gpu is installed")
def test_cpu_onnxruntime_is_named_with_the_install_command(tmp_path):
    with pytest.raises(BackendError, match=r"onnxruntime .* has no CUDA provider .*pip install 'inpaintrt\[cuda\]'"):
        load_ort_cuda()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the plain CPU install: 'auto' takes the CPU without a warning
        assert _auto_ort_cuda(tmp_path, {"components": {}}, LoadOptions()) is None


class _Fake:
    def __init__(self, value):
        self.value, self.calls = value, 0

    def run(self, feeds):
        self.calls += 1
        return {"image": np.full((1, 3, 2, 2), self.value, np.float32)}


def test_fp16_decode_with_nan_is_redone_in_fp32_with_a_warning():
    made = []
    decoder = CheckedDecoder(_Fake(np.nan), lambda: made.append(_Fake(0.5)) or made[-1])
    with pytest.warns(RuntimeWarning, match="fp16 vae_decoder produced NaN or infinite values.*fp32 graph"):
        out = decoder.run({"latent": np.zeros((1, 4, 1, 1), np.float32)})
    assert np.all(out["image"] == 0.5) and len(made) == 1
    fine = CheckedDecoder(_Fake(np.float32(0.25)), lambda: pytest.fail("fp32 graph built for a finite decode"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.all(fine.run({})["image"] == 0.25)
    inf = CheckedDecoder(_Fake(np.inf), lambda: _Fake(0.0))
    with pytest.warns(RuntimeWarning):
        assert np.isfinite(inf.run({})["image"]).all()


def test_graph_choice():
    fp32 = {"file": "unet.onnx"}
    assert graph_for_cuda(fp32) == ("unet.onnx", "fp32")
    assert graph_for_cuda({**fp32, "fp16": {"file": "fp16/unet.onnx", "precision": "fp16"}}) == ("fp16/unet.onnx", "fp16")
    sdxl_vae = {**fp32, "fp16": {"file": "fp16/v.onnx", "precision": "fp32"}, "cuda": {"file": "cuda/v.onnx", "precision": "fp32"}}
    assert graph_for_cuda(sdxl_vae) == ("cuda/v.onnx", "fp32")
    assert graph_for_cuda(sdxl_vae, "fp32") == ("unet.onnx", "fp32")  # precision='fp32': the exact graphs


@pytest.mark.parametrize("backend,precision,message", [
    ("ort-cpu", "fp16", "precision='fp16' chooses ort-cuda's graphs; backend 'ort-cpu'"),
    ("auto", "half", "precision 'half' is unknown; choose one of fp16, fp32"),
])
def test_precision_is_checked_before_loading(engines, backend, precision, message):
    from inpaintrt import Engine

    with pytest.raises(ValueError, match=re.escape(message)):
        Engine.load(engines[9], backend=backend, precision=precision)


# ---- on a GPU (written without one: these have never run) ----

@gpu
@pytest.mark.gpu
def test_bound_component_on_cuda_keeps_cupy_arrays_on_the_device(tiny_graph):
    _, cupy = load_ort_cuda()
    for graph in (False, True):
        component = BoundComponent(tiny_graph, ort, cupy, cuda_graph=graph, stream=cupy.cuda.Stream())
        for call in range(4):  # first call per shape, warm-up, capture, replay
            feeds = _feeds(2, call, cupy)
            outputs = component.run(feeds)
            assert all(isinstance(v, cupy.ndarray) for v in outputs.values())
            for name, value in _expected({k: cupy.asnumpy(v) for k, v in feeds.items()}).items():
                np.testing.assert_allclose(cupy.asnumpy(outputs[name]), value, rtol=1e-6, atol=1e-6)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_ort_cuda_engine_matches_ort_cpu(engines, cuda_graph):
    from pictures import sample_image, sample_mask
    from inpaintrt import Engine

    cpu = Engine.load(engines[9], backend="ort-cpu")
    cuda = Engine.load(engines[9], backend="ort-cuda", cuda_graph=cuda_graph)
    assert cuda.backend == "ort-cuda"
    kwargs = dict(prompt="a cat", num_inference_steps=4, output_type="np", progress=False)
    want = cpu.inpaint(sample_image(), sample_mask(), generator=3, **kwargs).images
    for _ in range(2):  # the second call replays the captured graph
        got = cuda.inpaint(sample_image(), sample_mask(), generator=3, **kwargs).images
        assert np.abs(got - want).max() <= 1e-3


@pytest.fixture(scope="module")
def sam_engine_root(tmp_path_factory):
    pytest.importorskip("torch")
    from sam_engines import build_sam_engine

    return build_sam_engine(tmp_path_factory.mktemp("sam") / "engine")


def _sam_decoder_feeds(height, width, seed):
    rng = np.random.default_rng(seed)
    return {"image_embeddings": rng.standard_normal((1, 32, 8, 8), dtype=np.float32),
            "point_coords": np.array([[[30.0, 40.0], [0.0, 0.0]]], np.float32),
            "point_labels": np.array([[1.0, -1.0]], np.float32), "mask_input": np.zeros((1, 1, 32, 32), np.float32),
            "has_mask_input": np.zeros(1, np.float32), "orig_im_size": np.array([height, width], np.float32)}


@pytest.mark.parametrize("module", [np, device], ids=["numpy", "device-stand-in"])
def test_a_value_shaped_component_answers_each_pictures_size(sam_engine_root, module):
    """SAM's decoder: the same input shapes, masks of the size orig_im_size holds. Buffers bound per input
    shape would keep the first picture's size (ONNX Runtime refuses the next one)."""
    path = sam_engine_root / "sam_decoder.onnx"
    component = BoundComponent(path, ort, module, provider="CPUExecutionProvider", threads=1, value_shaped=True)
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for seed, (height, width) in enumerate([(90, 130), (141, 77), (90, 130)]):
        feeds = _sam_decoder_feeds(height, width, seed)
        got = component.run({name: module.asarray(value) for name, value in feeds.items()})
        want = dict(zip(component.output_names, plain.run(None, feeds)))
        assert got["masks"].shape == (1, 4, height, width)
        for name, value in want.items():
            assert array_module(got[name]) is module
            np.testing.assert_allclose(np.asarray(got[name]).view(np.ndarray), value, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="CUDA graph"):
        BoundComponent(path, ort, np, provider="CPUExecutionProvider", cuda_graph=True, value_shaped=True)


def test_value_shaped_names_the_components_with_outputs_no_input_shape_gives(sam_engine_root):
    from inpaintrt.engine.manifest import read_manifest
    from inpaintrt.engine.ort_cuda import VALUE_SHAPED

    free = set()
    for name, record in read_manifest(sam_engine_root, verify_hashes=False)["components"].items():
        session = ort.InferenceSession(str(sam_engine_root / record["file"]), providers=["CPUExecutionProvider"])
        given = {d for i in session.get_inputs() for d in i.shape if isinstance(d, str)}
        if any(isinstance(d, str) and d not in given for o in session.get_outputs() for d in o.shape):
            free.add(name)
    assert free == {"sam_decoder"} and free <= set(VALUE_SHAPED)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_sam_on_ort_cuda_matches_ort_cpu_at_two_sizes(sam_engine_root, cuda_graph):
    from inpaintrt import Engine

    cpu = Engine.load(sam_engine_root, backend="ort-cpu")
    cuda = Engine.load(sam_engine_root, backend="ort-cuda", cuda_graph=cuda_graph)
    for seed, (height, width) in enumerate([(90, 130), (141, 77), (90, 130)]):
        image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
        want, got = (e.segment(image, points=[[30, 40]], multimask_output=True) for e in (cpu, cuda))
        assert got.logits.shape == (3, height, width)
        assert np.abs(got.logits - want.logits).max() <= 1e-3 * np.abs(want.logits).max()
