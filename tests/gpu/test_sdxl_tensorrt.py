"""SDXL on the TensorRT path, without TensorRT (tests/support/trt_fakes.py: fake 10.x and 11.x API surfaces,
ONNX Runtime on the plans' graphs standing in for the kernels): plan layout and profiles at 1024 from
the manifest (second text encoder, the UNet's `text_embeds`/`time_ids`, a refiner without the first
encoder), the fp16 export rule for the SDXL VAE (`force_upcast`: fp32 graphs, so fp32 plans), and
inpainting end to end through the TensorRT backend against ONNX Runtime's fp32 run."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from pictures import sample_image, sample_mask
from inpaintrt import Engine
from inpaintrt.cli import build_plans_main, export_main
from inpaintrt.engine.manifest import read_manifest, write_manifest
from inpaintrt.engine.plans import DEFAULT_SIZES, PlanMismatchError, plan_layout
from inpaintrt.export.half import FP16_TOLERANCE
from inpaintrt.export.trt_build import PlanBuildError, build_plans, rebuild_plans
from trt_fakes import SURFACES, VERSIONS, install

SIZE = ((64, 96),)  # what the tiny model runs here; 1024 is checked as profile shapes only
QUIET = dict(log=lambda *_: None)
# the tiny SDXL models (export/random_models_sdxl.py "tiny"): text encoder widths 32 and 48, pooled 48
HIDDEN = {"inpaint": 32 + 48, "base": 32 + 48, "refiner": 48}
CHANNELS = {"inpaint": 9, "base": 4, "refiner": 4}
VAE = ("vae_encoder", "vae_decoder")


@pytest.fixture(scope="module")
def fp16_engines(sdxl_checkpoints, tmp_path_factory):
    """The inpainting and base models exported with --fp16 (the refiner goes through the CLI below)."""
    from inpaintrt.export.exporter import export_engine
    from inpaintrt.export.loading import load_pipeline

    root = tmp_path_factory.mktemp("sdxl-fp16")
    return {name: export_engine(load_pipeline(str(sdxl_checkpoints[name])), root / name, fp16=True, **QUIET)
            for name in ("inpaint", "base")}


@pytest.fixture(scope="module")
def refiner_trt(sdxl_checkpoints, tmp_path_factory):
    """`inpaint-export --backend tensorrt` of the refiner (only text_encoder_2) against the fake 11.x."""
    out = tmp_path_factory.mktemp("sdxl-trt") / "refiner"
    with pytest.MonkeyPatch.context() as monkeypatch:
        install(monkeypatch, "11.x")
        code = export_main(["--model", str(sdxl_checkpoints["refiner"]), "--output", str(out), "--backend", "tensorrt",
                            "--sizes", "64x96", "--max-images", "2", "--timing-cache", str(out.parent / "cache")])
    assert code == 0
    return out


def _engine(name, fp16_engines, refiner_trt):
    return refiner_trt if name == "refiner" else fp16_engines[name]


def _has_fp16(path) -> bool:
    model = onnx.load(str(path))
    return any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)


@pytest.mark.parametrize("name", ["inpaint", "base", "refiner"])
def test_profiles_at_1024_come_from_the_manifest(fp16_engines, refiner_trt, name):
    manifest = read_manifest(_engine(name, fp16_engines, refiner_trt))
    assert DEFAULT_SIZES == ((512, 512), (1024, 1024))  # what --sizes defaults to
    layout = plan_layout(manifest["components"], DEFAULT_SIZES, 2, manifest["model"]["vae_scale_factor"])
    encoders = ["text_encoder_2"] if name == "refiner" else ["text_encoder", "text_encoder_2"]
    assert sorted(layout) == sorted(encoders + ["unet", *VAE])
    for encoder in encoders:  # one plan, any image size
        assert layout[encoder] == [{"size": None, "file": f"plans/{encoder}.plan", "precision": "fp16",
                                    "profile": {"input_ids": [[1, 77], [1, 77], [2, 77]]}}]
    assert [p["file"] for p in layout["unet"]] == ["plans/unet-512x512.plan", "plans/unet-1024x1024.plan"]
    batches, ch, hidden = (1, 2, 4), CHANNELS[name], HIDDEN[name]
    time_ids = 5 if name == "refiner" else 6  # aesthetic score instead of the target size
    assert layout["unet"][1]["profile"] == {
        "sample": [[b, ch, 128, 128] for b in batches],
        "timestep": [[b] for b in batches],
        "encoder_hidden_states": [[b, 77, hidden] for b in batches],
        "text_embeds": [[b, 48] for b in batches],
        "time_ids": [[b, time_ids] for b in batches],
    }
    assert layout["unet"][0]["profile"]["sample"][2] == [4, ch, 64, 64]
    assert layout["vae_encoder"][1]["profile"] == {"image": [[1, 3, 1024, 1024]] * 3}
    assert layout["vae_decoder"][1]["profile"] == {"latent": [[1, 4, 128, 128], [1, 4, 128, 128], [2, 4, 128, 128]]}
    assert {n: {p["precision"] for p in plans} for n, plans in layout.items()} == {
        n: {"fp32" if n in VAE else "fp16"} for n in layout}


@pytest.mark.parametrize("name", ["inpaint", "base", "refiner"])
def test_fp16_export_keeps_the_sdxl_vae_fp32(fp16_engines, refiner_trt, name):
    """force_upcast (the tiny models have it, like SDXL's own VAE): the VAE's TensorRT graphs are fp32
    copies, recorded so; the text encoders and the UNet are fp16."""
    root = _engine(name, fp16_engines, refiner_trt)
    manifest = read_manifest(root)
    assert manifest["model"]["vae_force_upcast"] is True
    for component, entry in manifest["components"].items():
        half = entry["fp16"]
        graph = onnx.load(str(root / half["file"]))
        assert {n.domain for n in graph.graph.node} <= {"", "ai.onnx"}  # what TensorRT's parser reads
        if component in VAE:
            assert half["precision"] == "fp32" and not _has_fp16(root / half["file"]), component
            assert half["max_rel_error"] <= 1e-4
        else:
            assert half["precision"] == "fp16" and _has_fp16(root / half["file"]), component
            assert 0 < half["max_rel_error"] <= FP16_TOLERANCE


def test_fp16_safe_sdxl_vae_converts_to_fp16(sdxl_checkpoints, tmp_path):
    from inpaintrt.export.exporter import export_engine
    from inpaintrt.export.loading import load_pipeline

    pipe = load_pipeline(str(sdxl_checkpoints["refiner"]))
    pipe.vae.register_to_config(force_upcast=False)  # as the fp16-fix VAE's config says
    root = export_engine(pipe, tmp_path / "engine", fp16=True, **QUIET)
    manifest = read_manifest(root)
    assert manifest["model"]["vae_force_upcast"] is False
    for component in VAE:
        half = manifest["components"][component]["fp16"]
        assert half["precision"] == "fp16" and _has_fp16(root / half["file"])
        assert 0 < half["max_rel_error"] <= FP16_TOLERANCE
    layout = plan_layout(manifest["components"], SIZE, 1, manifest["model"]["vae_scale_factor"])
    assert {p["precision"] for plans in layout.values() for p in plans} == {"fp16"}


def _check_plans(root, surface):
    """The manifest's `tensorrt` section and the (fake) plan files behind it."""
    manifest = read_manifest(root)
    section = manifest["tensorrt"]
    assert section["version"] == VERSIONS[surface] and section["precision"] == "mixed"
    assert sorted(section["plans"]) == sorted(manifest["components"])
    for component, plans in section["plans"].items():
        assert len(plans) == 1 and plans[0]["size"] == (None if component.startswith("text_encoder") else [64, 96])
        plan = plans[0]
        built = json.loads((root / plan["file"]).read_text())
        assert built["strongly_typed"] and built["flags"] == [] and built["profile"] == plan["profile"]
        assert built["graph"].endswith(manifest["components"][component]["fp16"]["file"])
        if component in VAE:  # built from the fp32 graph: the plan computes what the fp32 graph does
            assert plan["precision"] == "fp32" and plan["max_rel_error"] < 1e-5
        else:
            assert plan["precision"] == "fp16" and 0 < plan["max_rel_error"] <= FP16_TOLERANCE
    unet = section["plans"]["unet"][0]["profile"]
    assert unet["text_embeds"][2] == [4, 48] and unet["time_ids"][2][0] == 4
    return manifest


def _inpaint_both(root, **extra):
    args = dict(prompt=["a bench", "a lamp"], num_inference_steps=3, height=64, width=96, output_type="np",
                progress=False, **extra)
    picture, mask = sample_image(96, 64), sample_mask(96, 64)
    reference = Engine.load(root, backend="ort-cpu").inpaint(picture, mask, generator=2, **args).images
    engine = Engine.load(root)  # auto: the plans run here
    assert engine.backend == "tensorrt"
    got = engine.inpaint(picture, mask, generator=2, **args).images
    assert got.shape == reference.shape == (2, 64, 96, 3)
    assert 0 < np.abs(got - reference).max() < 0.02  # fp16 UNet and text encoders vs fp32 graphs
    return engine


@pytest.mark.parametrize("name", ["inpaint", "base"])
@pytest.mark.parametrize("surface", SURFACES)
def test_build_plans_and_inpaint_end_to_end(fp16_engines, name, surface, tmp_path, capsys, monkeypatch):
    root = tmp_path / "engine"
    shutil.copytree(fp16_engines[name], root)
    install(monkeypatch, surface)
    assert build_plans_main(["--engine", str(root), "--sizes", "64x96", "--max-images", "2",
                             "--timing-cache", str(tmp_path / "cache")]) == 0, capsys.readouterr().err
    _check_plans(root, surface)
    engine = _inpaint_both(root, negative_prompt="blurry", guidance_scale=5.0)
    for component in ("text_encoder", "text_encoder_2", "unet", "vae_encoder", "vae_decoder"):
        runners = engine.sessions[component].runners  # every component ran through its plan
        assert len(runners) == 1 and next(iter(runners.values())).context.executions > 0
    with pytest.raises(ValueError, match=r"1024x1024 has no TensorRT plan \(built: 64x96\)"):
        engine.inpaint(sample_image(96, 64), sample_mask(96, 64), prompt="a bench", height=1024, width=1024,
                       generator=2, progress=False)


def test_export_with_tensorrt_backend_builds_the_refiner_and_inpaints(refiner_trt, monkeypatch):
    install(monkeypatch, "11.x")  # the version it was built with
    manifest = _check_plans(refiner_trt, "11.x")
    assert "text_encoder" not in manifest["tensorrt"]["plans"]
    assert manifest["tensorrt"]["plans"]["unet"][0]["profile"]["time_ids"][1] == [2, 5]  # aesthetic score
    _inpaint_both(refiner_trt, aesthetic_score=6.0)


def test_fp16_sdxl_vae_graphs_and_plans_are_refused(fp16_engines, tmp_path, monkeypatch):
    """An export or plans from before the rule (fp16 VAE graphs or plans): not built, not loaded."""
    root = tmp_path / "engine"
    shutil.copytree(fp16_engines["base"], root)
    install(monkeypatch, "10.x")
    manifest = read_manifest(root)
    old = json.loads(json.dumps(manifest))
    del old["components"]["vae_decoder"]["fp16"]["precision"]  # older exports recorded none: fp16
    with pytest.raises(PlanBuildError, match=r"fp16 graphs of vae_decoder, but this SDXL VAE is not fp16-safe "
                                             r".*inpaint-export --fp16"):
        build_plans(root, old, SIZE, 1, timing_cache=tmp_path / "cache", plans_dir=tmp_path / "plans", **QUIET)
    rebuild_plans(root, SIZE, 1, timing_cache=tmp_path / "cache", **QUIET)
    kept = {k: v for k, v in read_manifest(root).items() if k not in ("files", "format", "format_version")}
    kept["tensorrt"]["plans"]["vae_decoder"][0]["precision"] = "fp16"
    write_manifest(root, kept)
    with pytest.raises(PlanMismatchError, match=r"plans of vae_decoder in .* are fp16, but this SDXL VAE is not "
                                                r"fp16-safe .*inpaint-build-plans --engine"):
        Engine.load(root, backend="tensorrt")
    with pytest.warns(RuntimeWarning, match="are fp16.*runs ONNX Runtime on the CPU instead"):
        assert Engine.load(root).backend == "ort-cpu"


def test_plan_check_inputs_are_what_an_sdxl_engine_feeds(fp16_engines):
    """The build's sample inputs: the second tokenizer's whole vocabulary (it pads with id 0), time ids
    of the plan's size; a component plans.py does not know is refused by name."""
    from inpaintrt.engine.plans import batch_range
    from inpaintrt.export.trt_build import largest_token_id, sample_feeds

    root = fp16_engines["base"]
    manifest = read_manifest(root)
    assert manifest["tokenizers"]["text_encoder_2"]["pad_id"] == 0
    assert largest_token_id(root, manifest, "text_encoder_2") == largest_token_id(root, manifest, "text_encoder") == 49407
    layout = plan_layout(manifest["components"], ((1024, 768),), 2, 8)
    unet = sample_feeds(manifest["components"]["unet"]["inputs"], layout["unet"][0]["profile"], 0, size=(1024, 768))
    np.testing.assert_array_equal(unet["time_ids"], [[1024, 768, 0, 0, 1024, 768]] * 2)
    assert unet["text_embeds"].shape == (2, 48) and unet["sample"].shape == (2, 4, 128, 96)
    ids = sample_feeds(manifest["components"]["text_encoder_2"]["inputs"], layout["text_encoder_2"][0]["profile"],
                       49407)["input_ids"]
    assert ids.shape == (1, 77) and ids.max() > 1000
    with pytest.raises(ValueError, match=r"no TensorRT batch range for component 'controlnet' \(plans.py knows "
                                         r"text_encoder, text_encoder_2, .*backend='ort-cpu'"):
        batch_range("controlnet", 2)
