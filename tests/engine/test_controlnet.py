"""ControlNet inpainting: Engine.inpaint against diffusers' StableDiffusionControlNetInpaintPipeline
with every random draw replayed, on tiny random ControlNets (an inpaint-style one, a plain one, both together)
and both UNet kinds."""
import numpy as np
import pytest

from diffusers_runs import diffusers_inpaint
from parity import record
from controlnet_helpers import (SIZE, check_against_diffusers, controlnet_pipeline, edge_picture, inputs,
                                make_inpaint_condition)
from inpaintrt import Engine

PROMPT = "a red bench in a park"


@pytest.fixture(scope="module")
def exported(controlnet_exported):
    return controlnet_exported


@pytest.fixture(scope="module")
def loaded(exported):
    return {key: Engine.load(path) for key, path in exported["engines"].items()}


@pytest.fixture(scope="module")
def nets(exported):
    from diffusers import ControlNetModel

    return {kind: ControlNetModel.from_pretrained(str(folder)).eval() for kind, folder in exported["folders"].items()}


def run_both(pipe, engine, diffusers_nets, ours, theirs, seed=7, scheduler="euler", draws=None, **args):
    """Final latents (caught by callback_on_step_end on both sides) and the np image, diffusers' and ours."""
    image, mask = inputs()
    args = dict(dict(prompt=PROMPT, num_inference_steps=4, output_type="np", **SIZE), **args)
    caught = {}

    def catch(pipe, step, t, tensors):
        caught["theirs"] = tensors["latents"].numpy().copy()
        return tensors

    expected = diffusers_inpaint(controlnet_pipeline(pipe, diffusers_nets), seed, scheduler, draws=draws,
                                 image=image, mask_image=mask, callback_on_step_end=catch, **args, **theirs)
    got = engine.inpaint(image, mask, scheduler=scheduler, generator=np.random.default_rng(seed), progress=False,
                         callback_on_step_end=lambda step, t, x: caught.update(ours=x.copy()), **args, **ours).images
    check_against_diffusers(caught, got, expected, "ControlNet")
    return expected, got


@pytest.mark.parametrize("channels", [9, 4])
@pytest.mark.parametrize("strength,scheduler", [(1.0, "euler"), (0.6, "pndm"), (0.75, "euler_a")])
def test_plain_controlnet(pipes, loaded, nets, channels, strength, scheduler):
    """One plain (canny-like) ControlNet, scale != 1; on the two-ControlNet engine the inpaint one is off (scale 0)."""
    canny = edge_picture()
    run_both(pipes[channels], loaded[channels], [nets["plain"]], scheduler=scheduler, strength=strength,
             ours=dict(control_image=[None, canny], controlnet_conditioning_scale=[0.0, 0.8]),
             theirs=dict(control_image=canny, controlnet_conditioning_scale=0.8))


@pytest.mark.parametrize("channels", [9, 4])
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_inpaint_controlnet_builds_its_condition(pipes, loaded, nets, channels, strength):
    """No control image: the inpaint ControlNet gets make_inpaint_condition(image, mask), as the guide builds it."""
    image, mask = inputs()
    run_both(pipes[channels], loaded[channels], [nets["inpaint"]], scheduler="dpmpp_2m", strength=strength,
             negative_prompt="blurry", ours=dict(controlnet_conditioning_scale=[1.0, 0.0]),
             theirs=dict(control_image=make_inpaint_condition(image, mask), controlnet_conditioning_scale=1.0))


@pytest.mark.parametrize("channels", [9, 4])
@pytest.mark.parametrize("guidance", [7.5, 1.0])
def test_guess_mode(pipes, loaded, nets, channels, guidance):
    """Guess mode: the conditional half only with guidance, log-spaced residual scales in any case."""
    canny = edge_picture()
    run_both(pipes[channels], loaded["single"] if channels == 9 else loaded[4], [nets["plain"]],
             guidance_scale=guidance, strength=0.8,
             ours=dict(control_image=canny if channels == 9 else [None, canny], guess_mode=True,
                       controlnet_conditioning_scale=0.7 if channels == 9 else [0.0, 0.7]),
             theirs=dict(control_image=canny, guess_mode=True, controlnet_conditioning_scale=0.7))


