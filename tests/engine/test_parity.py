"""Engine.inpaint against diffusers' StableDiffusionInpaintPipeline with every random draw replayed."""
import numpy as np
import pytest

from diffusers_runs import DIFFUSERS_SCHEDULERS, diffusers_inpaint
from parity import record
from pictures import sample_image, sample_mask
from inpaintrt import Engine

SIZE = dict(height=104, width=160)  # non-square; 13x20 latents: 13 is not divisible by the tiny UNet's 4x
STEPS = 4


@pytest.fixture(scope="module")
def loaded(engines):
    return {ch: Engine.load(path) for ch, path in engines.items()}


def compare(pipe, engine, seed, scheduler, output_type, **kwargs):
    image, mask = sample_image(160, 104), sample_mask(160, 104)
    args = dict(prompt="a red bench in a park", num_inference_steps=STEPS, output_type=output_type, **SIZE, **kwargs)
    expected = diffusers_inpaint(pipe, seed, scheduler, image=image, mask_image=mask, **args)
    got = engine.inpaint(image, mask, scheduler=scheduler, generator=np.random.default_rng(seed),
                         progress=False, **args).images
    if output_type == "pil":
        return expected, got
    return np.asarray(expected.numpy() if hasattr(expected, "numpy") else expected), np.asarray(got)


@pytest.mark.parametrize("channels", [9, 4])
@pytest.mark.parametrize("scheduler", sorted(DIFFUSERS_SCHEDULERS))
@pytest.mark.parametrize("strength", [1.0, 0.6, 0.5])
@pytest.mark.parametrize("negative", [None, "blurry, low quality"])
def test_matches_diffusers(pipes, loaded, channels, scheduler, strength, negative):
    """Final latents (caught by callback_on_step_end on both sides) and the decoded image."""
    image, mask = sample_image(160, 104), sample_mask(160, 104)
    args = dict(prompt="a red bench in a park", negative_prompt=negative, num_inference_steps=STEPS, strength=strength,
                guidance_scale=7.5, output_type="np", **SIZE)
    theirs, ours = {}, {}

    def catch_theirs(pipe, step, t, tensors):
        theirs["latents"] = tensors["latents"].numpy().copy()
        return tensors

    expected = diffusers_inpaint(pipes[channels], 7, scheduler, image=image, mask_image=mask,
                                 callback_on_step_end=catch_theirs, **args)
    got = loaded[channels].inpaint(image, mask, scheduler=scheduler, generator=np.random.default_rng(7),
                                   callback_on_step_end=lambda step, t, x: ours.update(latents=x.copy()),
                                   progress=False, **args).images
    assert ours["latents"].shape == theirs["latents"].shape == (1, 4, 13, 20)
    latent_error = np.abs(ours["latents"] - theirs["latents"]).max() / np.abs(theirs["latents"]).max()
    assert record("latents, max abs diff / max abs", latent_error) <= 1e-3
    assert got.shape == expected.shape == (1, 104, 160, 3) and got.dtype == np.float32
    assert record("image (np, [0, 1]), max abs diff", np.abs(got - expected).max()) <= 1e-3


def test_latent_output_type_matches(pipes, loaded):
    expected, got = compare(pipes[9], loaded[9], 8, "dpmpp_2m", "latent", strength=0.6)
    assert got.shape == expected.shape == (1, 4, 13, 20)
    assert np.abs(got - expected).max() <= 1e-3 * np.abs(expected).max()


@pytest.mark.parametrize("channels", [9, 4])
def test_without_guidance_and_several_images(pipes, loaded, channels):
    kwargs = dict(guidance_scale=1.0, num_images_per_prompt=2, strength=0.8)
    expected, got = compare(pipes[channels], loaded[channels], 3, "euler", "latent", **kwargs)
    assert got.shape == expected.shape == (2, 4, 13, 20)
    assert np.abs(got - expected).max() <= 1e-3 * np.abs(expected).max()


def test_caller_latents_and_prompt_list(pipes, loaded):
    import torch

    noise = np.random.default_rng(5).standard_normal((2, 4, 13, 20), dtype=np.float32)
    kwargs = dict(prompt=["a cat", "a dog"], negative_prompt=["ugly", "dark"], num_inference_steps=3)
    image, mask = sample_image(160, 104), sample_mask(160, 104)
    expected = diffusers_inpaint(pipes[9], 1, "ddim", image=image, mask_image=mask, latents=torch.from_numpy(noise),
                                 output_type="latent", **SIZE, **kwargs).numpy()
    got = loaded[9].inpaint(image, mask, scheduler="ddim", latents=noise, generator=1, output_type="latent",
                            progress=False, **SIZE, **kwargs).images
    assert np.abs(got - expected).max() <= 1e-3 * np.abs(expected).max()


def test_pil_output_matches(pipes, loaded):
    expected, got = compare(pipes[9], loaded[9], 11, "pndm", "pil")
    assert got[0].size == (160, 104)
    diff = np.abs(np.asarray(got[0], np.int16) - np.asarray(expected[0], np.int16))
    assert diff.max() <= 1  # uint8 rounding of values equal to 1e-3


def test_integer_seed_is_deterministic(loaded):
    args = dict(prompt="x", num_inference_steps=2, output_type="np", progress=False, **SIZE)
    first = loaded[9].inpaint(sample_image(160, 104), sample_mask(160, 104), generator=42, **args).images
    again = loaded[9].inpaint(sample_image(160, 104), sample_mask(160, 104), generator=42, **args).images
    other = loaded[9].inpaint(sample_image(160, 104), sample_mask(160, 104), generator=43, **args).images
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_input_resized_like_diffusers(pipes, loaded):
    """A 200x130 picture and an RGB mask are resized (Lanczos) and converted as diffusers does.
    (diffusers itself takes only RGB pictures: it reads an RGBA one's 4 channels as latents.)"""
    image = sample_image(200, 130, seed=4)
    mask = sample_mask(200, 130).convert("RGB")
    args = dict(prompt="a boat", num_inference_steps=3, output_type="latent", **SIZE)
    expected = diffusers_inpaint(pipes[4], 2, "euler", image=image, mask_image=mask, **args).numpy()
    got = loaded[4].inpaint(image, mask, scheduler="euler", generator=np.random.default_rng(2), progress=False,
                            **args).images
    assert np.abs(got - expected).max() <= 1e-3 * np.abs(expected).max()


@pytest.mark.parametrize("scheduler,options,pipe_kwargs", [
    ("pndm", {"skip_prk_steps": False}, {}),
    ("ddim", {"eta": 0.3}, {"eta": 0.3}),
    ("euler", {"use_karras_sigmas": True, "timestep_spacing": "trailing"}, {}),
], ids=["pndm-prk", "ddim-eta", "euler-karras-trailing"])
@pytest.mark.parametrize("channels", [9, 4])
def test_scheduler_options_match_diffusers(pipes, loaded, scheduler, options, pipe_kwargs, channels):
    image, mask = sample_image(160, 104), sample_mask(160, 104)
    args = dict(prompt="a kite", num_inference_steps=5, output_type="latent", **SIZE)
    config = {k: v for k, v in options.items() if k != "eta"}  # eta is a call argument in diffusers
    expected = diffusers_inpaint(pipes[channels], 4, scheduler, config, image=image, mask_image=mask,
                                 **args, **pipe_kwargs).numpy()
    got = loaded[channels].inpaint(image, mask, scheduler=scheduler, scheduler_options=options,
                                   generator=np.random.default_rng(4), progress=False, **args).images
    assert np.abs(got - expected).max() <= 1e-3 * np.abs(expected).max()
