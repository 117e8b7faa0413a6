"""SDXL's bad inputs, the SD-only engine refusing SDXL arguments, the CLI's SDXL flags and the family
read from the checkpoint: every refusal is a ValueError that names the parameter and says the fix."""
import json

import numpy as np
import pytest

from pictures import sample_image, sample_mask
from inpaintrt import Engine

SIZE = dict(height=64, width=96)


@pytest.fixture(scope="module")
def sdxl(sdxl_engines):
    return {name: Engine.load(path) for name, path in sdxl_engines.items()}


@pytest.fixture(scope="module")
def sd(engines):
    return Engine.load(engines[9])


def pooled(*shape):
    return np.zeros(shape, np.float32)


CASES = [
    # (engine, arguments, words the message must contain)
    ("refiner", dict(prompt="a", prompt_2="b"), ["prompt_2", "refiner", "pass prompt only"]),
    ("refiner", dict(prompt="a", negative_prompt_2="b"), ["negative_prompt_2", "pass negative_prompt only"]),
    ("inpaint", dict(prompt_embeds=pooled(1, 77, 80)), ["pooled_prompt_embeds", "needs both"]),
    ("inpaint", dict(prompt_embeds=pooled(1, 77, 80), pooled_prompt_embeds=pooled(1, 47)), ["pooled_prompt_embeds", "(1, 48)"]),
    ("inpaint", dict(prompt_embeds=pooled(2, 77, 80), pooled_prompt_embeds=pooled(1, 48)), ["pooled_prompt_embeds", "(2, 48)"]),
    ("inpaint", dict(prompt_embeds=pooled(1, 77, 32), pooled_prompt_embeds=pooled(1, 48)), ["prompt_embeds", "(batch, 77, 80)"]),
    ("inpaint", dict(prompt_embeds=pooled(1, 77, 80), pooled_prompt_embeds=pooled(1, 48) * np.nan), ["pooled_prompt_embeds", "NaN"]),
    ("inpaint", dict(prompt_embeds=pooled(1, 77, 80), pooled_prompt_embeds=pooled(1, 48),
                     negative_prompt_embeds=pooled(1, 77, 80)), ["negative_pooled_prompt_embeds"]),
    ("inpaint", dict(prompt="a", denoising_start=0.8, denoising_end=0.8), ["denoising_start=0.8", "below denoising_end"]),
    ("inpaint", dict(prompt="a", denoising_start=0.9, denoising_end=0.2), ["denoising_start", "denoising_end"]),
    ("inpaint", dict(prompt="a", denoising_start=1.5), ["denoising_start=1.5", "a number in (0, 1)"]),
    ("inpaint", dict(prompt="a", denoising_end=0), ["denoising_end=0", "a number in (0, 1)"]),
    ("inpaint", dict(prompt="a", denoising_end="0.5"), ["denoising_end='0.5'"]),
    ("inpaint", dict(prompt="a", denoising_end=0.01, num_inference_steps=2), ["leave no denoising step"]),
    ("inpaint", dict(prompt="a", aesthetic_score=6.0), ["aesthetic_score", "size-conditioned", "leave them out"]),
    ("refiner", dict(prompt="a", target_size=(64, 96)), ["target_size", "aesthetic-score"]),
    ("inpaint", dict(prompt="a", original_size=(64,)), ["original_size=(64,)", "two non-negative integers"]),
    ("inpaint", dict(prompt="a", crops_coords_top_left=(-1, 0)), ["crops_coords_top_left"]),
    ("refiner", dict(prompt="a", aesthetic_score=float("nan")), ["aesthetic_score", "finite"]),
    ("inpaint", dict(prompt="a", prompt_2=["x", "y"]), ["prompt_2 has 2 entries", "give one or 1"]),
    ("inpaint", dict(prompt="a", prompt_2=3), ["prompt_2 must be a string"]),
    ("inpaint", dict(prompt="a", strength=1.2), ["strength=1.2"]),
]


@pytest.mark.parametrize("model,arguments,words", CASES, ids=[f"{i}-{c[0]}" for i, c in enumerate(CASES)])
def test_sdxl_bad_inputs(sdxl, model, arguments, words):
    with pytest.raises(ValueError) as raised:
        sdxl[model].inpaint(sample_image(96, 64), sample_mask(96, 64), num_inference_steps=arguments.pop(
            "num_inference_steps", 3), progress=False, **SIZE, **arguments)
    for word in words:
        assert word in str(raised.value), str(raised.value)


@pytest.mark.parametrize("arguments,words", [
    (dict(prompt_2="b"), ["prompt_2 is for SDXL engines", "sd1"]),
    (dict(pooled_prompt_embeds=pooled(1, 48), prompt_embeds=pooled(1, 77, 32)), ["pooled_prompt_embeds", "SDXL"]),
    (dict(original_size=(512, 512)), ["original_size", "SDXL micro-conditioning"]),
    (dict(aesthetic_score=6.0), ["aesthetic_score"]),
])
def test_sd_engine_refuses_sdxl_arguments(sd, arguments, words):
    arguments.setdefault("prompt", None if "prompt_embeds" in arguments else "a")
    with pytest.raises(ValueError) as raised:
        sd.inpaint(sample_image(96, 64), sample_mask(96, 64), num_inference_steps=2, progress=False, **SIZE, **arguments)
    for word in words:
        assert word in str(raised.value), str(raised.value)


