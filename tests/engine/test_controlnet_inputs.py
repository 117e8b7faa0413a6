"""ControlNet engines: the residual-input UNet with zero residuals is the plain UNet, the manifest,
the command lines, and bad input refused with messages that say what to do."""
import json
import shutil

import numpy as np
import pytest

from controlnet_helpers import SIZE, build_controlnet, edge_picture, inputs
from inpaintrt import Engine


@pytest.fixture(scope="module")
def exported(controlnet_exported):
    return controlnet_exported


@pytest.fixture(scope="module")
def loaded(exported):
    return {key: Engine.load(path) for key, path in exported["engines"].items()}


def call(engine, **kwargs):
    image, mask = inputs()
    args = dict(prompt="a bench", num_inference_steps=2, generator=0, progress=False, output_type="latent", **SIZE)
    return engine.inpaint(image, mask, **{**args, **kwargs}).images


@pytest.mark.parametrize("channels", [9, 4])
def test_zero_residuals_give_the_plain_unet(engines, loaded, channels):
    """The residual-input UNet fed zeros equals the UNet exported without --controlnet (same checkpoint)."""
    plain, controlled = Engine.load(engines[channels]).sessions["unet"], loaded[channels].sessions["unet"]
    layout = loaded[channels].manifest["controlnet_residuals"]
    rng = np.random.default_rng(0)
    for batch, h, w in ((2, 13, 20), (1, 8, 12), (2, 64 // 8, 72 // 8)):
        feeds = {"sample": rng.standard_normal((batch, channels, h, w), dtype=np.float32),
                 "timestep": np.full(batch, 501.0, np.float32),
                 "encoder_hidden_states": rng.standard_normal((batch, 77, 32), dtype=np.float32)}
        zeros = _zeros(layout, batch, h, w)
        expected = plain.run(feeds)["noise_pred"]
        got = controlled.run({**feeds, **zeros})["noise_pred"]
        assert np.abs(got - expected).max() <= 1e-6 * np.abs(expected).max()


def _zeros(layout, batch, h, w):
    from inpaintrt.runtime.control import residual_size

    return {r["name"]: np.zeros((batch, r["channels"], residual_size(h, r["downsamplings"]),
                                 residual_size(w, r["downsamplings"])), np.float32) for r in layout}


def test_manifest_records_controlnets(engines, loaded):
    manifest = loaded[9].manifest
    assert [(e["component"], e["kind"], e["conditioning_channels"]) for e in manifest["controlnets"]] == [
        ("controlnet_0", "inpaint", 3), ("controlnet_1", "plain", 3)]
    residuals = [r["name"] for r in manifest["controlnet_residuals"]]
    assert residuals == [f"down_residual_{i}" for i in range(6)] + ["mid_residual"]  # the tiny UNet's 6 + 1
    outputs = [t["name"] for t in manifest["components"]["controlnet_0"]["outputs"]]
    unet_inputs = [t["name"] for t in manifest["components"]["unet"]["inputs"]]
    assert outputs == residuals and unet_inputs == ["sample", "timestep", "encoder_hidden_states", *residuals]
    plain = Engine.load(engines[9]).manifest  # exported without --controlnet: as before
    assert "controlnets" not in plain and len(plain["components"]["unet"]["inputs"]) == 3


def test_control_changes_the_result(loaded):
    """The tiny ControlNets steer for real (parity is not comparing zeros)."""
    free = call(loaded["single"])
    steered = call(loaded["single"], control_image=edge_picture())
    assert np.abs(steered - free).max() > 0.05 * np.abs(free).max()


@pytest.mark.parametrize("kwargs,match", [
    (dict(control_image=edge_picture(96, 96)), r"control_image is 96x96 .* image's size \(160x104\) or at the output"),
    (dict(control_image=[edge_picture(), edge_picture()]), r"control_image has 2 entries but this engine has 1 "),
    (dict(control_image=edge_picture(), controlnet_conditioning_scale=[1.0, 0.5]), r"has 2 entries but .* has 1"),
    (dict(control_image=edge_picture(), control_guidance_start=0.5, control_guidance_end=0.5), r"0 <= start < end"),
    (dict(control_image=edge_picture(), control_guidance_start=-0.1), r"0 <= start < end"),
    (dict(control_image=edge_picture(), control_guidance_end=1.5), r"0 <= start < end <= 1"),
    (dict(control_image=edge_picture(), controlnet_conditioning_scale=float("nan")), r"must be a finite number"),
    (dict(control_image=edge_picture(), guess_mode="yes"), r"guess_mode='yes' must be True or False"),
    (dict(control_image=np.full((104, 160, 3), np.nan, np.float32)), r"NaN"),
    (dict(control_image=np.zeros((104, 160, 4), np.float32)), r"has 4 channels; this ControlNet takes 3"),
    (dict(control_image=np.zeros((2, 3, 104, 160), np.float32)), r"holds 2 pictures"),
    (dict(control_image=np.zeros((104, 160, 3), np.float32), padding_mask_crop=8, output_type="pil"),
     r"padding_mask_crop needs PIL"),
])
def test_bad_control_arguments_single(loaded, kwargs, match):
    with pytest.raises(ValueError, match=match):
        call(loaded["single"], **kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(control_image=edge_picture()), r"this engine has 2 ControlNets; pass control_image as a list of 2"),
    (dict(control_image=[None, None, edge_picture()]), r"control_image has 3 entries but this engine has 2 "),
    (dict(controlnet_conditioning_scale=[1.0, 1.0, 1.0]), r"controlnet_conditioning_scale has 3 entries"),
    (dict(control_guidance_start=[0.0, 0.2, 0.4]), r"control_guidance_start has 3 entries and control_guidance_end 3"),
    (dict(control_guidance_start=[0.0, 0.2], control_guidance_end=[1.0]), r"has 2 entries and control_guidance_end 1"),
    (dict(control_guidance_start=[0.0, 0.6], control_guidance_end=[1.0, 0.6]), r"0 <= start < end"),
    (dict(control_image=[None, edge_picture(120, 80)]), r"control_image\[1\] is 120x80"),
])
def test_bad_control_arguments_two(loaded, kwargs, match):
    with pytest.raises(ValueError, match=match):
        call(loaded[9], **kwargs)


