"""Kandinsky 2.2 image prompts: the engine's interpolate against diffusers' KandinskyV22PriorPipeline.interpolate,
inpaint(image_prompts=...) against KandinskyV22InpaintPipeline fed that interpolate's output (every draw
replayed from numpy), the refusals, an engine exported before the image encoder, and no torch at run time."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from diffusers_runs import numpy_randn
from parity import record
from pictures import sample_image, sample_mask
from inpaintrt import Engine
from inpaintrt.engine.manifest import write_manifest
from inpaintrt.runtime.errors import InvalidArgument
from kandinsky_helpers import RecordingGenerator, relative

W, H = 80, 48
STYLE, OTHER = sample_image(90, 60, seed=4), sample_image(40, 70, seed=9)  # not square: the CLIP crop shows


@pytest.fixture(scope="module")
def engine(kandinsky):
    return Engine.load(kandinsky.engine)


@pytest.fixture(scope="module")
def old_engine(kandinsky, tmp_path_factory):
    """The engine as exported before the prior's image encoder existed."""
    root = tmp_path_factory.mktemp("old") / "engine"
    shutil.copytree(kandinsky.engine, root)
    manifest = json.loads((root / "manifest.json").read_text())
    component = manifest["prior"].pop("image_encoder")["component"]
    for name in manifest["components"].pop(component)["files"]:
        (root / name).unlink()
    write_manifest(root, manifest)
    return Engine.load(root)


CASES = {
    "one-picture": (lambda: [STYLE], [1.0], {}),
    "prompt-and-two-pictures": (lambda: ["a red bench", STYLE, OTHER], [0.5, 0.3, 0.2], {}),
    "negative-prompts": (lambda: ["a red bench", STYLE], [0.6, 0.4],
                         dict(negative_prompt="blurry", negative_prior_prompt="dark")),
    "two-per-prompt-unguided": (lambda: ["a kite", OTHER], [1.0, -0.5],
                                dict(num_images_per_prompt=2, guidance_scale=1.0)),
}


@pytest.mark.parametrize("case", CASES)
def test_interpolate_matches_diffusers(kandinsky, engine, case):
    make, weights, kwargs = CASES[case]
    draws = []
    with numpy_randn(5, draws), torch.no_grad():
        expected = kandinsky.combined.prior_pipe.interpolate(make(), weights, num_inference_steps=3, **kwargs)
    gen = RecordingGenerator(5)
    got = engine.interpolate(make(), weights, num_inference_steps=3, generator=gen, progress=False, **kwargs)
    assert gen.shapes == draws  # each prompt's prior run and the negative one, in diffusers' order
    rows = kwargs.get("num_images_per_prompt", 1)
    for ours, theirs in ((got.image_embeds, expected.image_embeds), (got.negative_image_embeds,
                                                                     expected.negative_image_embeds)):
        assert ours.shape == (rows, 32) and ours.dtype == np.float32
        assert record("kandinsky interpolate embeddings, max abs diff", np.abs(ours - theirs.numpy()).max()) <= 1e-4


@pytest.mark.parametrize("prompt, negative, per_prompt, guidance", [
    ("a red bench", None, 1, 4.0), ("", "blurry", 2, 4.0), ("a red bench", None, 1, 1.0)],
    ids=["prompt-and-pictures", "pictures-only-negative-two-images", "unguided"])
def test_inpaint_with_image_prompts_matches_diffusers(kandinsky, engine, prompt, negative, per_prompt, guidance):
    """The decoder fed diffusers' interpolate([prompt, *pictures], [prompt_weight, *weights]): the final images."""
    image, mask = sample_image(W, H), sample_mask(W, H)
    pairs = [(STYLE, 0.7), (OTHER, 0.4)]
    items = ([prompt] if prompt else []) + [p for p, _ in pairs]
    weights = ([0.8] if prompt else []) + [w for _, w in pairs]
    draws = []
    with numpy_randn(8, draws), torch.no_grad():
        mixed = kandinsky.combined.prior_pipe.interpolate(
            items, weights, num_images_per_prompt=per_prompt, num_inference_steps=3, negative_prompt=negative or "")
        expected = kandinsky.combined.decoder_pipe(  # a picture and mask per row, as the combined pipeline repeats them
            image=[image] * per_prompt, mask_image=[mask] * per_prompt, image_embeds=mixed.image_embeds,
            negative_image_embeds=mixed.negative_image_embeds, num_inference_steps=3, guidance_scale=guidance,
            height=H, width=W, output_type="np").images
    gen = RecordingGenerator(8)
    got = engine.inpaint(image, mask, prompt=prompt, negative_prompt=negative, image_prompts=pairs, prompt_weight=0.8,
                         num_images_per_prompt=per_prompt, prior_num_inference_steps=3, num_inference_steps=3,
                         guidance_scale=guidance, height=H, width=W, generator=gen, output_type="np",
                         progress=False).images
    assert gen.shapes == draws
    assert got.shape == expected.shape == (per_prompt, H, W, 3)
    assert record("kandinsky image-prompt image (np, [0, 1]), max abs diff", np.abs(got - expected).max()) <= 1e-3


