"""LoRAs baked in at export (`inpaint-export --lora`), the load-time overrides of the fp16 and CUDA graphs
(checked against a baked export, without a GPU), the `inpaint --lora` and `inpaint-serve --lora` paths."""
import json

import numpy as np
import pytest

from pictures import sample_image, sample_mask
from inpaintrt import Engine
from lora_helpers import make_lora

ARGS = dict(prompt="a red bench", num_inference_steps=2, output_type="np", height=104, width=160, progress=False)


@pytest.fixture(scope="module")
def exported(checkpoints, fp16_engines, tmp_path_factory):
    """(LoRA file, plain fp16 export, the same export with the LoRA baked in at 0.7)."""
    from inpaintrt.export.exporter import export_engine
    from inpaintrt.export.loading import load_pipeline

    root = tmp_path_factory.mktemp("lora-export")
    lora = make_lora(checkpoints[9], root / "style.safetensors", seed=21, conv=True)
    baked = export_engine(load_pipeline(str(checkpoints[9])), root / "baked", loras=[f"{lora}:0.7"], fp16=True,
                          log=lambda *_: None)
    return lora, fp16_engines[9], baked


def run(engine):
    return engine.inpaint(sample_image(160, 104), sample_mask(160, 104), generator=3, **ARGS).images


def test_baked_matches_load_time(exported):
    lora, plain, baked = exported
    manifest = json.loads((baked / "manifest.json").read_text())
    assert [(e["name"], e["scale"]) for e in manifest["loras"]] == [("style.safetensors", 0.7)]
    assert manifest["loras"][0]["sha256"].startswith("sha256:")
    engine = Engine.load(baked, backend="ort-cpu")
    assert engine.loras == [dict(manifest["loras"][0], baked=True)]
    at_load = run(Engine.load(plain, backend="ort-cpu", loras=[(lora, 0.7)]))
    assert np.abs(run(engine) - at_load).max() <= 1e-4
    assert np.abs(run(Engine.load(plain, backend="ort-cpu")) - at_load).max() > 5e-2


def test_overrides_of_every_graph_equal_the_baked_export(exported):
    """What ort-cuda would run (the fp16 and CUDA-fused graphs, whose attention packs Q/K/V head by head and
    whose convolutions may be channels-last) gets the weights a baked export stores."""
    from inpaintrt.engine.lora import fuse, open_loras

    lora, plain, baked = exported
    manifest = json.loads((plain / "manifest.json").read_text())
    baked_map = json.loads((baked / "lora_map.json").read_text())
    overrides = fuse(plain, manifest, open_loras([(lora, 0.7)]))
    checked = 0
    for component in ("unet", "text_encoder"):
        entry = manifest["components"][component]
        for file in (entry["file"], entry["fp16"]["file"], entry["cuda"]["file"]):
            for name, value in overrides.for_graph(component, file).items():
                info = baked_map["graphs"][file]["initializers"][name]
                theirs = np.fromfile(baked / info["file"], info["dtype"], int(np.prod(info["shape"])),
                                     offset=info["offset"]).reshape(info["shape"]).astype(np.float32)
                ours = value.astype(np.float32)
                tolerance = 2e-3 if value.dtype == np.float16 else 1e-5  # fp16: a rounding step apart at most
                assert np.abs(ours - theirs).max() <= tolerance * max(1.0, np.abs(theirs).max()), (file, name)
                checked += 1
    assert checked > 100


def test_command_lines(exported, tmp_path, capsys):
    from inpaintrt.cli import inpaint_main

    lora, plain, _ = exported
    sample_image(160, 104).save(tmp_path / "image.png")
    sample_mask(160, 104).save(tmp_path / "mask.png")
    common = ["--engine", str(plain), "--image", str(tmp_path / "image.png"), "--mask", str(tmp_path / "mask.png"),
              "--steps", "2", "--seed", "1", "--height", "104", "--width", "160", "--backend", "ort-cpu"]
    assert inpaint_main(common + ["--lora", f"{lora}:0.7", "--output", str(tmp_path / "with.png")]) == 0
    assert inpaint_main(common + ["--output", str(tmp_path / "without.png")]) == 0
    assert (tmp_path / "with.png").read_bytes() != (tmp_path / "without.png").read_bytes()
    assert inpaint_main(common + ["--lora", str(tmp_path / "none.safetensors"), "--output", str(tmp_path / "x.png")]) != 0
    assert "none.safetensors" in capsys.readouterr().err


def test_server_lists_loras(exported):
    from fastapi.testclient import TestClient

    from inpaintrt.serve.app import Settings, create_app
    from inpaintrt.serve.cli import parser, settings_from

    lora, plain, _ = exported
    settings = settings_from(parser().parse_args(["--engine", str(plain), "--backend", "ort-cpu",
                                                  "--lora", f"{lora}:0.5"]))
    assert settings.load.loras == [(str(lora.resolve()), 0.5)]
    with TestClient(create_app(Settings(**{**settings.__dict__, "token": None}))) as client:
        listed = client.get("/v1/info").json()["loras"]
    assert [(e["name"], e["scale"], e["baked"]) for e in listed] == [("style.safetensors", 0.5, False)]
    assert listed[0]["sha256"].startswith("sha256:")