@pytest.mark.parametrize("channels", [9, 4])
@pytest.mark.parametrize("start,end", [(0.25, 0.75), (0.0, 0.5), (0.5, 1.0)])
def test_guidance_window(pipes, loaded, nets, channels, start, end):
    image, mask = inputs()
    run_both(pipes[channels], loaded[channels], [nets["inpaint"]], num_inference_steps=5, scheduler="ddim",
             ours=dict(controlnet_conditioning_scale=[1.3, 0.0], control_guidance_start=start,
                       control_guidance_end=end),
             theirs=dict(control_image=make_inpaint_condition(image, mask), controlnet_conditioning_scale=1.3,
                         control_guidance_start=start, control_guidance_end=end))


@pytest.mark.parametrize("channels", [9, 4])
@pytest.mark.parametrize("guess", [False, True])
def test_two_controlnets(pipes, loaded, nets, channels, guess):
    """Both ControlNets: a list of images (the inpaint condition given as the guide's tensor), per-net scales and
    windows, residuals summed."""
    image, mask = inputs()
    condition, canny = make_inpaint_condition(image, mask), edge_picture()
    common = dict(controlnet_conditioning_scale=[0.9, 0.6], control_guidance_start=[0.0, 0.25],
                  control_guidance_end=[0.75, 1.0], guess_mode=guess, strength=0.9)
    run_both(pipes[channels], loaded[channels], [nets["inpaint"], nets["plain"]], scheduler="unipc",
             ours=dict(control_image=[condition, canny]), theirs=dict(control_image=[condition, canny]), **common)


def test_two_controlnets_auto_condition_and_several_images(pipes, loaded, nets):
    image, mask = inputs()
    condition, canny = make_inpaint_condition(image, mask), edge_picture()
    common = dict(controlnet_conditioning_scale=[0.9, 0.6], control_guidance_start=[0.0, 0.25],
                  control_guidance_end=[0.75, 1.0], strength=0.9, num_images_per_prompt=2)
    run_both(pipes[9], loaded[9], [nets["inpaint"], nets["plain"]], scheduler="unipc",
             ours=dict(control_image=[None, canny]), theirs=dict(control_image=[condition, canny]), **common)


def test_single_controlnet_engine_and_resized_inputs(pipes, loaded, nets):
    """A one-ControlNet engine takes a single picture; a 200x130 input and control picture are resized
    (control: Lanczos, RGB, [0, 1]) to the 160x104 output as diffusers does."""
    from PIL import Image

    from pictures import sample_image, sample_mask

    image, mask = sample_image(200, 130, seed=4), sample_mask(200, 130)
    canny = edge_picture(200, 130).convert("RGBA")  # converted to RGB after the resize, as diffusers does
    args = dict(prompt=PROMPT, num_inference_steps=3, output_type="latent", **SIZE, controlnet_conditioning_scale=1.5)
    expected = diffusers_inpaint(controlnet_pipeline(pipes[9], [nets["plain"]]), 2, "euler", image=image,
                                 mask_image=mask, control_image=canny, **args).numpy()
    got = loaded["single"].inpaint(image, mask, control_image=canny, scheduler="euler",
                                   generator=np.random.default_rng(2), progress=False, **args).images
    assert record("ControlNet latents, max abs diff / max abs",
                  np.abs(got - expected).max() / np.abs(expected).max()) <= 1e-3
    assert isinstance(canny, Image.Image)


def test_float_array_control_image(pipes, loaded, nets):
    """A 1 x H x W x 3 float array in [0, 1] at the input's size: nearest-neighbour resize, like diffusers' arrays."""
    image, mask = inputs(200, 130)
    canny = np.asarray(edge_picture(200, 130), np.float32)[None] / 255.0
    args = dict(prompt=PROMPT, num_inference_steps=3, output_type="latent", **SIZE, controlnet_conditioning_scale=0.9)
    expected = diffusers_inpaint(controlnet_pipeline(pipes[9], [nets["plain"]]), 3, "euler", image=image,
                                 mask_image=mask, control_image=canny, **args).numpy()
    got = loaded["single"].inpaint(image, mask, control_image=canny, scheduler="euler",
                                   generator=np.random.default_rng(3), progress=False, **args).images
    assert np.abs(got - expected).max() <= 1e-3 * np.abs(expected).max()


