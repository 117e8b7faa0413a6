"""Plan builds and the whole TensorRT backend, end to end, against a fake `tensorrt` of each Python API
surface (tests/support/trt_fakes.py: 10.x with the precision builder flags and the unsuffixed memory sizes,
11.x without them), ONNX Runtime on the fp16 graphs standing in for the kernels. The build code of
`inpaint-build-plans` makes strongly typed plans without any precision flag, checks their inputs and
outputs against the manifest and their results against the fp32 graphs; `Engine` then runs them."""
from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest

from pictures import sample_image, sample_mask
from inpaintrt import Engine
from inpaintrt.engine.manifest import read_manifest, write_manifest
from inpaintrt.engine.plans import PlanMismatchError, plan_layout
from inpaintrt.export.half import FP16_TOLERANCE
from inpaintrt.export.trt_build import PlanBuildError, build_plans, rebuild_plans
from trt_fakes import REMOVED_FLAGS, SURFACES, VERSIONS, install, tensorrt_module, toy_engine

SIZE = ((64, 96),)


def test_fp16_graphs_are_what_tensorrt_parses_and_match_torch(fp16_engines):
    """fp16 weights, float32 inputs/outputs, only standard ONNX operators (TensorRT's parser knows no
    com.microsoft fusions), checked against torch at export; the plan check's inputs and measure work."""
    import onnx

    from inpaintrt.engine.backends import OrtBackend
    from inpaintrt.export.half import relative_error
    from inpaintrt.export.trt_build import sample_feeds

    fp16_engine = fp16_engines[4]
    manifest = read_manifest(fp16_engine)
    layout = plan_layout(manifest["components"], SIZE, 2, manifest["model"]["vae_scale_factor"])
    for name, component in manifest["components"].items():
        half = component["fp16"]
        assert half["file"] == f"fp16/{name}.onnx" and 0 < half["max_rel_error"] <= FP16_TOLERANCE
        model = onnx.load(str(fp16_engine / half["file"]))
        assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
        assert [i.type.tensor_type.elem_type for i in model.graph.output] == [onnx.TensorProto.FLOAT] * len(
            model.graph.output)
        feeds = sample_feeds(component["inputs"], layout[name][0]["profile"], manifest["tokenizer"]["pad_id"])
        error = relative_error(OrtBackend(fp16_engine / half["file"]).run(feeds),
                               OrtBackend(fp16_engine / component["file"]).run(feeds))
        assert 0 < error <= FP16_TOLERANCE, (name, error)
    assert relative_error({"x": np.array([np.nan], np.float32)}, {"x": np.ones(1, np.float32)}) == float("inf")


def test_the_fakes_lack_what_tensorrt_11_removed():
    """What makes a call to a removed name fail the tests below."""
    old, new = tensorrt_module("10.x"), tensorrt_module("11.x")
    assert all(hasattr(old.BuilderFlag, name) for name in REMOVED_FLAGS) and old.Builder(None).platform_has_fast_fp16
    assert not any(hasattr(new.BuilderFlag, name) for name in REMOVED_FLAGS)
    assert not hasattr(new.Builder(None), "platform_has_fast_fp16") and not hasattr(new, "nptype")
    engine10, engine11 = toy_engine("10.x", 64), toy_engine("11.x", 64)
    assert engine10.device_memory_size == engine10.device_memory_size_v2 == engine11.device_memory_size_v2 == 64
    assert not hasattr(engine11, "device_memory_size") and not hasattr(engine11, "get_device_memory_size_for_profile")


def _copy(engine_dir, tmp_path):
    root = tmp_path / "engine"
    shutil.copytree(engine_dir, root)
    return root


