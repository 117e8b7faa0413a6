"""The schedulers run on whatever array module holds the latents (docs/architecture.md, "One loop"), proved without a GPU.

A stand-in "device" array behaves as cupy does where it matters: numpy functions called on it fail
(cupy arrays refuse `np.clip` & co. via implicit conversion), mixing it with a host numpy array in
arithmetic fails, numpy scalars mix freely, and its module is found by `array_module`. Every
scheduler configuration of test_schedulers.py is driven with it and must give the numpy trajectory
bit for bit, as device arrays.
"""
from __future__ import annotations

import numpy as np
import pytest

from inpaintrt.runtime.inpaint import run_timesteps
from inpaintrt.runtime.schedulers import make_scheduler
from inpaintrt.runtime.xp import array_module, draw_like, to_host
from device_arrays import DeviceArray, _plain, device
from test_schedulers import CASES, CONFIGS


def test_array_module_finds_the_module_without_importing_cupy():
    import sys

    had_cupy = "cupy" in sys.modules
    x = np.zeros(3, np.float32)
    assert array_module(x) is np and array_module(None, 1.0, np.float32(2), x) is np
    assert array_module(x, device.asarray(x)) is device
    assert isinstance(draw_like(np.random.default_rng(0), (2,), device.asarray(x)), DeviceArray)
    assert type(to_host(device.asarray(x))) is np.ndarray
    assert ("cupy" in sys.modules) == had_cupy


def test_stand_in_refuses_what_cupy_refuses():
    d = device.asarray(np.ones(3, np.float32))
    with pytest.raises(TypeError, match="numpy.clip called on a device array"):
        np.clip(d, 0, 1)
    with pytest.raises(TypeError, match="host numpy array"):
        d + np.ones(3, np.float32)
    assert isinstance(d * np.float32(2) + 1.0, DeviceArray)


# the SD configs turn clip_sample off: these run the clipping branches on the device too
CLIPPING = [(name, {"clip_sample": True}, None, {}, {}) for name in ("ddim", "heun", "lcm")]


@pytest.mark.parametrize("config_name", ["sd15", "sd2-v"])
@pytest.mark.parametrize("case", CASES + CLIPPING, ids=lambda c: f"{c[0]}{c[1] or ''}")
@pytest.mark.parametrize("steps,strength", [(10, 1.0), (7, 0.5)])
def test_every_scheduler_runs_on_a_device_array_module(config_name, case, steps, strength):
    name, options, _, overrides, _ = case
    if not overrides.get("skip_prk_steps", True) and strength < 1:
        pytest.skip("PNDM's Runge-Kutta warm-up needs the full schedule")
    config = dict(CONFIGS[config_name], **overrides)
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((1, 4, 5, 6), dtype=np.float32)
    outputs = [rng.standard_normal((1, 4, 5, 6), dtype=np.float32) for _ in range(64)]

    trajectories = []
    for module in (np, device):
        sched = make_scheduler(name, config, options)
        begin, timesteps = run_timesteps(sched, steps, strength)
        x, gen, path = module.asarray(sample), np.random.default_rng(9), []
        for i, out in zip(range(len(timesteps)), outputs):
            scaled = sched.scale_model_input(x, begin + i)
            noised = sched.add_noise(x, module.asarray(out), begin + i)
            x = sched.step(module.asarray(out), begin + i, x, gen)
            for value in (scaled, noised, x):
                assert array_module(value) is module, f"step {i} left the {module.__name__} module"
            path.append(to_host(x))
        trajectories.append(path)
    for i, (a, b) in enumerate(zip(*trajectories)):
        np.testing.assert_array_equal(a, b, err_msg=f"step {i}")


class DeviceSessions(dict):
    """The engine's CPU sessions behind device arrays, as ort-cuda's are behind cupy: device feeds give
    device outputs. Records which UNet feeds arrived as device arrays."""

    def __init__(self, sessions):
        super().__init__({name: _DeviceSession(session, self) for name, session in sessions.items()})
        self.unet_feeds = []


class _DeviceSession:
    def __init__(self, session, owner):
        self.session, self.owner, self.name = session, owner, None

    def run(self, feeds):
        on_device = {name for name, v in feeds.items() if isinstance(v, DeviceArray)}
        if "sample" in feeds:
            self.owner.unet_feeds.append(on_device == set(feeds))
        outputs = self.session.run({name: _plain(v) for name, v in feeds.items()})
        return {k: device.asarray(v) for k, v in outputs.items()} if on_device else outputs


LOOP_CASES = {
    "default": {},
    "partial strength": dict(strength=0.6, scheduler="euler_a"),
    "soft mask": dict(mask_mode="soft", blur_factor=9),
    "latent noise": dict(strength=0.7, masked_content="latent_noise"),
}


@pytest.mark.parametrize("channels", [9, 4])
@pytest.mark.parametrize("case", list(LOOP_CASES))
def test_the_whole_loop_runs_on_the_device_array_module(engines, channels, case):
    """Engine.inpaint with its loop on the stand-in device module (as ort-cuda runs it on cupy) gives the
    numpy loop's image bit for bit, and every UNet call sees only device arrays: the latents, masks and
    text embeddings stay on the device for the whole loop."""
    from pictures import sample_image, sample_mask
    from inpaintrt import Engine

    seen = []

    def callback(step, timestep, latents):
        seen.append(array_module(latents).__name__)

    args = dict(prompt=["a red door", "a blue sky"], negative_prompt="dark", num_inference_steps=4, generator=5,
                output_type="np", progress=False, callback_on_step_end=callback, **LOOP_CASES[case])
    host = Engine.load(engines[channels], backend="ort-cpu")
    expected = host.inpaint(sample_image(), sample_mask(), **args).images
    on_device = Engine.load(engines[channels], backend="ort-cpu")
    on_device.sessions = DeviceSessions(on_device.sessions)
    on_device.xp = device
    got = on_device.inpaint(sample_image(), sample_mask(), **args).images

    assert type(got) is np.ndarray and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    assert on_device.sessions.unet_feeds and all(on_device.sessions.unet_feeds), "a UNet feed came from the host"
    assert set(seen) == {"numpy", "device"}, "the callback should see the loop's own arrays"


@pytest.mark.parametrize("guess_mode", [False, True])
def test_controlnet_residuals_stay_on_the_device_array_module(controlnet_exported, guess_mode):
    """ControlNet residuals are made and summed in the loop's module: with the stand-in device module the
    image is the numpy loop's bit for bit and the UNet (residual feeds included) sees only device arrays."""
    from controlnet_helpers import SIZE, edge_picture, inputs
    from inpaintrt import Engine

    image, mask = inputs()
    args = dict(prompt="a red bench", num_inference_steps=3, generator=4, output_type="np", progress=False,
                control_image=edge_picture(), guess_mode=guess_mode, control_guidance_end=0.6, **SIZE)
    path = controlnet_exported["engines"]["single"]
    expected = Engine.load(path, backend="ort-cpu").inpaint(image, mask, **args).images
    on_device = Engine.load(path, backend="ort-cpu")
    on_device.sessions = DeviceSessions(on_device.sessions)
    on_device.controlnets.sessions = on_device.sessions
    on_device.xp = device
    got = on_device.inpaint(image, mask, **args).images

    np.testing.assert_array_equal(got, expected)
    assert on_device.sessions.unet_feeds and all(on_device.sessions.unet_feeds), "a UNet feed came from the host"