@pytest.mark.parametrize("channels", [9, 4])
@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_draws_are_the_plain_pipelines(pipes, nets, channels, strength):
    """diffusers' ControlNet inpaint pipeline draws what the plain one draws (docs/architecture.md, "Randomness"), so the engine's
    draw order serves both."""
    image, mask = inputs()
    args = dict(prompt=PROMPT, num_inference_steps=2, output_type="latent", strength=strength, **SIZE)
    plain, control = [], []
    diffusers_inpaint(pipes[channels], 1, "euler_a", draws=plain, image=image, mask_image=mask, **args)
    diffusers_inpaint(controlnet_pipeline(pipes[channels], [nets["plain"]]), 1, "euler_a", draws=control,
                      image=image, mask_image=mask, control_image=edge_picture(), **args)
    steps = 2 if strength == 1 else 1  # euler_a draws once per step
    assert control == plain and len(plain) == (2 if channels == 9 and strength == 1 else 3) + steps


def test_without_control_the_engine_is_the_plain_pipeline(pipes, loaded):
    """A ControlNet engine called without control (a plain ControlNet given no picture) is diffusers' plain
    inpainting: the residual inputs get zeros."""
    image, mask = inputs()
    args = dict(prompt=PROMPT, num_inference_steps=3, output_type="latent", **SIZE)
    expected = diffusers_inpaint(pipes[9], 5, "euler", image=image, mask_image=mask, **args).numpy()
    got = loaded["single"].inpaint(image, mask, scheduler="euler", generator=np.random.default_rng(5),
                                   progress=False, **args).images
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_padding_mask_crop_crops_the_control_image(pipes, loaded, nets):
    """padding_mask_crop: the PIL control image is cropped to the mask's box and fill-resized like the image,
    and the result is pasted back (diffusers' apply_overlay)."""
    image, mask = inputs()
    canny = edge_picture()
    args = dict(prompt=PROMPT, num_inference_steps=3, padding_mask_crop=6, output_type="pil", height=64, width=64,
                control_image=canny, controlnet_conditioning_scale=1.2)
    expected = diffusers_inpaint(controlnet_pipeline(pipes[9], [nets["plain"]]), 4, "euler", image=image,
                                 mask_image=mask, **args)[0]
    got = loaded["single"].inpaint(image, mask, scheduler="euler", generator=np.random.default_rng(4),
                                   progress=False, **args).images[0]
    assert got.size == expected.size == image.size
    assert np.abs(np.asarray(got, np.int16) - np.asarray(expected, np.int16)).max() <= 1


def test_global_pool_controlnet(checkpoints, pipes, tmp_path):
    """A global_pool_conditions ControlNet (shuffle-like): residuals averaged over the picture in its graph,
    guess mode forced on, as diffusers does."""
    from controlnet_helpers import build_controlnet
    from inpaintrt.export.controlnet import load_controlnet
    from inpaintrt.export.exporter import export_engine
    from inpaintrt.export.loading import load_pipeline

    net = build_controlnet(30, global_pool_conditions=True)
    net.save_pretrained(tmp_path / "shuffle")
    engine = Engine.load(export_engine(load_pipeline(str(checkpoints[9])), tmp_path / "engine", log=lambda *_: None,
                                       controlnets=[load_controlnet(str(tmp_path / "shuffle"))]))
    assert engine.manifest["controlnets"][0]["global_pool_conditions"] is True
    run_both(pipes[9], engine, [net.eval()], strength=0.8, ours=dict(control_image=edge_picture()),
             theirs=dict(control_image=edge_picture()))  # both sides at their default scale, 0.5