def test_inpaint_condition_needs_a_picture(loaded):
    latents = call(loaded[9], controlnet_conditioning_scale=[0.0, 0.0])
    with pytest.raises(ValueError, match=r"image came as latents, so the inpaint ControlNet's condition"):
        loaded[9].inpaint(latents, inputs()[1], prompt="x", num_inference_steps=2, progress=False)


@pytest.mark.parametrize("kwargs", [dict(control_image=edge_picture()), dict(guess_mode=True),
                                    dict(controlnet_conditioning_scale=1.0), dict(control_guidance_end=0.5)])
def test_controlnet_asked_of_an_engine_without_one(engines, kwargs):
    with pytest.raises(ValueError, match=r"exported without a ControlNet; leave them out, or re-export it with "
                                         r"`inpaint-export --model <checkpoint> --controlnet"):
        call(Engine.load(engines[9]), **kwargs)


def test_defaults_pass_on_an_engine_without_one(engines):
    call(Engine.load(engines[9]), controlnet_conditioning_scale=0.5, control_guidance_start=0, guess_mode=False)


def test_manifest_without_residual_layout_is_refused(exported, tmp_path):
    from inpaintrt.engine.manifest import EngineDirectoryError

    copy = shutil.copytree(exported["engines"]["single"], tmp_path / "engine")
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["controlnet_residuals"]
    manifest["controlnets"][0]["component"] = "controlnet_7"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineDirectoryError, match=r"lacks components.controlnet_7, controlnet_residuals; re-export"):
        Engine.load(copy)


