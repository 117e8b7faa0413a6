"""SDXL ControlNet inpainting: Engine.inpaint against diffusers' StableDiffusionXLControlNetInpaintPipeline with
every random draw replayed, on tiny SDXL checkpoints (9-channel inpainting and 4-channel base) and two tiny SDXL
ControlNets (an inpaint-style one, a plain one), whose added text_embeds/time_ids conditioning the engine feeds."""
import numpy as np
import pytest

from diffusers_runs import diffusers_inpaint
from controlnet_helpers import (SIZE, build_controlnet, build_sdxl_controlnet, check_against_diffusers, edge_picture,
                                inputs, make_inpaint_condition, run_fake_plans_with_control,
                                sdxl_controlnet_pipeline)
from inpaintrt import Engine

PROMPT = "a red bench in a park"
CHECKPOINTS = {9: "inpaint", 4: "base"}


@pytest.fixture(scope="module")
def exported(sdxl_checkpoints, tmp_path_factory):
    """{"nets": {kind: ControlNetModel}, "engines": {9: dir, 4: dir}}: each engine has [inpaint, plain] ControlNets."""
    from inpaintrt.export.controlnet import load_controlnet
    from inpaintrt.export.exporter import export_engine
    from inpaintrt.export.loading import load_pipeline

    root = tmp_path_factory.mktemp("sdxl-controlnet")
    nets = {kind: build_sdxl_controlnet(40 + i) for i, kind in enumerate(("inpaint", "plain"))}
    for kind, net in nets.items():
        net.save_pretrained(root / f"tiny-sdxl-controlnet-{kind}")
    sources = [f"{kind}={root / f'tiny-sdxl-controlnet-{kind}'}" for kind in nets]
    engines = {ch: export_engine(load_pipeline(str(sdxl_checkpoints[name])), root / f"engine-{ch}",
                                 log=lambda *_: None, controlnets=[load_controlnet(s) for s in sources])
               for ch, name in CHECKPOINTS.items()}
    return {"nets": nets, "engines": engines, "root": root}


@pytest.fixture(scope="module")
def loaded(exported):
    return {ch: Engine.load(path) for ch, path in exported["engines"].items()}


@pytest.fixture(scope="module")
def nets(exported):
    return exported["nets"]


def run_both(pipe, engine, diffusers_nets, ours, theirs, seed=7, scheduler="euler", **args):
    """Final latents (caught by callback_on_step_end on both sides) and the np image, diffusers' and ours.
    guidance_scale is diffusers' default for this pipeline (5.0) unless a test sets it."""
    image, mask = inputs()
    args = dict(dict(prompt=PROMPT, num_inference_steps=4, output_type="np", guidance_scale=5.0, **SIZE), **args)
    caught = {}

    def catch(pipe, step, t, tensors):
        caught["theirs"] = tensors["latents"].numpy().copy()
        return tensors

    expected = diffusers_inpaint(sdxl_controlnet_pipeline(pipe, diffusers_nets), seed, scheduler, image=image,
                                 mask_image=mask, callback_on_step_end=catch, **args, **theirs)
    got = engine.inpaint(image, mask, scheduler=scheduler, generator=np.random.default_rng(seed), progress=False,
                         callback_on_step_end=lambda step, t, x: caught.update(ours=x.copy()), **args, **ours).images
    check_against_diffusers(caught, got, expected, "SDXL ControlNet")
    return expected, got


@pytest.mark.parametrize("channels", [9, 4])
@pytest.mark.parametrize("strength,scheduler", [(0.9999, "euler"), (1.0, "euler_a"), (0.6, "dpmpp_2m")])
def test_plain_controlnet(sdxl_pipes, loaded, nets, channels, strength, scheduler):
    """One plain (canny-like) ControlNet at scale 0.8; on the two-ControlNet engine the inpaint one is off."""
    canny = edge_picture()
    run_both(sdxl_pipes[CHECKPOINTS[channels]], loaded[channels], [nets["plain"]], scheduler=scheduler,
             strength=strength, ours=dict(control_image=[None, canny], controlnet_conditioning_scale=[0.0, 0.8]),
             theirs=dict(control_image=canny, controlnet_conditioning_scale=0.8))


@pytest.mark.parametrize("channels", [9, 4])
def test_default_scale_is_the_sdxl_pipelines(sdxl_pipes, loaded, nets, channels):
    """No ControlNet argument at all: the inpaint ControlNet gets make_inpaint_condition's picture at SDXL's
    default scale, 1.0 (diffusers' side is left at its default too); the plain one, given no picture, is off."""
    image, mask = inputs()
    run_both(sdxl_pipes[CHECKPOINTS[channels]], loaded[channels], [nets["inpaint"]], negative_prompt="blurry",
             ours={}, theirs=dict(control_image=make_inpaint_condition(image, mask)))


