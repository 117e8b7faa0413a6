"""SDXL: Engine.inpaint against diffusers' StableDiffusionXLInpaintPipeline with every random draw replayed,
on tiny SDXL-architecture checkpoints: 9-channel inpainting, 4-channel base (mask blending) and a refiner
(second text encoder only, aesthetic-score conditioning)."""
import numpy as np
import pytest
from PIL import ImageFilter

from diffusers_runs import DIFFUSERS_SCHEDULERS, diffusers_inpaint
from parity import record
from pictures import sample_image, sample_mask
from inpaintrt import Engine

SIZE = dict(height=104, width=160)  # 13x20 latents: 13 is not divisible by the tiny UNet's 4x
PROMPT = "a red bench in a park"


@pytest.fixture(scope="module")
def loaded(sdxl_engines):
    return {name: Engine.load(path) for name, path in sdxl_engines.items()}


def run_both(pipe, engine, seed, scheduler=None, ours=None, **args):
    """(diffusers' output, ours) for the same arguments and replayed noise; `ours` adds engine-only arguments."""
    image, mask = args.pop("image", None) or sample_image(160, 104), args.pop("mask_image", None) or sample_mask(160, 104)
    expected = diffusers_inpaint(pipe, seed, scheduler or "euler", image=image, mask_image=mask, **args)
    got = engine.inpaint(image, mask, scheduler=scheduler or "euler", generator=np.random.default_rng(seed),
                         progress=False, **args, **(ours or {})).images
    return expected, got


def assert_latents_match(expected, got):
    expected = np.asarray(expected.numpy() if hasattr(expected, "numpy") else expected)
    assert got.shape == expected.shape
    error = np.abs(got - expected).max() / np.abs(expected).max()
    assert record("SDXL latents, max abs diff / max abs", error) <= 1e-3


@pytest.mark.parametrize("model", ["inpaint", "base", "refiner"])
@pytest.mark.parametrize("scheduler", sorted(DIFFUSERS_SCHEDULERS))
def test_matches_diffusers_per_scheduler(sdxl_pipes, loaded, model, scheduler):
    """diffusers' SDXL defaults (strength 0.9999, zeros for the empty negative prompt): final latents and image."""
    image, mask = sample_image(160, 104), sample_mask(160, 104)
    args = dict(prompt=PROMPT, num_inference_steps=4, output_type="np", **SIZE)
    theirs, ours = {}, {}

    def catch_theirs(pipe, step, t, tensors):
        theirs["latents"] = tensors["latents"].numpy().copy()
        return tensors

    expected = diffusers_inpaint(sdxl_pipes[model], 5, scheduler, image=image, mask_image=mask,
                                 callback_on_step_end=catch_theirs, **args)
    got = loaded[model].inpaint(image, mask, scheduler=scheduler, generator=np.random.default_rng(5), progress=False,
                                callback_on_step_end=lambda step, t, x: ours.update(latents=x.copy()), **args).images
    assert_latents_match(theirs["latents"], ours["latents"])
    assert got.shape == expected.shape == (1, 104, 160, 3)
    assert record("SDXL image (np, [0, 1]), max abs diff", np.abs(got - expected).max()) <= 1e-3


@pytest.mark.parametrize("model", ["inpaint", "base", "refiner"])
@pytest.mark.parametrize("strength,negative,scheduler", [
    (1.0, None, "euler_a"), (0.6, "blurry", "dpmpp_2m"), (0.5, "dark", "heun"), (0.75, None, "ddim"),
])
def test_strength_and_negative_prompts(sdxl_pipes, loaded, model, strength, negative, scheduler):
    expected, got = run_both(sdxl_pipes[model], loaded[model], 6, scheduler, prompt=PROMPT, negative_prompt=negative,
                             strength=strength, num_inference_steps=5, output_type="latent", **SIZE)
    assert_latents_match(expected, got)


@pytest.mark.parametrize("model", ["inpaint", "base"])
def test_second_prompts(sdxl_pipes, loaded, model):
    expected, got = run_both(sdxl_pipes[model], loaded[model], 7, "unipc", prompt="a cat", prompt_2="oil painting",
                             negative_prompt="ugly", negative_prompt_2="dark", num_inference_steps=3,
                             output_type="latent", **SIZE)
    assert_latents_match(expected, got)


