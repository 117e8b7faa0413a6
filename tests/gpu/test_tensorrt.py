"""The TensorRT path, everything of it that runs without TensorRT: sizes and profiles from the
manifest, plan keys and refusal, the manifest round trip and `auto` falling back, which TensorRT
versions are taken, and the backend's buffer bookkeeping against a fake engine of each API surface
(10.x, 11.x) whose "kernel" reads and writes the memory at the addresses it was given. Builds and the
whole backend run in tests/export/test_tensorrt_build.py. Tests marked `tensorrt` build and run real plans; they
skip without it."""
from __future__ import annotations

import json
import shutil
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from pictures import sample_image, sample_mask
from inpaintrt import Engine
from inpaintrt.cli import build_plans_main, export_main
from inpaintrt.engine import backends
from inpaintrt.engine.manifest import EngineDirectoryError, read_manifest, write_manifest
from inpaintrt.engine.plans import (PlanMismatchError, batch_range, check_batch, check_plan_key, parse_sizes,
                                    plan_layout, select_plan)
from inpaintrt.engine.trt_backend import PlanRunner, SharedScratch, TensorRTRuntime
from trt_fakes import SURFACES, FakeStream, install, tensorrt_module, toy_engine


def test_parse_sizes():
    assert parse_sizes("512,1024") == ((512, 512), (1024, 1024))
    assert parse_sizes("512x768, 512,512x768") == ((512, 768), (512, 512))
    for bad, message in (("512,abc", "'abc' is not N or HEIGHTxWIDTH"), ("500", "multiples of 8"), ("0", "multiples")):
        with pytest.raises(ValueError, match=message):
            parse_sizes(bad)


@pytest.mark.parametrize("channels", [9, 4])
def test_profiles_come_from_the_manifest(engines, channels):
    """The UNet's input channels are the manifest's (9 or 4), not guessed; batch ranges follow the engine's calls."""
    manifest = read_manifest(engines[channels])
    hidden = manifest["model"]["text_hidden_size"]
    layout = plan_layout(manifest["components"], ((512, 512), (1024, 768)), 2, manifest["model"]["vae_scale_factor"])
    assert [p["file"] for p in layout["text_encoder"]] == ["plans/text_encoder.plan"]  # one plan, any size
    assert [p["file"] for p in layout["unet"]] == ["plans/unet-512x512.plan", "plans/unet-1024x768.plan"]
    unet = layout["unet"][1]["profile"]
    assert unet["sample"] == [[1, channels, 128, 96], [2, channels, 128, 96], [4, channels, 128, 96]]
    assert unet["timestep"] == [[1], [2], [4]]
    assert unet["encoder_hidden_states"] == [[1, 77, hidden], [2, 77, hidden], [4, 77, hidden]]
    assert layout["vae_encoder"][0]["profile"] == {"image": [[1, 3, 512, 512]] * 3}
    assert layout["vae_decoder"][1]["profile"]["latent"] == [[1, 4, 128, 96], [1, 4, 128, 96], [2, 4, 128, 96]]
    assert layout["text_encoder"][0]["profile"]["input_ids"] == [[1, 77], [1, 77], [2, 77]]
    assert batch_range("unet", 3) == (1, 2, 6)


def test_plan_key_refusal_says_how_to_rebuild(tmp_path):
    section = {"version": "10.14.1", "compute_capability": "9.0"}
    check_plan_key(section, "10.14.1", "9.0", tmp_path)
    for version, capability in (("10.13.0", "9.0"), ("10.14.1", "8.9")):
        with pytest.raises(PlanMismatchError) as error:
            check_plan_key(section, version, capability, tmp_path)
        message = str(error.value)
        assert "built with TensorRT 10.14.1 for GPU compute capability 9.0" in message
        assert f"TensorRT {version} and compute capability {capability}" in message
        assert f"inpaint-build-plans --engine {tmp_path}" in message and "backend='ort-cpu'" in message


def test_plan_selection_by_size_and_batch(engines):
    manifest = read_manifest(engines[9])
    layout = plan_layout(manifest["components"], ((512, 512), (768, 512)), 1, 8)
    assert select_plan(layout["unet"], 768, 512, "unet")["file"] == "plans/unet-768x512.plan"
    assert select_plan(layout["text_encoder"], None, None, "text_encoder")["size"] is None
    with pytest.raises(ValueError, match=r"640x512 has no TensorRT plan \(built: 512x512, 768x512\).*--sizes 640x512"):
        select_plan(layout["unet"], 640, 512, "unet")
    check_batch(layout["unet"][0], 2, "unet")
    with pytest.raises(ValueError, match="unet got a batch of 4 but its TensorRT plan takes at most 2.*--max-images"):
        check_batch(layout["unet"][0], 4, "unet")