def test_scale_zero_is_the_plain_sdxl_pipeline(sdxl_pipes, loaded):
    """Scale 0 leaves the residual-input UNet equal to the plain one (diffusers' SDXL inpaint pipeline), and the
    default scale moves the result away from it: the ControlNet provably steers."""
    image, mask = inputs()
    args = dict(prompt=PROMPT, num_inference_steps=3, output_type="latent", guidance_scale=5.0, **SIZE)
    plain = diffusers_inpaint(sdxl_pipes["inpaint"], 5, "euler", image=image, mask_image=mask, **args).numpy()
    engine = loaded[9]
    off = engine.inpaint(image, mask, scheduler="euler", generator=np.random.default_rng(5), progress=False,
                         controlnet_conditioning_scale=0.0, **args).images
    steered = engine.inpaint(image, mask, scheduler="euler", generator=np.random.default_rng(5), progress=False,
                             **args).images
    assert np.abs(off - plain).max() <= 1e-4 * np.abs(plain).max()
    assert np.abs(steered - plain).max() > 0.05 * np.abs(plain).max()


@pytest.mark.parametrize("channels", [9, 4])
@pytest.mark.parametrize("guidance", [5.0, 1.0])
def test_guess_mode(sdxl_pipes, loaded, nets, channels, guidance):
    """Guess mode: with guidance the ControlNet sees the conditional half only (hidden states, text_embeds and
    time_ids alike); log-spaced residual scales in any case."""
    canny = edge_picture()
    run_both(sdxl_pipes[CHECKPOINTS[channels]], loaded[channels], [nets["plain"]], guidance_scale=guidance,
             strength=0.8, negative_prompt="grey",
             ours=dict(control_image=[None, canny], guess_mode=True, controlnet_conditioning_scale=[0.0, 0.7]),
             theirs=dict(control_image=canny, guess_mode=True, controlnet_conditioning_scale=0.7))


@pytest.mark.parametrize("channels", [9, 4])
@pytest.mark.parametrize("start,end", [(0.25, 0.75), (0.5, 1.0)])
def test_guidance_window(sdxl_pipes, loaded, nets, channels, start, end):
    image, mask = inputs()
    run_both(sdxl_pipes[CHECKPOINTS[channels]], loaded[channels], [nets["inpaint"]], num_inference_steps=5,
             scheduler="ddim", ours=dict(controlnet_conditioning_scale=[1.3, 0.0], control_guidance_start=start,
                                         control_guidance_end=end),
             theirs=dict(control_image=make_inpaint_condition(image, mask), controlnet_conditioning_scale=1.3,
                         control_guidance_start=start, control_guidance_end=end))


@pytest.mark.parametrize("guess", [False, True])
def test_two_controlnets(sdxl_pipes, loaded, nets, guess):
    """MultiControlNet: per-net scales and windows, residuals summed, two images per prompt."""
    image, mask = inputs()
    condition, canny = make_inpaint_condition(image, mask), edge_picture()
    common = dict(controlnet_conditioning_scale=[0.9, 0.6], control_guidance_start=[0.0, 0.25],
                  control_guidance_end=[0.75, 1.0], guess_mode=guess, strength=0.9, num_images_per_prompt=2)
    run_both(sdxl_pipes["inpaint"], loaded[9], [nets["inpaint"], nets["plain"]], scheduler="unipc",
             ours=dict(control_image=[None, canny]), theirs=dict(control_image=[condition, canny]), **common)


@pytest.mark.parametrize("channels", [9, 4])
def test_micro_conditioning_reaches_the_controlnet(sdxl_pipes, loaded, nets, channels):
    """original_size / crops_coords_top_left / target_size go into the time_ids both the UNet and the ControlNet see."""
    canny = edge_picture()
    micro = dict(original_size=(512, 768), crops_coords_top_left=(16, 8), target_size=(1024, 1024))
    run_both(sdxl_pipes[CHECKPOINTS[channels]], loaded[channels], [nets["plain"]], num_inference_steps=3, **micro,
             ours=dict(control_image=[None, canny], controlnet_conditioning_scale=[0.0, 1.2]),
             theirs=dict(control_image=canny, controlnet_conditioning_scale=1.2))


def test_padding_mask_crop_crops_the_control_image(sdxl_pipes, loaded, nets):
    """padding_mask_crop: the PIL control image is cropped to the mask's box and fill-resized like the image,
    and the result is pasted back (diffusers' apply_overlay)."""
    image, mask = inputs()
    canny = edge_picture()
    args = dict(prompt=PROMPT, num_inference_steps=3, padding_mask_crop=6, output_type="pil", height=64, width=64,
                guidance_scale=5.0)
    expected = diffusers_inpaint(sdxl_controlnet_pipeline(sdxl_pipes["inpaint"], [nets["plain"]]), 4, "euler",
                                 image=image, mask_image=mask, control_image=canny, controlnet_conditioning_scale=1.2,
                                 **args)[0]
    got = loaded[9].inpaint(image, mask, scheduler="euler", generator=np.random.default_rng(4), progress=False,
                            control_image=[None, canny], controlnet_conditioning_scale=[0.0, 1.2], **args).images[0]
    assert got.size == expected.size == image.size
    assert np.abs(np.asarray(got, np.int16) - np.asarray(expected, np.int16)).max() <= 1