def test_the_picture_changes_the_result(engine):
    """Another picture (same prompt, weights and seed) gives another embedding and another image; a numpy
    picture is read as the PIL picture of the same pixels; a path as the file's picture."""
    image, mask = sample_image(W, H), sample_mask(W, H)
    run = dict(prompt="a red bench", num_inference_steps=2, prior_num_inference_steps=2, height=H, width=W,
               generator=1, output_type="np", progress=False)
    styled = engine.inpaint(image, mask, image_prompts=[(STYLE, 1.0)], **run).images
    other = engine.inpaint(image, mask, image_prompts=[(OTHER, 1.0)], **run).images
    plain = engine.inpaint(image, mask, **run).images
    assert np.abs(styled - other).max() > 1e-2 and np.abs(styled - plain).max() > 1e-2
    embeds = [engine.encode_images([p])[0] for p in (STYLE, np.asarray(STYLE), OTHER)]
    assert np.array_equal(embeds[0], embeds[1]) and relative(embeds[0], embeds[2]) > 1e-2
    assert np.array_equal(engine.inpaint(image, mask, image_prompts=[(np.asarray(STYLE), 1.0)], **run).images, styled)


def test_image_prompts_from_files(engine, tmp_path):
    STYLE.save(tmp_path / "style.png")
    from_file = engine.encode_images([str(tmp_path / "style.png")])
    assert np.array_equal(from_file, engine.encode_images([STYLE]))
    got = engine.interpolate([tmp_path / "style.png"], [1.0], num_inference_steps=2, generator=0, progress=False)
    assert np.allclose(got.image_embeds, from_file)


def refused(call, field, *words):
    with pytest.raises(InvalidArgument) as caught:
        call()
    assert caught.value.field == field, (caught.value.field, str(caught.value))
    for word in words:
        assert word in str(caught.value), str(caught.value)
    return caught.value


def test_refusals_name_the_field(engine):
    image, mask = sample_image(W, H), sample_mask(W, H)

    def inpaint(**kwargs):
        return lambda: engine.inpaint(image, mask, num_inference_steps=2, height=H, width=W, progress=False, **kwargs)

    def interpolate(items, weights, **kwargs):
        return lambda: engine.interpolate(items, weights, num_inference_steps=2, progress=False, **kwargs)

    refused(interpolate([], []), "images_and_prompts", "non-empty list")
    refused(interpolate(["a cat", STYLE], [1.0]), "weights", "one number per item", "(2)")
    refused(interpolate([STYLE], [float("nan")]), "weights", "weights[0] is nan", "finite")
    refused(interpolate([STYLE], [True]), "weights", "weights[0] is True")
    refused(interpolate([b"not a picture"], [1.0]), "images_and_prompts", "not a picture PIL can read")
    refused(interpolate([STYLE], [1.0], negative_prompt=None), "negative_prompt", "string")
    refused(inpaint(image_prompts=[]), "image_prompts", "non-empty list of (picture, weight) pairs")
    refused(inpaint(image_prompts=[STYLE]), "image_prompts", "image_prompts[0] must be a (picture, weight) pair")
    refused(inpaint(image_prompts=[(STYLE, "heavy")]), "image_prompts", "image_prompts[0]'s weight is 'heavy'")
    refused(inpaint(image_prompts=[(STYLE, 1.0), ("/no/such/file.png", 1.0)]), "image_prompts", "no such file")
    refused(inpaint(image_prompts=[(STYLE, 1.0)], prompt_weight=float("inf")), "prompt_weight", "finite")
    refused(inpaint(prompt="a cat", prompt_weight=0.5), "prompt_weight", "none were given")
    refused(inpaint(prompt=["a cat", "a dog"], image_prompts=[(STYLE, 1.0)]), "prompt", "one prompt")
    embeds = np.zeros((1, 32), np.float32)
    refused(inpaint(image_prompts=[(STYLE, 1.0)], image_embeds=embeds, negative_image_embeds=embeds),
            "image_prompts", "image_embeds replaces")