@pytest.mark.parametrize("channels", [9, 4])
@pytest.mark.parametrize("surface", SURFACES)
def test_build_plans_and_run_the_engine_end_to_end(fp16_engines, surface, channels, tmp_path, monkeypatch):
    """inpaint-build-plans' code -> strongly typed plans, no builder flag, timing cache kept -> Engine ->
    a component's plan per size -> buffers -> "kernel": the image matches ONNX Runtime's fp32 run within
    fp16 error, with and without CUDA graphs."""
    root = _copy(fp16_engines[channels], tmp_path)
    _, cupy = install(monkeypatch, surface)
    cache = tmp_path / "timing.cache"
    rebuild_plans(root, SIZE, 2, timing_cache=cache, log=lambda *_: None)
    manifest = read_manifest(root)
    section = manifest["tensorrt"]
    assert section["version"] == VERSIONS[surface] and section["strongly_typed"] is True
    plans = {name: plan for name, built in section["plans"].items() for plan in built}
    assert sorted(plans) == sorted(manifest["components"])
    for name, plan in plans.items():
        built = json.loads((root / plan["file"]).read_text())
        assert built["strongly_typed"] and built["flags"] == []  # the graph's types are the precision
        assert built["graph"] == str(root / manifest["components"][name]["fp16"]["file"])
        assert 0 < plan["max_rel_error"] <= FP16_TOLERANCE
    assert cache.read_text() == f"fake-timing-cache:{len(plans)}"  # each build read the cache the last one wrote

    args = dict(prompt=["a bench", "a lamp"], num_inference_steps=3, height=64, width=96, output_type="np",
                progress=False)
    picture, mask = sample_image(96, 64), sample_mask(96, 64)
    reference = Engine.load(root, backend="ort-cpu").inpaint(picture, mask, generator=2, **args).images
    engine = Engine.load(root)  # auto: the plans run here
    assert engine.backend == "tensorrt"
    got = engine.inpaint(picture, mask, generator=2, **args).images
    assert 0 < np.abs(got - reference).max() < 0.02
    graphed = Engine.load(root, backend="tensorrt", cuda_graph=True)
    for _ in range(2):
        np.testing.assert_array_equal(graphed.inpaint(picture, mask, generator=2, **args).images, got)
    assert cupy.streams[-1].launches > 0
    runners = graphed.sessions["unet"].runners
    assert list(runners) == ["plans/unet-64x96.plan"] and len(runners["plans/unet-64x96.plan"].graphs) == 1
    with pytest.raises(ValueError, match=r"128x96 has no TensorRT plan \(built: 64x96\)"):
        engine.inpaint(picture, mask, generator=2, **dict(args, height=128))
    with pytest.raises(ValueError, match="unet got a batch of 6 but its TensorRT plan takes at most 4"):
        engine.inpaint(picture, mask, generator=2, **dict(args, prompt="a bench", num_images_per_prompt=3))


def test_a_plan_that_does_not_fit_the_manifest_is_refused(fp16_engines, tmp_path, monkeypatch):
    root = _copy(fp16_engines[9], tmp_path)
    install(monkeypatch, "11.x")
    manifest = read_manifest(root)
    # building: the manifest says float16 where the graph (so the strongly typed plan) has float32
    changed = copy.deepcopy(manifest)
    changed["components"]["unet"]["outputs"][0]["dtype"] = "float16"
    with pytest.raises(PlanBuildError, match=r"plans/unet-64x96.plan does not fit the manifest \('noise_pred': the plan "
                                             r"has a float32 output, the manifest a float16 output\).*inpaint-export --fp16"):
        build_plans(root, changed, SIZE, 1, timing_cache=tmp_path / "cache", log=lambda *_: None,
                    plans_dir=tmp_path / "plans")
    # loading: a plan file of another component under the UNet's name is refused at its first use
    rebuild_plans(root, SIZE, 1, timing_cache=tmp_path / "cache", log=lambda *_: None)
    kept = {k: v for k, v in read_manifest(root).items() if k not in ("files", "format", "format_version")}
    shutil.copy(root / "plans" / "vae_decoder-64x96.plan", root / "plans" / "unet-64x96.plan")
    write_manifest(root, kept)  # hashes of the swapped file: only the plan's contents are wrong
    engine = Engine.load(root, backend="tensorrt")
    with pytest.raises(PlanMismatchError, match=r"unet-64x96.plan does not fit the manifest \(.*'noise_pred': the plan "
                                                r"has nothing, the manifest a float32 output.*inpaint-build-plans --engine"):
        engine.inpaint(sample_image(96, 64), sample_mask(96, 64), prompt="a bench", num_inference_steps=2,
                       height=64, width=96, generator=1, progress=False)


def test_a_graph_with_onnx_runtime_fusions_is_not_built(fp16_engines, tmp_path, monkeypatch):
    """The CPU-optimized graph (com.microsoft operators) is never what a plan is built from; TensorRT's
    parser error reaches the user with the graph's name."""
    import onnx

    root = _copy(fp16_engines[9], tmp_path)
    install(monkeypatch, "10.x")
    manifest = read_manifest(root)
    graph = onnx.load(str(root / "fp16" / "text_encoder.onnx"))
    graph.graph.node[0].domain = "com.microsoft"
    onnx.save(graph, str(root / "fp16" / "text_encoder.onnx"))
    with pytest.raises(PlanBuildError, match=r"TensorRT could not parse text_encoder.onnx: no importer registered"):
        build_plans(root, manifest, SIZE, 1, timing_cache=tmp_path / "cache", log=lambda *_: None,
                    plans_dir=tmp_path / "plans")
