"""Scheduler registry: name for `scheduler=` -> numpy implementation of the diffusers class."""
from __future__ import annotations

from ..errors import InvalidArgument
from .ddim import DDIM
from .ddpm import DDPM
from .dpmsolver import DPMSolverMultistep, DPMSolverMultistepKarras
from .euler import Euler, EulerAncestral
from .heun import Heun
from .lcm import LCM
from .lms import LMS
from .pndm import PNDM
from .unclip import UnCLIP  # noqa: F401 (Kandinsky's prior loop; not an image scheduler)
from .unipc import UniPC

SCHEDULERS = {cls.name: cls for cls in (PNDM, DDIM, Euler, EulerAncestral, Heun, LMS, DPMSolverMultistep,
                                         DPMSolverMultistepKarras, UniPC, LCM, DDPM)}
# diffusers class name -> our name (a checkpoint's scheduler_config.json names its class)
DIFFUSERS_CLASSES = {
    "PNDMScheduler": "pndm", "DDIMScheduler": "ddim", "EulerDiscreteScheduler": "euler",
    "EulerAncestralDiscreteScheduler": "euler_a", "HeunDiscreteScheduler": "heun", "LMSDiscreteScheduler": "lms",
    "DPMSolverMultistepScheduler": "dpmpp_2m", "UniPCMultistepScheduler": "unipc", "LCMScheduler": "lcm",
    "DDPMScheduler": "ddpm",
}


def default_scheduler_name(config: dict) -> str:
    return DIFFUSERS_CLASSES.get(config.get("_class_name", ""), "pndm")


def make_scheduler(name: str, config: dict, options: dict | None = None):
    """A fresh scheduler for one generation, configured as diffusers' `Class.from_config(config)` would be."""
    if name not in SCHEDULERS:
        listed = ", ".join(sorted(SCHEDULERS))
        raise InvalidArgument("scheduler", f"scheduler {name!r} is unknown; choose one of {listed}",
                              f"use one of {listed}")
    return SCHEDULERS[name](config, options)


def describe_schedulers() -> str:
    """One line per scheduler: name, the diffusers class it matches, the options it takes."""
    classes = {ours: theirs for theirs, ours in DIFFUSERS_CLASSES.items()}
    lines = []
    for name, cls in sorted(SCHEDULERS.items()):
        sched = cls({})
        options = sorted(set(sched.config) | set(cls.call_options))
        theirs = classes.get(name, classes.get(name.replace("_karras", ""), "")) + (
            " with use_karras_sigmas=True" if name.endswith("_karras") else "")
        lines.append(f"  {name:16} {theirs}\n  {'':16} options: {', '.join(options)}")
    return "\n".join(lines)
