"""diffusers runs to compare with: every random draw comes from a numpy generator (docs/architecture.md,
"Randomness"), so an engine given the same seed must reproduce them, and our scheduler names mapped to the
diffusers classes a diffusers user would pick."""
from __future__ import annotations

from inpaintrt.export.replay import numpy_randn  # noqa: F401 (test files import it from here)

# our scheduler name -> the diffusers class (and config) a diffusers user would pick
DIFFUSERS_SCHEDULERS = {
    "pndm": ("PNDMScheduler", {}), "ddim": ("DDIMScheduler", {}), "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}), "heun": ("HeunDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}), "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}), "lcm": ("LCMScheduler", {}),
}


def diffusers_inpaint(pipe, seed: int, scheduler: str | None = None, scheduler_config: dict | None = None,
                      draws: list | None = None, **kwargs):
    """diffusers' StableDiffusionInpaintPipeline output with numpy-drawn noise (draw shapes into `draws`)."""
    import diffusers
    import torch

    if not hasattr(pipe, "checkpoint_scheduler_config"):  # switching classes must not leak options between tests
        pipe.checkpoint_scheduler_config = pipe.scheduler.config
        pipe.checkpoint_scheduler_class = type(pipe.scheduler)
    if scheduler:
        class_name, extra = DIFFUSERS_SCHEDULERS[scheduler]
        pipe.scheduler = getattr(diffusers, class_name).from_config(
            pipe.checkpoint_scheduler_config, **extra, **(scheduler_config or {}))
    else:  # the checkpoint's own, whatever an earlier test picked on this shared pipe
        pipe.scheduler = pipe.checkpoint_scheduler_class.from_config(pipe.checkpoint_scheduler_config)
    with numpy_randn(seed, draws), torch.no_grad():
        return pipe(**kwargs).images
