"""Scheduler trajectories against diffusers: same model outputs in, same timesteps and latents out."""
import re

import numpy as np
import pytest
import torch

from diffusers_runs import numpy_randn
from inpaintrt.export.random_models import SD15_SCHEDULER_CONFIG
from inpaintrt.runtime.inpaint import run_timesteps
from inpaintrt.runtime.schedulers import make_scheduler

SD2_V = dict(SD15_SCHEDULER_CONFIG, prediction_type="v_prediction")
TRAILING = dict(SD15_SCHEDULER_CONFIG, timestep_spacing="trailing", steps_offset=0, beta_schedule="linear",
                beta_start=0.0001, beta_end=0.02)
COSINE_LINSPACE = dict(SD15_SCHEDULER_CONFIG, beta_schedule="squaredcos_cap_v2", timestep_spacing="linspace")
CONFIGS = {"sd15": SD15_SCHEDULER_CONFIG, "sd2-v": SD2_V, "trailing": TRAILING, "cosine-linspace": COSINE_LINSPACE}

CASES = [  # (our name, options, diffusers class, diffusers config overrides, step kwargs)
    ("pndm", {}, "PNDMScheduler", {}, {}),
    ("pndm", {"skip_prk_steps": False}, "PNDMScheduler", {"skip_prk_steps": False}, {}),
    ("ddim", {}, "DDIMScheduler", {}, {}),
    ("ddim", {"eta": 0.5}, "DDIMScheduler", {}, {"eta": 0.5}),
    ("euler", {}, "EulerDiscreteScheduler", {}, {}),
    ("euler", {"use_karras_sigmas": True}, "EulerDiscreteScheduler", {"use_karras_sigmas": True}, {}),
    ("euler_a", {}, "EulerAncestralDiscreteScheduler", {}, {}),
    ("heun", {}, "HeunDiscreteScheduler", {}, {}),
    ("heun", {"use_karras_sigmas": True}, "HeunDiscreteScheduler", {"use_karras_sigmas": True}, {}),
    ("lms", {}, "LMSDiscreteScheduler", {}, {}),
    ("lms", {"use_karras_sigmas": True}, "LMSDiscreteScheduler", {"use_karras_sigmas": True}, {}),
    ("dpmpp_2m", {}, "DPMSolverMultistepScheduler", {}, {}),
    ("dpmpp_2m_karras", {}, "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, {}),
    ("dpmpp_2m", {"solver_type": "heun", "final_sigmas_type": "sigma_min"}, "DPMSolverMultistepScheduler",
     {"solver_type": "heun", "final_sigmas_type": "sigma_min"}, {}),
    ("unipc", {}, "UniPCMultistepScheduler", {}, {}),
    ("unipc", {"solver_order": 3}, "UniPCMultistepScheduler", {"solver_order": 3}, {}),
    ("unipc", {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}, "UniPCMultistepScheduler",
     {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}, {}),
    ("unipc", {"use_karras_sigmas": True}, "UniPCMultistepScheduler", {"use_karras_sigmas": True}, {}),
    ("lcm", {}, "LCMScheduler", {}, {}),
]


def diffusers_trajectory(cls_name, config, steps, strength, outputs, sample, seed, step_kwargs):
    import diffusers

    sched = getattr(diffusers, cls_name).from_config(config)
    sched.set_timesteps(steps)
    t_start = steps - min(int(steps * strength), steps)
    timesteps = sched.timesteps[t_start * sched.order:]
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(t_start * sched.order)
    x = torch.from_numpy(sample)
    trajectory = []
    with numpy_randn(seed):
        for t, out in zip(timesteps, outputs):
            if cls_name in ("EulerAncestralDiscreteScheduler", "LCMScheduler"):
                step_kwargs = {"generator": torch.Generator()}  # any generator: the patch draws from numpy
            x_in = sched.scale_model_input(x, t)
            x = sched.step(torch.from_numpy(out) + 0 * x_in, t, x, **step_kwargs, return_dict=False)[0]
            trajectory.append(x.numpy().copy())
    return timesteps.numpy(), trajectory, float(sched.init_noise_sigma)


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}{c[1] or ''}")
@pytest.mark.parametrize("steps,strength", [(10, 1.0), (7, 0.5)])
def test_trajectory_matches_diffusers(config_name, case, steps, strength):
    name, options, cls_name, overrides, step_kwargs = case
    if not overrides.get("skip_prk_steps", True) and strength < 1:
        pytest.skip("PNDM's Runge-Kutta warm-up needs the full schedule")
    config = dict(CONFIGS[config_name], **overrides)
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((1, 4, 5, 6), dtype=np.float32)
    outputs = [rng.standard_normal((1, 4, 5, 6), dtype=np.float32) for _ in range(64)]
    ref_t, ref_traj, ref_sigma = diffusers_trajectory(cls_name, config, steps, strength, outputs, sample, 9, step_kwargs)

    sched = make_scheduler(name, config, options)
    begin, timesteps = run_timesteps(sched, steps, strength)
    if options.get("use_karras_sigmas") or name == "dpmpp_2m_karras":
        # fractional timesteps: torch's vectorised float32 pow(x, 0.5) is not numpy's correctly rounded sqrt
        np.testing.assert_allclose(timesteps, ref_t, rtol=1e-6)
    else:
        np.testing.assert_array_equal(timesteps.astype(np.float64), ref_t.astype(np.float64))
    assert sched.init_noise_sigma == pytest.approx(ref_sigma, rel=1e-6)
    x, gen = sample, np.random.default_rng(9)
    for i, (out, expected) in enumerate(zip(outputs, ref_traj)):
        sched.scale_model_input(x, begin + i)
        x = sched.step(out, begin + i, x, gen)
        assert np.abs(x - expected).max() <= 1e-5 * np.abs(expected).max(), f"step {i}"