@pytest.mark.parametrize("change,match", [
    (dict(cross_attention_dim=64), r"cross_attention_dim 64 but the UNet 32: it was trained for another"),
    (dict(in_channels=9), r"takes 9-channel samples; ControlNets see the 4-channel latents"),
    (dict(block_out_channels=(16, 32, 64)), r"blocks \(16, 32, 64\) x 1 do not match the UNet's \(16, 32, 32\) x 1"),
])
def test_export_refuses_a_controlnet_that_does_not_fit(checkpoints, tmp_path, change, match):
    from diffusers import ControlNetModel

    from inpaintrt.export.controlnet import load_controlnet
    from inpaintrt.export.exporter import export_engine
    from inpaintrt.export.loading import CheckpointError, load_pipeline

    config = dict(build_controlnet(1).config)
    config.update(change)
    ControlNetModel.from_config(config).save_pretrained(tmp_path / "net")
    with pytest.raises(CheckpointError, match=match):
        export_engine(load_pipeline(str(checkpoints[9])), tmp_path / "out", log=lambda *_: None,
                      controlnets=[load_controlnet(str(tmp_path / "net"))])
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["net"]


def test_controlnet_argument_kinds():
    from inpaintrt.export.controlnet import parse_controlnet_argument

    assert parse_controlnet_argument("lllyasviel/control_v11p_sd15_inpaint") == (
        "lllyasviel/control_v11p_sd15_inpaint", "inpaint")
    canny = "lllyasviel/control_v11p_sd15_canny"
    assert parse_controlnet_argument(canny) == (canny, "plain")
    assert parse_controlnet_argument("inpaint=./nets/mine") == ("./nets/mine", "inpaint")
    assert parse_controlnet_argument("plain=./nets/inpaint-like") == ("./nets/inpaint-like", "plain")


def test_command_lines(exported, checkpoints, tmp_path):
    from inpaintrt.cli import export_main, inpaint_main

    assert export_main(["--model", str(checkpoints[9]), "--output", str(tmp_path / "e"),
                        "--controlnet", str(tmp_path / "missing")]) == 2
    image, mask = inputs()
    image.save(tmp_path / "image.png"), mask.save(tmp_path / "mask.png"), edge_picture().save(tmp_path / "edges.png")
    common = ["--image", str(tmp_path / "image.png"), "--mask", str(tmp_path / "mask.png"), "--steps", "2",
              "--seed", "1", "--height", "104", "--width", "160"]
    assert inpaint_main(["--engine", str(exported["engines"][9]), *common, "--control-image", "none",
                         "--control-image", str(tmp_path / "edges.png"), "--controlnet-scale", "0.5",
                         "--controlnet-scale", "0.8", "--guess-mode", "--output", str(tmp_path / "out.png")]) == 0
    assert (tmp_path / "out.png").is_file()
    assert inpaint_main(["--engine", str(exported["engines"]["single"]), *common, "--control-start", "0.6",
                         "--control-end", "0.5", "--output", str(tmp_path / "bad.png")]) == 2


NO_TORCH = """
import sys
for name in ("torch", "diffusers", "transformers"):
    sys.modules[name] = None  # any import of them now raises ImportError
import numpy as np
from PIL import Image
from inpaintrt import Engine
engine = Engine.load(sys.argv[1])
image, mask = Image.new("RGB", (64, 48), (120, 80, 40)), Image.new("L", (64, 48), 255)
out = engine.inpaint(image, mask, prompt="a cat", num_inference_steps=2, height=48, width=64, generator=0,
                     control_image=[None, Image.new("RGB", (64, 48))], guess_mode=True, output_type="np",
                     progress=False)
assert out.images.shape == (1, 48, 64, 3) and np.isfinite(out.images).all()
print("heavy modules:", sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers")
                               and sys.modules[m] is not None))
"""


def test_controlnet_runtime_runs_without_torch(exported):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", NO_TORCH, str(exported["engines"][9])], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert "heavy modules: []" in result.stdout