@pytest.mark.parametrize("model", ["inpaint", "refiner"])
def test_micro_conditioning(sdxl_pipes, loaded, model):
    args = dict(original_size=(512, 768), crops_coords_top_left=(16, 8), negative_original_size=(256, 256),
                negative_crops_coords_top_left=(4, 0))
    if model == "refiner":
        args.update(aesthetic_score=7.5, negative_aesthetic_score=1.0)
    else:
        args.update(target_size=(1024, 1024), negative_target_size=(640, 512))
    expected, got = run_both(sdxl_pipes[model], loaded[model], 8, "euler", prompt=PROMPT, negative_prompt="grey",
                             num_inference_steps=3, output_type="latent", **SIZE, **args)
    assert_latents_match(expected, got)
    plain = loaded[model].inpaint(sample_image(160, 104), sample_mask(160, 104), prompt=PROMPT, negative_prompt="grey",
                                  num_inference_steps=3, output_type="latent", generator=8, progress=False, **SIZE)
    again = loaded[model].inpaint(sample_image(160, 104), sample_mask(160, 104), prompt=PROMPT, negative_prompt="grey",
                                  num_inference_steps=3, output_type="latent", generator=8, progress=False, **SIZE,
                                  **args)
    assert not np.allclose(plain.images, again.images)  # the conditioning reaches the UNet


@pytest.mark.parametrize("model", ["inpaint", "base"])
def test_batches_without_guidance_and_prompt_lists(sdxl_pipes, loaded, model):
    expected, got = run_both(sdxl_pipes[model], loaded[model], 9, "lms", prompt=["a cat", "a dog"],
                             num_images_per_prompt=2, guidance_scale=1.0, num_inference_steps=3, output_type="latent",
                             **SIZE)
    assert got.shape == (4, 4, 13, 20)
    assert_latents_match(expected, got)
    expected, got = run_both(sdxl_pipes[model], loaded[model], 9, "euler", prompt=["a cat", "a dog"],
                             negative_prompt=["ugly", "dark"], num_images_per_prompt=2, num_inference_steps=2,
                             output_type="latent", **SIZE)
    assert_latents_match(expected, got)


def test_prompt_embeds_from_encode_prompt(sdxl_pipes, loaded):
    """engine.encode_prompt returns diffusers' four tensors; feeding them back gives the prompt's result."""
    import torch

    engine, pipe = loaded["inpaint"], sdxl_pipes["inpaint"]
    ours = engine.encode_prompt("a cat", negative_prompt="dog", num_images_per_prompt=2, prompt_2="a hat")
    with torch.no_grad():
        theirs = pipe.encode_prompt("a cat", prompt_2="a hat", device="cpu", num_images_per_prompt=2,
                                    do_classifier_free_guidance=True, negative_prompt="dog")
    for mine, reference in zip(ours, theirs):
        assert mine.shape == tuple(reference.shape)
        assert np.abs(mine - reference.numpy()).max() <= 1e-4 * np.abs(reference.numpy()).max()
    names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
    embeds = dict(zip(names, (e[:1] for e in ours)))
    with_text = engine.inpaint(sample_image(160, 104), sample_mask(160, 104), prompt="a cat", prompt_2="a hat",
                               negative_prompt="dog", generator=3, num_inference_steps=3, output_type="latent",
                               progress=False, **SIZE).images
    with_embeds = engine.inpaint(sample_image(160, 104), sample_mask(160, 104), generator=3, num_inference_steps=3,
                                 output_type="latent", progress=False, **SIZE, **embeds).images
    assert np.array_equal(with_text, with_embeds)


