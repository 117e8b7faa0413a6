"""TensorRT plans of a ControlNet engine, without TensorRT: the plan layout of the ControlNets and of
the residual-input UNet, then plans built and run end to end against the fake `tensorrt` of tests/support/trt_fakes.py
(ONNX Runtime on the fp16 graphs standing in for the kernels)."""
import pytest

from controlnet_helpers import run_fake_plans_with_control, save_controlnets
from inpaintrt.engine.manifest import read_manifest
from inpaintrt.engine.plans import plan_layout

SIZE = ((64, 96),)


@pytest.fixture(scope="module")
def fp16_engine(checkpoints, tmp_path_factory):
    """A 9-channel engine with fp16 graphs (what plans are built from) and both tiny ControlNets."""
    from inpaintrt.export.controlnet import load_controlnet
    from inpaintrt.export.exporter import export_engine
    from inpaintrt.export.loading import load_pipeline

    root = tmp_path_factory.mktemp("controlnet-fp16")
    folders = save_controlnets(root)
    nets = [load_controlnet(str(folders["inpaint"])), load_controlnet(str(folders["plain"]))]
    return export_engine(load_pipeline(str(checkpoints[9])), root / "engine", fp16=True, log=lambda *_: None,
                         controlnets=nets)


def test_plan_layout(fp16_engine):
    """One plan per size for each ControlNet and the UNet; residual inputs at the UNet's downsampled sizes
    (ceil halving: 13x20 latents -> 7x10 -> 4x5); ControlNets take the UNet's batch range."""
    manifest = read_manifest(fp16_engine)
    layout = plan_layout(manifest["components"], ((64, 96), (104, 160)), 2, manifest["model"]["vae_scale_factor"])
    assert sorted(layout) == sorted(manifest["components"])
    unet = {tuple(p["size"]): p["profile"] for p in layout["unet"]}
    net = {tuple(p["size"]): p["profile"] for p in layout["controlnet_1"]}
    assert unet[(104, 160)]["down_residual_0"] == [[1, 16, 13, 20], [2, 16, 13, 20], [4, 16, 13, 20]]
    assert unet[(104, 160)]["down_residual_3"] == [[1, 32, 7, 10], [2, 32, 7, 10], [4, 32, 7, 10]]
    assert unet[(104, 160)]["mid_residual"] == [[1, 32, 4, 5], [2, 32, 4, 5], [4, 32, 4, 5]]
    assert unet[(64, 96)]["mid_residual"][1] == [2, 32, 2, 3]
    assert net[(104, 160)]["controlnet_cond"] == [[1, 3, 104, 160], [2, 3, 104, 160], [4, 3, 104, 160]]
    assert net[(64, 96)]["sample"][2] == [4, 4, 8, 12]
    assert [p["file"] for p in layout["controlnet_0"]] == ["plans/controlnet_0-64x96.plan",
                                                          "plans/controlnet_0-104x160.plan"]


@pytest.mark.parametrize("guess", [False, True])
def test_build_plans_and_run_with_control(fp16_engine, guess, tmp_path, monkeypatch):
    """inpaint-build-plans' code builds the ControlNets' and the residual-input UNet's plans; Engine runs them
    (both ControlNets, guess mode or not) within fp16 error of ONNX Runtime's fp32 run."""
    run_fake_plans_with_control(fp16_engine, tmp_path, monkeypatch, guess)