def _with_plans(engine_dir, tmp_path, version="10.14.1", capability="9.0"):
    """A copy of a tiny engine with a `tensorrt` section and placeholder plan files."""
    root = tmp_path / "engine"
    shutil.copytree(engine_dir, root)
    manifest = read_manifest(root)
    layout = plan_layout(manifest["components"], ((64, 96),), 2, manifest["model"]["vae_scale_factor"])
    (root / "plans").mkdir()
    for plans in layout.values():
        for plan in plans:
            (root / plan["file"]).write_bytes(b"not a real plan: " + plan["file"].encode())
    section = {"version": version, "compute_capability": capability, "device": "NVIDIA H100", "precision": "fp16",
               "max_images": 2, "sizes": [[64, 96]], "plans": layout}
    kept = {k: v for k, v in manifest.items() if k not in ("files", "format", "format_version")}
    write_manifest(root, dict(kept, tensorrt=section))
    return root


def test_manifest_round_trip_and_damage(engines, tmp_path):
    root = _with_plans(engines[9], tmp_path)
    manifest = read_manifest(root)
    assert manifest["tensorrt"]["plans"]["unet"][0]["file"] == "plans/unet-64x96.plan"
    assert "plans/unet-64x96.plan" in manifest["files"]
    (root / "plans" / "vae_decoder-64x96.plan").write_bytes(b"x")
    with pytest.raises(EngineDirectoryError, match="vae_decoder-64x96.plan .* has 1 bytes"):
        read_manifest(root)
    data = json.loads((root / "manifest.json").read_text())
    del data["tensorrt"]["plans"]["vae_encoder"], data["tensorrt"]["compute_capability"]
    (root / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(EngineDirectoryError, match="lacks tensorrt.compute_capability, tensorrt.plans.vae_encoder"):
        read_manifest(root, verify_hashes=False)


def _fake_tensorrt(version):
    return SimpleNamespace(__version__=version)


def test_auto_falls_back_saying_why_and_explicit_tensorrt_raises(engines, tmp_path, monkeypatch):
    root = _with_plans(engines[9], tmp_path)
    args = dict(prompt="a bench", num_inference_steps=2, height=64, width=96, output_type="latent", progress=False)
    expected = Engine.load(engines[9], backend="ort-cpu").inpaint(sample_image(96, 64), sample_mask(96, 64),
                                                                  generator=3, **args).images
    # here: no TensorRT at all
    with pytest.warns(RuntimeWarning, match="TensorRT cannot be imported.*runs ONNX Runtime on the CPU instead"):
        engine = Engine.load(root)
    assert engine.backend == "ort-cpu"
    np.testing.assert_array_equal(engine.inpaint(sample_image(96, 64), sample_mask(96, 64), generator=3, **args).images,
                                  expected)
    with pytest.raises(backends.BackendError, match=r"pip install 'inpaintrt\[trt\]'"):
        Engine.load(root, backend="tensorrt")
    # a TensorRT of another version: the plans are refused before any is read
    monkeypatch.setattr(backends, "load_tensorrt",
                        lambda: (_fake_tensorrt("10.15.0"), None, {"name": "GPU", "compute_capability": "9.0"}))
    with pytest.warns(RuntimeWarning, match="built with TensorRT 10.14.1.*has TensorRT 10.15.0"):
        assert Engine.load(root).backend == "ort-cpu"
    with pytest.raises(PlanMismatchError, match="inpaint-build-plans"):
        Engine.load(root, backend="tensorrt")


def test_export_without_tensorrt_fails_fast_with_install_message(checkpoints, engines, tmp_path, capsys, monkeypatch):
    from inpaintrt.export import loading

    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("the checkpoint was loaded"))
    out = tmp_path / "trt-engine"
    assert export_main(["--model", str(checkpoints[9]), "--output", str(out), "--backend", "tensorrt"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: TensorRT cannot be imported") and "pip install 'inpaintrt[trt]'" in err
    assert not out.exists()
    assert build_plans_main(["--engine", str(engines[9])]) == 2
    assert "pip install 'inpaintrt[trt]'" in capsys.readouterr().err
    assert export_main(["--model", "x", "--output", str(out), "--backend", "tensorrt", "--max-images", "0"]) == 2
    assert "--max-images must be at least 1" in capsys.readouterr().err


def test_families_without_plans_are_refused_by_name_before_tensorrt_is_needed(tmp_path, capsys):
    pytest.importorskip("torch")
    from sam_engines import build_sam_engine

    from inpaintrt.engine.families import FAMILIES
    from inpaintrt.engine.plans import refuse_unplanned

    root = build_sam_engine(tmp_path / "sam")
    assert build_plans_main(["--engine", str(root)]) == 2
    err = capsys.readouterr().err
    assert "holds a Segment Anything engine, for which no TensorRT plans are built" in err and "TensorRT cannot" not in err
    with pytest.raises(ValueError, match="backend='ort-cuda', 'openvino' or 'ort-cpu'"):
        Engine.load(root, backend="tensorrt")
    assert not (root / "plans").exists()
    for name, record in FAMILIES.items():
        manifest = {"model": {"family": name}}
        if record.tensorrt:
            refuse_unplanned(manifest, "dir")
        else:
            with pytest.raises(ValueError, match=f"holds a {record.title} engine"):
                refuse_unplanned(manifest, "dir")
    assert {n for n, r in FAMILIES.items() if not r.tensorrt} == {"kandinsky22", "sam", "clipseg"}


def _cupy_module():
    properties = {"name": b"NVIDIA H100 80GB HBM3", "major": 9, "minor": 0}
    runtime = SimpleNamespace(getDeviceProperties=lambda index: properties)
    return SimpleNamespace(cuda=SimpleNamespace(runtime=runtime, Device=lambda: SimpleNamespace(id=0)))


@pytest.mark.parametrize("version, surface", [("10.8.0.43", "10.x"), ("10.16.1.11", "10.x"), ("11.0.0.114", "11.x"),
                                              ("11.4.0.106", "11.x"), ("10.7.0", "10.x")])
def test_tensorrt_10_8_and_later_is_taken_and_older_refused(monkeypatch, version, surface):
    trt = tensorrt_module(surface)
    trt.__version__ = version
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "cupy", _cupy_module())
    if version == "10.7.0":
        with pytest.raises(backends.BackendError, match=r"TensorRT 10.7.0 is too old; install TensorRT 10.8\+ or 11.x"
                                                        r".*inpaintrt\[trt\]'` \(CUDA 12\).*inpaintrt\[trt-cu13\]"):
            backends.load_tensorrt()
    else:
        assert backends.load_tensorrt() == (trt, sys.modules["cupy"],
                                            {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"})


def test_failed_plan_rebuild_leaves_the_directory_as_it_was(engines, tmp_path, monkeypatch):
    from inpaintrt.export import trt_build

    root = _with_plans(engines[9], tmp_path)
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    install(monkeypatch, "11.x")
    with pytest.raises(trt_build.PlanBuildError, match="has no fp16 graphs for text_encoder, .*inpaint-export --fp16"):
        trt_build.rebuild_plans(root, ((64, 96),), 1)
    assert {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    assert not list(root.glob(".plans-*"))


# ---- the backend's bookkeeping against a fake engine description ----------------------------------

def _feeds(batch, seed, channels=9):
    rng = np.random.default_rng(seed)
    return {"sample": rng.standard_normal((batch, channels, 8, 12), dtype=np.float32),
            "timestep": rng.uniform(0, 999, batch).astype(np.float32)}


def _expected(feeds):
    return feeds["sample"][:, :4] * 2 + feeds["timestep"][:, None, None, None]


@pytest.fixture(params=SURFACES)
def surface(request):
    return request.param


def test_buffers_are_allocated_once_and_batches_use_their_leading_part(surface):
    stream, trt = FakeStream(), tensorrt_module(surface)
    engine = toy_engine(surface, scratch_bytes=4096)
    runner = PlanRunner(trt, engine, SharedScratch(np), stream, np)
    assert {n: b.shape for n, b in runner.buffers.items()} == {
        "sample": (4, 9, 8, 12), "timestep": (4,), "noise_pred": (4, 4, 8, 12)}  # the profile's largest
    addresses = {n: b.ctypes.data for n, b in runner.buffers.items()}
    for batch, seed in ((2, 0), (1, 1), (4, 2), (2, 3)):
        feeds = _feeds(batch, seed)
        out = runner.run(feeds)["noise_pred"]
        assert out.shape == (batch, 4, 8, 12)
        np.testing.assert_array_equal(out, _expected(feeds))
    context = engine.contexts[0]
    assert sorted(context.address_calls) == ["noise_pred", "sample", "timestep"]  # each address set once
    assert context.addresses == addresses
    assert context.executions == 4
    with pytest.raises(ValueError, match=r"'sample' has shape \(5, 9, 8, 12\); this plan takes \(1, 9, 8, 12\) to \(4, 9"):
        runner.run(_feeds(5, 0))
    with pytest.raises(ValueError, match=r"'sample' has shape \(1, 4, 8, 12\)"):  # a 4-channel input into a 9-channel plan
        runner.run(_feeds(1, 0, channels=4))


def test_one_scratch_buffer_is_shared_and_grows_for_larger_plans(surface):
    stream, scratch, trt = FakeStream(), SharedScratch(np), tensorrt_module(surface)
    small, large = toy_engine(surface, 1000), toy_engine(surface, 5000)
    PlanRunner(trt, small, scratch, stream, np)
    first = scratch.buffer.ctypes.data
    assert small.contexts[0].memory == [(first, 1000)]
    PlanRunner(trt, large, scratch, stream, np)
    grown = scratch.buffer.ctypes.data
    assert scratch.buffer.nbytes == 5000 and scratch.generation == 2
    assert small.contexts[0].memory[-1] == (grown, 5000) == large.contexts[0].memory[-1]  # both on the one buffer
    PlanRunner(trt, toy_engine(surface, 3000), scratch, stream, np)
    assert scratch.buffer.ctypes.data == grown and scratch.generation == 2  # big enough already: no new buffer


def test_cuda_graph_is_captured_per_shape_and_replayed_with_new_inputs(surface):
    stream, scratch, trt = FakeStream(), SharedScratch(np), tensorrt_module(surface)
    engine = toy_engine(surface, 1000)
    runner = PlanRunner(trt, engine, scratch, stream, np, cuda_graph=True)
    for seed in range(3):  # the same shape: captured once, then replayed
        feeds = _feeds(2, seed)
        np.testing.assert_array_equal(runner.run(feeds)["noise_pred"], _expected(feeds))
    assert stream.launches == 2 and len(runner.graphs) == 1
    feeds = _feeds(1, 9)  # a new shape: a new capture
    np.testing.assert_array_equal(runner.run(feeds)["noise_pred"], _expected(feeds))
    assert len(runner.graphs) == 2
    PlanRunner(trt, toy_engine(surface, 9000), scratch, stream, np)  # the scratch moved: recapture
    feeds = _feeds(2, 5)
    np.testing.assert_array_equal(runner.run(feeds)["noise_pred"], _expected(feeds))
    assert len(runner.graphs) == 3 and stream.launches == 2


# ---- with TensorRT ---------------------------------------------------------------------------------

@pytest.mark.tensorrt
def test_tensorrt_plans_match_onnx_runtime(checkpoints, tmp_path):
    from inpaintrt.export.exporter import PlanOptions, export_engine
    from inpaintrt.export.loading import load_pipeline

    root = export_engine(load_pipeline(str(checkpoints[9])), tmp_path / "trt", log=lambda *_: None,
                         tensorrt=PlanOptions(sizes=((64, 96),), max_images=2))
    args = dict(prompt="a bench", num_inference_steps=3, height=64, width=96, output_type="np", progress=False)
    picture, mask = sample_image(96, 64), sample_mask(96, 64)
    reference = Engine.load(root, backend="ort-cpu").inpaint(picture, mask, generator=1, **args).images
    for cuda_graph in (False, True):
        engine = Engine.load(root, backend="tensorrt", cuda_graph=cuda_graph)
        got = engine.inpaint(picture, mask, generator=1, **args).images
        assert np.abs(got - reference).max() < 0.05  # fp16 plans vs fp32 graphs
    with pytest.raises(ValueError, match="has no TensorRT plan"):
        engine.inpaint(picture, mask, generator=1, **dict(args, height=128))
    assert isinstance(engine.sessions["unet"].runtime, TensorRTRuntime)