def test_an_engine_exported_before_the_image_encoder(engine, old_engine, kandinsky):
    """It still loads and runs on text; pictures as prompts are refused with the command that adds the encoder."""
    assert engine.image_prompts is True and old_engine.image_prompts is False
    image, mask = sample_image(W, H), sample_mask(W, H)
    run = dict(prompt="a cat", num_inference_steps=2, prior_num_inference_steps=2, height=H, width=W, generator=2,
               output_type="np", progress=False)
    assert np.array_equal(old_engine.inpaint(image, mask, **run).images, engine.inpaint(image, mask, **run).images)
    error = refused(lambda: old_engine.inpaint(image, mask, image_prompts=[(STYLE, 1.0)], **run), "image_prompts",
                    "without the prior's image encoder", "re-export")
    assert "inpaint-export" in error.fix
    refused(lambda: old_engine.interpolate(["a cat", STYLE], [1, 1]), "images_and_prompts", "re-export")
    assert old_engine.interpolate(["a cat"], [1.0], num_inference_steps=2, progress=False).image_embeds.shape == (1, 32)
    assert Engine.load(kandinsky.decoder_engine).image_prompts is False


def test_manifest_records_the_image_encoder(engine):
    section = engine.manifest["prior"]["image_encoder"]
    assert section["component"] == "prior_image_encoder"
    assert section["preprocessing"]["crop_size"] == {"height": 32, "width": 32}
    assert section["preprocessing"]["resample"] == 3  # bicubic, the prior's CLIPImageProcessor's
    assert engine.manifest["components"]["prior_image_encoder"]["parity"]["max_rel_error"] <= 1e-4


NO_TORCH = """
import sys
for name in ("torch", "diffusers", "transformers"):
    sys.modules[name] = None
import numpy as np
from PIL import Image
from inpaintrt import Engine
engine = Engine.load(sys.argv[1])
style = Image.new("RGB", (50, 40), (20, 140, 200))
out = engine.inpaint(Image.new("RGB", (80, 48), (120, 80, 40)), Image.new("L", (80, 48), 255), prompt="a cat",
                     image_prompts=[(style, 0.5)], num_inference_steps=2, prior_num_inference_steps=2, height=48,
                     width=80, generator=0, output_type="np", progress=False)
assert out.images.shape == (1, 48, 80, 3) and np.isfinite(out.images).all()
print("heavy modules:", sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers")
                               and sys.modules[m] is not None))
"""


def test_image_prompts_run_without_torch(kandinsky):
    result = subprocess.run([sys.executable, "-c", NO_TORCH, str(kandinsky.engine)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "heavy modules: []" in result.stdout


def test_cli_image_prompt_flags(kandinsky, engine, tmp_path, capsys):
    """`inpaint --image-prompt FILE:WEIGHT --prompt-weight W` is Engine.inpaint's image_prompts and prompt_weight."""
    from PIL import Image

    from inpaintrt.cli import inpaint_main

    image, mask = sample_image(W, H), sample_mask(W, H)
    for name, picture in (("in.png", image), ("mask.png", mask), ("style.png", STYLE), ("other.png", OTHER)):
        picture.save(tmp_path / name)
    args = ["--engine", str(kandinsky.engine), "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"),
            "--prompt", "a cat", "--steps", "2", "--seed", "3", "--height", str(H), "--width", str(W),
            "--image-prompt", f"{tmp_path / 'style.png'}:0.5", "--image-prompt", str(tmp_path / "other.png"),
            "--prompt-weight", "0.7"]
    assert inpaint_main(args + ["--output", str(tmp_path / "cli.png")]) == 0
    api = engine.inpaint(image, mask, prompt="a cat", image_prompts=[(STYLE, 0.5), (OTHER, 1.0)], prompt_weight=0.7,
                         num_inference_steps=2, generator=3, height=H, width=W, progress=False).images[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "cli.png")), np.asarray(api))
    capsys.readouterr()
    assert inpaint_main(args[:-6] + ["--image-prompt", f"{tmp_path / 'style.png'}:nan",
                                     "--output", str(tmp_path / "x.png")]) == 2
    assert "--image-prompt: image_prompts[0]'s weight is nan" in capsys.readouterr().err
    assert inpaint_main(args[:-6] + ["--prompt-weight", "2", "--output", str(tmp_path / "x.png")]) == 2
    assert "--prompt-weight: prompt_weight=2.0 weighs the prompt against image_prompts" in capsys.readouterr().err
