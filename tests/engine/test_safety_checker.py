"""The safety checker: exported from diffusers' StableDiffusionSafetyChecker and run as the SD inpaint pipeline runs it.

A tiny random checker is aimed at the pictures the tiny pipeline makes: its concept embeddings are set to some
of those pictures' own CLIP embeddings, with thresholds between them, so in one batch one picture flags
directly, one only through a special-care concept (diffusers' +0.01 adjustment) and one not at all.
"""
from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch

from diffusers_runs import diffusers_inpaint
from parity import record
from pictures import sample_image, sample_mask
from inpaintrt import Engine
from inpaintrt.engine.manifest import EngineDirectoryError
from inpaintrt.engine.safety import clip_input
from inpaintrt.runtime.errors import InvalidArgument

SIZE = dict(height=104, width=160)
ARGS = dict(prompt="a red bench in a park", num_inference_steps=3, **SIZE)
PLAIN = dict(ARGS, num_images_per_prompt=3, output_type="np")  # image 0 flags, 1 through special care, 2 clean
CROPPED = dict(ARGS, num_images_per_prompt=2, output_type="pil", padding_mask_crop=8)  # image 0 flags, 1 clean
SEED, CROPPED_SEED = 21, 22  # different noise: the batches would share their first pictures


def tiny_checker(seed: int = 0):
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16)
    return StableDiffusionSafetyChecker(config).eval()