def test_manifest_controlnet_inputs(loaded):
    """Each SDXL ControlNet graph takes the family's added inputs after its control image, checked against torch."""
    manifest = loaded[9].manifest
    for name in ("controlnet_0", "controlnet_1"):
        component = manifest["components"][name]
        assert [t["name"] for t in component["inputs"]] == ["sample", "timestep", "encoder_hidden_states",
                                                           "controlnet_cond", "text_embeds", "time_ids"]
        assert component["parity"]["max_rel_error"] <= 1e-4
    unet = [t["name"] for t in manifest["components"]["unet"]["inputs"]]
    assert unet[:5] == ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"]
    assert unet[5:] == [r["name"] for r in manifest["controlnet_residuals"]]
    assert [e["kind"] for e in manifest["controlnets"]] == ["inpaint", "plain"]


def test_export_refuses_a_controlnet_of_the_other_family(sdxl_pipes, pipes):
    from inpaintrt.export.controlnet import ControlNetSource, check_controlnet
    from inpaintrt.export.loading import CheckpointError

    with pytest.raises(CheckpointError, match="is an SD 1.x/2.x ControlNet but the checkpoint is SDXL"):
        check_controlnet(sdxl_pipes["inpaint"], ControlNetSource("sd-net", "plain", build_controlnet(1)))
    with pytest.raises(CheckpointError, match="is an SDXL ControlNet but the checkpoint is SD 1.x/2.x"):
        check_controlnet(pipes[9], ControlNetSource("sdxl-net", "plain", build_sdxl_controlnet(1)))
    with pytest.raises(CheckpointError, match="added conditioning .* does not match the UNet's"):
        check_controlnet(sdxl_pipes["refiner"], ControlNetSource("sdxl-net", "plain", build_sdxl_controlnet(1)))


def test_scale_default_follows_the_family(loaded, engine):
    assert loaded[9].controlnets.default_scale == 1.0
    with pytest.raises(ValueError, match="exported without a ControlNet"):
        engine.inpaint(*inputs(), controlnet_conditioning_scale=1.0, num_inference_steps=1, progress=False)


@pytest.fixture(scope="module")
def fp16_engine(exported, sdxl_checkpoints):
    """The 9-channel SDXL engine with fp16 graphs (what TensorRT plans are built from) and both ControlNets."""
    from inpaintrt.export.controlnet import load_controlnet
    from inpaintrt.export.exporter import export_engine
    from inpaintrt.export.loading import load_pipeline

    root = exported["root"]
    nets = [load_controlnet(f"{kind}={root / f'tiny-sdxl-controlnet-{kind}'}") for kind in ("inpaint", "plain")]
    return export_engine(load_pipeline(str(sdxl_checkpoints["inpaint"])), root / "engine-fp16", fp16=True,
                         log=lambda *_: None, controlnets=nets)


def test_tensorrt_plan_layout(fp16_engine):
    """The ControlNets' plans take the UNet's batch range and its text_embeds / time_ids profiles."""
    from inpaintrt.engine.manifest import read_manifest
    from inpaintrt.engine.plans import plan_layout

    manifest = read_manifest(fp16_engine)
    layout = plan_layout(manifest["components"], ((104, 160),), 2, manifest["model"]["vae_scale_factor"])
    unet, net = layout["unet"][0]["profile"], layout["controlnet_0"][0]["profile"]
    for name in ("text_embeds", "time_ids", "encoder_hidden_states"):
        assert net[name] == unet[name]
    assert net["time_ids"] == [[1, 6], [2, 6], [4, 6]] and net["text_embeds"] == [[1, 48], [2, 48], [4, 48]]
    assert net["controlnet_cond"] == [[1, 3, 104, 160], [2, 3, 104, 160], [4, 3, 104, 160]]
    assert unet["mid_residual"] == [[1, 32, 4, 5], [2, 32, 4, 5], [4, 32, 4, 5]]


@pytest.mark.parametrize("guess", [False, True])
def test_tensorrt_plans_run_with_control(fp16_engine, guess, tmp_path, monkeypatch):
    """Plans built by inpaint-build-plans' code for the SDXL ControlNets and the residual-input UNet run (the
    fake TensorRT of tests/support/trt_fakes.py) within fp16 error of ONNX Runtime's fp32 run, and steer the result."""
    run_fake_plans_with_control(fp16_engine, tmp_path, monkeypatch, guess)