def test_sd_engine_keeps_its_defaults(sd, sdxl):
    """strength defaults to 1.0 on SD (pure noise start: no image draw) and 0.9999 on SDXL."""
    assert sd.family == "sd1" and sdxl["inpaint"].family == "sdxl"
    draws = []

    class Recorder:
        def standard_normal(self, shape, dtype=np.float32):
            draws.append(tuple(shape))
            return np.zeros(shape, dtype)

    sd.inpaint(sample_image(96, 64), sample_mask(96, 64), prompt="a", num_inference_steps=2, generator=Recorder(),
               progress=False, output_type="latent", **SIZE)
    assert len(draws) == 2  # noise, masked image: strength 1.0 encodes no image
    draws.clear()
    sdxl["inpaint"].inpaint(sample_image(96, 64), sample_mask(96, 64), prompt="a", num_inference_steps=2,
                            generator=Recorder(), progress=False, output_type="latent", **SIZE)
    assert len(draws) == 3  # image, noise, masked image: 0.9999 < 1 encodes the image


def test_cli_passes_sdxl_flags(sdxl_engines, tmp_path):
    from inpaintrt.cli import inpaint_main

    sample_image(96, 64).save(tmp_path / "in.png")
    sample_mask(96, 64).save(tmp_path / "mask.png")
    common = ["--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"), "--steps", "4", "--seed", "1",
              "--height", "64", "--width", "96"]
    assert inpaint_main(["--engine", str(sdxl_engines["inpaint"]), *common, "--prompt", "a", "--prompt-2", "b",
                         "--denoising-end", "0.5", "--output", str(tmp_path / "a.png")]) == 0
    engine = Engine.load(sdxl_engines["inpaint"])
    expected = engine.inpaint(sample_image(96, 64), sample_mask(96, 64), prompt="a", prompt_2="b", denoising_end=0.5,
                              num_inference_steps=4, generator=1, progress=False, **SIZE).images[0]
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(expected))
    assert inpaint_main(["--engine", str(sdxl_engines["refiner"]), *common, "--prompt-2", "b",
                         "--output", str(tmp_path / "b.png")]) == 2


def test_family_comes_from_the_checkpoint(sdxl_checkpoints, checkpoints, tmp_path):
    from inpaintrt.export.loading import checkpoint_family

    assert {checkpoint_family(str(p)) for p in sdxl_checkpoints.values()} == {"sdxl"}
    assert checkpoint_family(str(checkpoints[9])) == "sd"
    index = json.loads((sdxl_checkpoints["base"] / "model_index.json").read_text())
    assert index["_class_name"].startswith("StableDiffusionXL")
    # a single file takes the family of its --config folder, or of its own key names
    assert checkpoint_family(str(tmp_path / "x.safetensors"), config=str(sdxl_checkpoints["base"])) == "sdxl"
    from safetensors.numpy import save_file

    save_file({"conditioner.embedders.0.transformer.text_model.embeddings.position_ids": np.zeros(2, np.int64)},
              str(tmp_path / "xl.safetensors"))
    save_file({"cond_stage_model.transformer.text_model.embeddings.position_ids": np.zeros(2, np.int64)},
              str(tmp_path / "sd.safetensors"))
    assert checkpoint_family(str(tmp_path / "xl.safetensors")) == "sdxl"
    assert checkpoint_family(str(tmp_path / "sd.safetensors")) == "sd"


@pytest.mark.parametrize("model", ["inpaint", "refiner"])
def test_single_file_exports_the_same_engine(sdxl_pipes, sdxl_checkpoints, sdxl_engines, model, tmp_path):
    """An SDXL single file (original layout: conditioner.embedders, OpenCLIP's fused attention) with --config
    exports an engine that paints what the folder's engine paints; the family comes from its key names."""
    from ldm_format import save_single_file_sdxl

    from inpaintrt.cli import export_main
    from inpaintrt.export.loading import checkpoint_family

    single = save_single_file_sdxl(sdxl_pipes[model], tmp_path / "model.safetensors")
    assert checkpoint_family(str(single)) == "sdxl"
    out = tmp_path / "engine"
    assert export_main(["--model", str(single), "--config", str(sdxl_checkpoints[model]), "--output", str(out)]) == 0
    args = dict(prompt="a lamp", num_inference_steps=3, output_type="latent", progress=False, **SIZE)
    image, mask = sample_image(96, 64), sample_mask(96, 64)
    from_file = Engine.load(out).inpaint(image, mask, generator=5, **args).images
    from_folder = Engine.load(sdxl_engines[model]).inpaint(image, mask, generator=5, **args).images
    assert np.abs(from_file - from_folder).max() <= 1e-5 * np.abs(from_folder).max()