def test_prompt_embeds_match_diffusers(sdxl_pipes, loaded):
    import torch

    rng = np.random.default_rng(0)
    embeds = {"prompt_embeds": rng.standard_normal((1, 77, 80), dtype=np.float32),
              "pooled_prompt_embeds": rng.standard_normal((1, 48), dtype=np.float32)}
    image, mask = sample_image(160, 104), sample_mask(160, 104)
    args = dict(num_inference_steps=3, output_type="latent", negative_prompt="dog", **SIZE)
    expected = diffusers_inpaint(sdxl_pipes["inpaint"], 2, "euler", image=image, mask_image=mask, **args,
                                 **{k: torch.from_numpy(v) for k, v in embeds.items()})
    got = loaded["inpaint"].inpaint(image, mask, generator=np.random.default_rng(2), progress=False, **args,
                                    **embeds).images
    assert_latents_match(expected, got)


def test_default_size_and_strength_come_from_the_model(sdxl_pipes, loaded):
    """No height/width: the UNet config's sample size (128 for the tiny model, 1024 for SDXL); strength 0.9999."""
    image, mask = sample_image(200, 150), sample_mask(200, 150)
    expected, got = run_both(sdxl_pipes["inpaint"], loaded["inpaint"], 4, image=image, mask_image=mask,
                             prompt=PROMPT, num_inference_steps=3, output_type="latent")
    assert got.shape == (1, 4, 16, 16)
    assert_latents_match(expected, got)


@pytest.mark.parametrize("first", ["inpaint", "base"])
def test_base_to_refiner_chain_matches_diffusers(sdxl_pipes, loaded, first):
    """The documented ensemble of experts: base with denoising_end=0.8 hands latents to the refiner with
    denoising_start=0.8; both sides chained the same way, every draw replayed."""
    image, mask = sample_image(160, 104), sample_mask(160, 104)
    args = dict(prompt=PROMPT, num_inference_steps=10, scheduler="euler")
    handed = diffusers_inpaint(sdxl_pipes[first], 1, "euler", image=image, mask_image=mask, denoising_end=0.8,
                               output_type="latent", prompt=PROMPT, num_inference_steps=10, **SIZE)
    expected = diffusers_inpaint(sdxl_pipes["refiner"], 2, "euler", image=handed, mask_image=mask,
                                 denoising_start=0.8, output_type="latent", prompt=PROMPT, num_inference_steps=10,
                                 **SIZE)
    ours_handed = loaded[first].inpaint(image, mask, denoising_end=0.8, output_type="latent",
                                        generator=np.random.default_rng(1), progress=False, **args, **SIZE).images
    assert_latents_match(handed, ours_handed)
    got = loaded["refiner"].inpaint(ours_handed, mask, denoising_start=0.8, output_type="latent",
                                    generator=np.random.default_rng(2), progress=False, **args).images
    assert_latents_match(expected, got)


@pytest.mark.parametrize("scheduler", ["heun", "dpmpp_2m", "ddim"])
def test_denoising_start_and_end_per_scheduler(sdxl_pipes, loaded, scheduler):
    """The cut points for first- and second-order schedulers (Heun's odd-count rule)."""
    image, mask = sample_image(160, 104), sample_mask(160, 104)
    for kwargs in (dict(denoising_end=0.6), dict(denoising_start=0.3), dict(denoising_start=0.25, denoising_end=0.7)):
        expected, got = run_both(sdxl_pipes["base"], loaded["base"], 3, scheduler, image=image, mask_image=mask,
                                 prompt=PROMPT, num_inference_steps=6, output_type="latent", **SIZE, **kwargs)
        assert_latents_match(expected, got)


def test_crop_blur_and_keep_unmasked(sdxl_pipes, loaded):
    image, mask = sample_image(160, 104), sample_mask(160, 104)
    expected, got = run_both(sdxl_pipes["inpaint"], loaded["inpaint"], 12, image=image, mask_image=mask,
                             prompt=PROMPT, num_inference_steps=3, padding_mask_crop=8, output_type="pil", **SIZE)
    diff = np.abs(np.asarray(got[0], np.int16) - np.asarray(expected[0], np.int16))
    assert got[0].size == (160, 104) and diff.max() <= 1
    kept = loaded["base"].inpaint(image, mask, prompt=PROMPT, num_inference_steps=2, keep_unmasked=True, blur_factor=4,
                                  generator=1, progress=False, **SIZE).images[0]
    outside = np.asarray(mask) == 0
    blurred_edge = np.asarray(mask.filter(ImageFilter.GaussianBlur(4))) > 0
    keep = outside & ~blurred_edge
    assert np.array_equal(np.asarray(kept)[keep], np.asarray(image)[keep])