def feature_extractor(**settings):
    from transformers import CLIPImageProcessor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CLIPImageProcessor(**({"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}
                                    | settings))


def decoded_pictures(pipe, seed: int, **kwargs) -> tuple[list, list | np.ndarray]:
    """(the PIL pictures diffusers hands its feature extractor in this call, caught at run_safety_checker;
    the call's images)."""
    caught = []
    original = pipe.run_safety_checker

    def catch(image, device, dtype):
        caught.extend(pipe.image_processor.postprocess(image.clone(), output_type="pil"))
        return original(image, device, dtype)

    pipe.run_safety_checker = catch
    try:
        images = diffusers_inpaint(pipe, seed, image=sample_image(160, 104), mask_image=sample_mask(160, 104), **kwargs)
    finally:
        del pipe.run_safety_checker
    return caught, images


def embeddings(checker, extractor, pictures) -> np.ndarray:
    with torch.no_grad():
        pixels = extractor(pictures, return_tensors="pt").pixel_values
        embeds = checker.visual_projection(checker.vision_model(pixels)[1])
    return torch.nn.functional.normalize(embeds).numpy()


def aim(checker, embeds: np.ndarray, direct: list[int], special: int) -> None:
    """Concepts pointing at `direct` pictures (their embedding less the pictures' mean), each with a threshold
    halfway between that picture's cosine and the next highest; one at `special` with a threshold 0.005 above
    its cosine, which only the special-care +0.01 carries over 0. Every other concept is out of reach (> 1)."""
    centred = embeds - embeds.mean(0)
    directions = centred / np.linalg.norm(centred, axis=1, keepdims=True)

    def threshold(i: int, margin: float) -> float:
        cosines = embeds @ directions[i]
        others = np.delete(cosines, i).max()
        assert cosines[i] - others > margin, f"picture {i} is not apart enough to aim at: {cosines.round(4)}"
        return float(cosines[i] + others) / 2

    with torch.no_grad():
        checker.concept_embeds_weights.fill_(2.0)
        checker.special_care_embeds_weights.fill_(2.0)
        for slot, i in enumerate(direct + [special]):
            checker.concept_embeds[slot] = torch.from_numpy(directions[i])
            checker.concept_embeds_weights[slot] = threshold(i, 0.01)
        checker.concept_embeds_weights[len(direct)] = float(embeds[special] @ directions[special]) + 0.005
        checker.special_care_embeds[0] = torch.from_numpy(directions[special])
        checker.special_care_embeds_weights[0] = threshold(special, 0.03)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(pipe with the aimed checker, its engine directory, diffusers' images of PLAIN without a checker)."""
    from inpaintrt.export.exporter import export_engine
    from inpaintrt.export.random_models import build_pipeline

    pipe = build_pipeline("tiny", in_channels=9, seed=9)
    plain, unchecked = decoded_pictures(pipe, SEED, **PLAIN)
    cropped, _ = decoded_pictures(pipe, CROPPED_SEED, **CROPPED)
    checker, extractor = tiny_checker(), feature_extractor()
    embeds = embeddings(checker, extractor, plain + cropped)  # plain 0, 1, 2 then cropped 0, 1
    aim(checker, embeds, direct=[0, 3], special=1)
    pipe.register_modules(safety_checker=checker, feature_extractor=extractor)
    engine_dir = export_engine(pipe, tmp_path_factory.mktemp("safety") / "engine", log=lambda *_: None)
    return pipe, engine_dir, np.asarray(unchecked)


@pytest.fixture(scope="module")
def checked(setup):
    return Engine.load(setup[1])


def run_both(pipe, engine, seed: int, **kwargs):
    """(diffusers' output, the engine's output) for the same replayed noise."""
    from inpaintrt.export.replay import numpy_randn

    image, mask = sample_image(160, 104), sample_mask(160, 104)
    with numpy_randn(seed), torch.no_grad():
        expected = pipe(image=image, mask_image=mask, **kwargs)
    got = engine.inpaint(image, mask, generator=np.random.default_rng(seed), progress=False, **kwargs)
    return expected, got


def test_flags_and_images_match_diffusers(setup, checked):
    pipe, _, _ = setup
    expected, got = run_both(pipe, checked, SEED, **PLAIN)
    assert expected.nsfw_content_detected == got.nsfw_content_detected == [True, True, False]
    theirs, ours = np.asarray(expected.images), got.images
    assert not theirs[:2].any() and not ours[:2].any()  # black, as diffusers blacks out
    assert ours[2].mean() > 0.05
    assert record("safety checker: unflagged image (np), max abs diff", np.abs(ours[2] - theirs[2]).max()) <= 1e-3


def test_flagged_image_is_black_before_the_crop_overlay(setup, checked):
    """padding_mask_crop pastes the (black) result into the input picture, as diffusers does."""
    pipe, _, _ = setup
    expected, got = run_both(pipe, checked, CROPPED_SEED, **CROPPED)
    assert expected.nsfw_content_detected == got.nsfw_content_detected == [True, False]
    mask = np.asarray(sample_mask(160, 104)) > 0
    for theirs, ours in zip(expected.images, got.images):
        theirs, ours = np.asarray(theirs, np.int16), np.asarray(ours, np.int16)
        assert record("safety checker: padding_mask_crop (pil), max abs diff / 255", np.abs(ours - theirs).max()) <= 2
    flagged, clean = np.asarray(got.images[0]), np.asarray(got.images[1])
    assert not flagged[mask].any() and flagged[~mask].any()  # black where repainted, the input elsewhere
    assert clean[mask].any()


def test_turned_off_at_load_gives_the_unchecked_images(setup):
    _, engine_dir, unchecked = setup
    engine = Engine.load(engine_dir, safety_checker=False)
    out = engine.inpaint(sample_image(160, 104), sample_mask(160, 104), generator=np.random.default_rng(SEED),
                         progress=False, **PLAIN)
    assert engine.safety_checker is None and out.nsfw_content_detected is None
    assert np.abs(out.images - unchecked).max() <= 1e-3
    assert unchecked[:2].any()  # the pictures the checker blacks out


def test_latents_are_not_checked(setup, checked):
    out = checked.inpaint(sample_image(160, 104), sample_mask(160, 104), generator=SEED, progress=False,
                          **dict(PLAIN, output_type="latent"))
    assert out.nsfw_content_detected is None and out.images.any()


def test_manifest_records_the_checker_and_its_hash(setup, tmp_path):
    _, engine_dir, _ = setup
    manifest = json.loads((engine_dir / "manifest.json").read_text())
    section = manifest["safety_checker"]
    assert section["file"] in manifest["files"] and manifest["files"][section["file"]]["sha256"].startswith("sha256:")
    assert section["preprocessing"]["size"] == {"shortest_edge": 32}
    assert section["preprocessing"]["crop_size"] == {"height": 32, "width": 32}
    assert section["preprocessing"]["resample"] == 3
    assert record("safety checker graph vs torch, max relative error", section["parity"]["max_rel_error"]) <= 1e-4
    altered = shutil.copytree(engine_dir, tmp_path / "altered")
    data = bytearray((altered / section["file"]).read_bytes())
    data[-10] ^= 1
    (altered / section["file"]).write_bytes(bytes(data))
    with pytest.raises(EngineDirectoryError, match="safety_checker.onnx .*does not match its hash"):
        Engine.load(altered)


def test_export_cli_leaves_it_out(setup, tmp_path):
    from inpaintrt.cli import export_main
    from inpaintrt.export.loading import load_pipeline

    pipe, _, _ = setup
    pipe.save_pretrained(tmp_path / "checkpoint")
    assert load_pipeline(str(tmp_path / "checkpoint")).safety_checker is not None  # loaded by default
    assert export_main(["--model", str(tmp_path / "checkpoint"), "--output", str(tmp_path / "engine"),
                        "--no-safety-checker"]) == 0
    assert "safety_checker" not in json.loads((tmp_path / "engine" / "manifest.json").read_text())
    assert not (tmp_path / "engine" / "safety_checker.onnx").exists()
    out = Engine.load(tmp_path / "engine").inpaint(sample_image(160, 104), sample_mask(160, 104), generator=SEED,
                                                   progress=False, **dict(ARGS, output_type="np"))
    assert out.nsfw_content_detected is None


@pytest.mark.parametrize("size", [(160, 104), (90, 50), (20, 24), (33, 33)])
@pytest.mark.parametrize("settings", [{}, {"size": {"height": 40, "width": 36}, "crop_size": {"height": 32, "width": 30}},
                                      {"do_center_crop": False, "size": {"height": 32, "width": 32}, "resample": 2}])
def test_preprocessing_is_the_feature_extractors(size, settings):
    from inpaintrt.export.safety import feature_extractor_settings

    extractor = feature_extractor(**settings)
    picture = sample_image(*size, seed=size[0])
    expected = extractor(picture, return_tensors="np").pixel_values[0]
    got = clip_input(picture, feature_extractor_settings(extractor))
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.array_equal(got, expected)


def test_safety_checker_argument_must_be_a_bool(setup):
    with pytest.raises(InvalidArgument, match="safety_checker='no' must be True or False") as error:
        Engine.load(setup[1], safety_checker="no")
    assert error.value.field == "safety_checker"


def test_outpaint_blacks_out_the_whole_picture_when_a_pass_flags(setup):
    """A flagged pass would leave a black window for the next pass to continue from: the result is black instead."""

    class FlagSecondCall:
        def __init__(self):
            self.calls = 0

        def flags(self, pictures):
            self.calls += 1
            return [self.calls == 2] * len(pictures)

    engine = Engine.load(setup[1])
    engine.safety_checker.flags = FlagSecondCall().flags
    out = engine.outpaint(sample_image(64, 64), right=64, bottom=64, height=64, width=64, num_inference_steps=2,
                          generator=SEED, progress=False, output_type="np")
    assert out.nsfw_content_detected == [True]
    assert out.images.shape == (1, 128, 128, 3) and not out.images.any()
    clean = Engine.load(setup[1]).outpaint(sample_image(64, 64), right=64, height=64, width=64,
                                           num_inference_steps=2, generator=SEED, progress=False)
    assert clean.nsfw_content_detected == [False] and np.asarray(clean.images[0]).any()


def served(engine_dir, *flags: str, flag_all: bool = False):
    """An in-process server over the engine; flag_all makes its checker flag every picture (the plumbing, on a
    known answer: the decision itself is compared with diffusers above)."""
    from fastapi.testclient import TestClient

    from inpaintrt.serve.app import Settings, create_app, open_engine
    from inpaintrt.serve.cli import parser, settings_from

    settings = settings_from(parser().parse_args(["--engine", str(engine_dir), "--backend", "ort-cpu", *flags]))
    settings = Settings(**{**settings.__dict__, "token": None})

    def load():
        engine = open_engine(settings)
        if flag_all:
            engine.safety_checker.flags = lambda pictures: [True] * len(pictures)
        return engine

    return TestClient(create_app(settings, load_engine=load))


def test_server_says_which_pictures_were_blacked_out(setup):
    import base64

    from serve_helpers import files, form, mask, picture, pixels, png

    fields = {"prompt": "a bench", "num_inference_steps": 2, "seed": 3, "width": 64, "height": 64}
    body = {"init_images": [base64.b64encode(png(picture())).decode()], "mask": base64.b64encode(png(mask())).decode(),
            "steps": 2, "width": 64, "height": 64, "batch_size": 2}
    with served(setup[1], flag_all=True) as client:
        assert client.get("/v1/info").json()["model"]["safety_checker"] is True
        answer = client.post("/v1/inpaint", files=files(), data=form({**fields, "response_format": "json"})).json()
        assert answer["nsfw_content_detected"] == [True]
        assert not pixels(base64.b64decode(answer["image"])).any()
        assert any("Potential NSFW content" in warning for warning in answer["warnings"])
        answer = client.post("/v1/inpaint", files=files(), data=form(fields))
        assert answer.headers["X-NSFW-Content-Detected"] == "[true]" and not pixels(answer.content).any()
        job = client.post("/v1/jobs", files=files(), data=form(fields)).json()
        while job["status"] not in ("done", "failed", "cancelled"):
            job = client.get(f"/v1/jobs/{job['id']}").json()
        assert job["status"] == "done" and job["nsfw_content_detected"] == [True]
        info = json.loads(client.post("/sdapi/v1/img2img", json=body).json()["info"])
        assert info["nsfw_content_detected"] == [True, True]
    with served(setup[1], "--no-safety-checker") as client:
        assert client.get("/v1/info").json()["model"]["safety_checker"] is False
        answer = client.post("/v1/inpaint", files=files(), data=form({**fields, "response_format": "json"})).json()
        assert answer["nsfw_content_detected"] is None and pixels(base64.b64decode(answer["image"])).any()
        info = json.loads(client.post("/sdapi/v1/img2img", json=body).json()["info"])
        assert info["nsfw_content_detected"] == [None, None]


def test_turned_off_at_load_its_file_is_not_hash_checked(setup, tmp_path):
    """safety_checker=False never reads the checker's file, so an altered one does not stop the load; the
    other files are still checked, and a default load still refuses it."""
    _, engine_dir, _ = setup
    altered = shutil.copytree(engine_dir, tmp_path / "altered")
    checker_file = json.loads((altered / "manifest.json").read_text())["safety_checker"]["file"]
    data = bytearray((altered / checker_file).read_bytes())
    data[-10] ^= 1
    (altered / checker_file).write_bytes(bytes(data))
    engine = Engine.load(altered, safety_checker=False)
    out = engine.inpaint(sample_image(160, 104), sample_mask(160, 104), generator=SEED, progress=False,
                         **dict(ARGS, output_type="np"))
    assert engine.safety_checker is None and out.nsfw_content_detected is None and out.images.any()
    with pytest.raises(EngineDirectoryError, match=f"{checker_file} .*does not match its hash"):
        Engine.load(altered)
    data = bytearray((altered / "unet.onnx").read_bytes())
    data[-10] ^= 1
    (altered / "unet.onnx").write_bytes(bytes(data))
    with pytest.raises(EngineDirectoryError, match="unet.onnx .*does not match its hash"):
        Engine.load(altered, safety_checker=False)


def test_inpaint_cli_notes_blacked_out_images_once(setup, tmp_path):
    """The real `inpaint` command on PLAIN's call: the flagged images are written black and the notice that says so
    comes once, as the command's note naming its flag (not also as the engine's warning)."""
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    _, engine_dir, _ = setup
    sample_image(160, 104).save(tmp_path / "image.png")
    sample_mask(160, 104).save(tmp_path / "mask.png")
    command = [str(Path(sys.executable).parent / "inpaint"), "--engine", str(engine_dir), "--backend", "ort-cpu",
               "--image", str(tmp_path / "image.png"), "--mask", str(tmp_path / "mask.png"), "--prompt", ARGS["prompt"],
               "--steps", "3", "--height", "104", "--width", "160", "--num-images", "3", "--seed", str(SEED),
               "--output", str(tmp_path / "out.png")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.lower().count("nsfw") == 1, done.stderr
    assert "2 of 3 images, written black" in done.stderr and "--no-safety-checker" in done.stderr
    written = [np.asarray(Image.open(tmp_path / f"out-{i}.png")) for i in (1, 2, 3)]
    assert [not picture.any() for picture in written] == [True, True, False]
