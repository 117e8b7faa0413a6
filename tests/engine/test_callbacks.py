"""callback_on_step_end in diffusers' form, callback(pipe, step, timestep, callback_kwargs) -> dict: the same
callback code gives the same picture in the engine as in diffusers (every draw replayed), the short
(step, timestep, latents) form keeps working, and the tensor names are checked as diffusers checks them. How the
two forms are told apart, without an engine: tests/runtime/test_callback_forms.py."""
import numpy as np
import pytest
import torch

from diffusers_runs import diffusers_inpaint, numpy_randn
from parity import record
from pictures import sample_image, sample_mask
from inpaintrt import Engine, StopDenoising

ARGS = dict(prompt="a red bench", num_inference_steps=4, height=64, width=96, output_type="np")


@pytest.fixture(scope="module")
def loaded(engines):
    return {ch: Engine.load(path) for ch, path in engines.items()}


def tweak(pipe, step, t, tensors):
    """Code as a diffusers user writes it; numpy and torch arrays both take this arithmetic."""
    if step == 1:
        tensors["latents"] = tensors["latents"] * 0.7 + 0.05
    if step == 2:
        tensors["prompt_embeds"] = tensors["prompt_embeds"] * 0.5
        tensors["mask"] = tensors["mask"] * 0 + 1  # repaint everything from here on
    return tensors


def interrupt_after_two(pipe, step, t, tensors):
    if step == 1:
        pipe._interrupt = True
    return {"latents": tensors["latents"] * 0.9}


@pytest.mark.parametrize("channels", [9, 4])
@pytest.mark.parametrize("callback,names", [(tweak, ["latents", "prompt_embeds", "mask"]),
                                            (interrupt_after_two, ["latents"])], ids=["tweak", "interrupt"])
def test_diffusers_form_matches_diffusers(pipes, loaded, channels, callback, names):
    image, mask = sample_image(96, 64), sample_mask(96, 64)
    expected = diffusers_inpaint(pipes[channels], 4, "euler", image=image, mask_image=mask, callback_on_step_end=callback,
                                 callback_on_step_end_tensor_inputs=names, **ARGS)
    got = loaded[channels].inpaint(image, mask, scheduler="euler", generator=4, progress=False,
                                   callback_on_step_end=callback, callback_on_step_end_tensor_inputs=names,
                                   **ARGS).images
    assert record("callback image (np, [0, 1]), max abs diff", np.abs(got - expected).max()) <= 1e-3
    plain = loaded[channels].inpaint(image, mask, scheduler="euler", generator=4, progress=False, **ARGS).images
    assert np.abs(plain - got).max() > 1e-2, "the callback changed the picture"


def test_callback_sees_the_engine_and_diffusers_shapes(loaded):
    seen = {}

    def look(pipe, step, t, tensors):
        seen.update(pipe=pipe, **{k: v.shape for k, v in tensors.items()})
        return tensors

    names = ["latents", "prompt_embeds", "negative_prompt_embeds", "mask", "masked_image_latents"]
    loaded[9].inpaint(sample_image(96, 64), sample_mask(96, 64), generator=0, progress=False,
                      callback_on_step_end=look, callback_on_step_end_tensor_inputs=names,
                      **dict(ARGS, num_inference_steps=1))
    assert seen == {"pipe": loaded[9], "latents": (1, 4, 8, 12), "prompt_embeds": (2, 77, 32),
                    "negative_prompt_embeds": (1, 77, 32), "mask": (2, 1, 8, 12), "masked_image_latents": (2, 4, 8, 12)}


def test_short_form_and_stop_denoising_still_work(loaded):
    steps = []

    def short(step, t, latents):
        steps.append(step)
        if step == 1:
            raise StopDenoising
        return latents

    loaded[9].inpaint(sample_image(96, 64), sample_mask(96, 64), generator=0, progress=False,
                      callback_on_step_end=short, **ARGS)
    assert steps == [0, 1]


@pytest.mark.parametrize("kwargs,message", [
    (dict(callback_on_step_end_tensor_inputs=["latents", "noise_pred"]),
     r"callback_on_step_end_tensor_inputs has to be in \['latents', 'prompt_embeds', .*\], but found \['noise_pred'\]"),
    (dict(callback_on_step_end_tensor_inputs="latents"), "must be a list of names from"),
    (dict(callback_on_step_end=lambda pipe, i, t, kw: kw["latents"]), "returned a ndarray; diffusers' form returns"),
    (dict(callback_on_step_end=lambda pipe, i, t, kw: {"latents": kw["latents"][:, :2]}),
     "callback_on_step_end returned latents of shape"),
    (dict(callback_on_step_end=3), "callback_on_step_end must be a function"),
])
def test_bad_callbacks(loaded, kwargs, message):
    with pytest.raises(ValueError, match=message):
        loaded[9].inpaint(sample_image(96, 64), sample_mask(96, 64), generator=0, progress=False, **ARGS, **kwargs)


def test_masked_image_latents_of_a_4_channel_unet_is_refused(loaded):
    with pytest.raises(ValueError, match="'masked_image_latents' is not made for a 4-channel UNet"):
        loaded[4].inpaint(sample_image(96, 64), sample_mask(96, 64), progress=False, **ARGS,
                          callback_on_step_end=lambda pipe, i, t, kw: kw,
                          callback_on_step_end_tensor_inputs=["latents", "masked_image_latents"])


def test_kandinsky_diffusers_form(kandinsky):
    """The combined pipeline hands the callback to its decoder: the same changes give the same picture."""
    def change(pipe, step, t, tensors):
        if step == 1:
            tensors["latents"] = tensors["latents"] * 0.8
            tensors["image_embeds"] = tensors["image_embeds"] * 1.5
        return tensors

    image, mask = sample_image(80, 48), sample_mask(80, 48)
    kwargs = dict(prompt="a red bench", height=48, width=80, output_type="np", num_inference_steps=3,
                  prior_num_inference_steps=3, callback_on_step_end=change,
                  callback_on_step_end_tensor_inputs=["latents", "image_embeds", "mask_image"])
    with numpy_randn(7), torch.no_grad():
        expected = kandinsky.combined(image=image, mask_image=mask, **kwargs).images
    got = Engine.load(kandinsky.engine).inpaint(image, mask, generator=7, progress=False, **kwargs).images
    assert np.abs(got - expected).max() <= 1e-3