def test_manifest_describes_the_family(sdxl_engines):
    import json

    inpaint = json.loads((sdxl_engines["inpaint"] / "manifest.json").read_text())
    refiner = json.loads((sdxl_engines["refiner"] / "manifest.json").read_text())
    assert inpaint["model"]["family"] == refiner["model"]["family"] == "sdxl"
    assert inpaint["model"]["text_encoders"] == ["text_encoder", "text_encoder_2"]
    assert refiner["model"]["text_encoders"] == ["text_encoder_2"] and "text_encoder" not in refiner["components"]
    assert (inpaint["model"]["time_ids"], refiner["model"]["time_ids"]) == (6, 5)
    assert refiner["model"]["requires_aesthetics_score"] and not inpaint["model"]["requires_aesthetics_score"]
    assert inpaint["model"]["vae_scaling_factor"] == pytest.approx(0.13025)
    assert inpaint["model"]["default_height"] == 128
    assert set(inpaint["tokenizers"]) == {"text_encoder", "text_encoder_2"}
    unet = {t["name"]: t["shape"] for t in inpaint["components"]["unet"]["inputs"]}
    assert unet["text_embeds"] == ["batch", 48] and unet["time_ids"] == ["batch", 6]
    for manifest in (inpaint, refiner):
        assert all(c["parity"]["max_rel_error"] <= 1e-4 for c in manifest["components"].values())


class RecordingGenerator:
    """numpy's generator, remembering the shape of every draw."""

    def __init__(self, seed):
        self.rng, self.shapes = np.random.default_rng(seed), []

    def standard_normal(self, shape, dtype=np.float32):
        self.shapes.append(tuple(shape))
        return self.rng.standard_normal(shape, dtype=dtype)


@pytest.mark.parametrize("model,kwargs", [
    ("inpaint", {}), ("inpaint", dict(strength=1.0)), ("base", {}), ("base", dict(strength=1.0)),
    ("refiner", dict(scheduler="euler_a")), ("base", dict(denoising_end=0.5, scheduler="ddim")),
], ids=["inpaint", "inpaint-full", "base", "base-full", "refiner-ancestral", "base-end"])
def test_every_draw_in_diffusers_order(sdxl_pipes, loaded, model, kwargs):
    """The same draws, in the same order and shapes, as diffusers: none skipped, none extra."""
    kwargs = dict(kwargs)
    scheduler = kwargs.pop("scheduler", "euler")
    theirs, ours = [], RecordingGenerator(4)
    image, mask = sample_image(160, 104), sample_mask(160, 104)
    args = dict(prompt=PROMPT, num_inference_steps=4, output_type="latent", **SIZE, **kwargs)
    diffusers_inpaint(sdxl_pipes[model], 4, scheduler, draws=theirs, image=image, mask_image=mask, **args)
    loaded[model].inpaint(image, mask, scheduler=scheduler, generator=ours, progress=False, **args)
    assert ours.shapes == theirs and len(theirs) >= 2


def test_refiner_hand_off_draws_in_diffusers_order(sdxl_pipes, loaded):
    latents = np.random.default_rng(0).standard_normal((1, 4, 13, 20), dtype=np.float32)
    import torch

    theirs, ours = [], RecordingGenerator(4)
    args = dict(prompt=PROMPT, num_inference_steps=4, output_type="latent", denoising_start=0.5, **SIZE)
    diffusers_inpaint(sdxl_pipes["refiner"], 4, "euler", draws=theirs, image=torch.from_numpy(latents),
                      mask_image=sample_mask(160, 104), **args)
    loaded["refiner"].inpaint(latents, sample_mask(160, 104), generator=ours, progress=False, **args)
    assert ours.shapes == theirs == [(1, 4, 13, 20)]  # the noise only: no image encode, no masked-image encode