def test_unknown_option_is_an_error():
    with pytest.raises(ValueError, match=r"scheduler_options \['use_karas_sigmas'\] are not options of scheduler 'euler'"):
        make_scheduler("euler", SD15_SCHEDULER_CONFIG, {"use_karas_sigmas": True})


def test_unknown_scheduler_is_an_error():
    with pytest.raises(ValueError, match="scheduler 'dpm' is unknown; choose one of ddim, ddpm, dpmpp_2m, dpmpp_2m_karras, euler, euler_a, heun, lcm, lms, pndm, unipc"):
        make_scheduler("dpm", SD15_SCHEDULER_CONFIG)


def test_unimplemented_config_is_refused_not_ignored():
    with pytest.raises(ValueError, match="sets rescale_betas_zero_snr=True, which inpaintrt's 'ddim' does not implement"):
        make_scheduler("ddim", dict(SD15_SCHEDULER_CONFIG, rescale_betas_zero_snr=True))
    with pytest.raises(ValueError, match=r"scheduler_options \['use_karras_sigmas'\] are not options of scheduler 'euler_a'"):
        make_scheduler("euler_a", SD15_SCHEDULER_CONFIG, {"use_karras_sigmas": True})


@pytest.mark.parametrize("name, options, says", [
    ("euler", {"use_karras_sigmas": "maybe"}, "scheduler_options.use_karras_sigmas='maybe' must be true or false"),
    ("euler", {"use_karras_sigmas": 1}, "must be true or false"),
    ("euler", {"timestep_spacing": "sideways"}, "must be one of leading, trailing, linspace"),
    ("pndm", {"steps_offset": 1.5}, "scheduler_options.steps_offset=1.5 must be a whole number"),
    ("ddim", {"eta": "a lot"}, "scheduler_options.eta='a lot' must be a finite number"),
    ("lms", {"beta_end": float("inf")}, "must be a finite number"),
    ("dpmpp_2m", {"final_sigmas_type": "one"}, "must be one of zero, sigma_min"),
])
def test_options_are_typed_and_refused_by_name(name, options, says):
    from inpaintrt.runtime.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match=re.escape(says)) as e:
        make_scheduler(name, SD15_SCHEDULER_CONFIG, options)
    assert e.value.field == f"scheduler_options.{next(iter(options))}" and e.value.fix.startswith("send ")


def test_well_typed_options_still_configure_the_scheduler():
    euler = make_scheduler("euler", SD15_SCHEDULER_CONFIG, {"use_karras_sigmas": True, "timestep_spacing": "trailing"})
    assert euler.config["use_karras_sigmas"] is True and euler.config["timestep_spacing"] == "trailing"
    assert make_scheduler("pndm", SD15_SCHEDULER_CONFIG, {"steps_offset": 0.0}).config["steps_offset"] == 0
    assert make_scheduler("ddim", SD15_SCHEDULER_CONFIG, {"eta": 1}).options == {"eta": 1}
