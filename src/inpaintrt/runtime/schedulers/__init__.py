"""Scheduler registry: name for `scheduler=` -> numpy implementation of the diffusers class."""
from __future__ import annotations

from .ddim import DDIM
from .euler import Euler
from .pndm import PNDM

SCHEDULERS = {cls.name: cls for cls in (PNDM, DDIM, Euler)}
# diffusers class name in a checkpoint's scheduler_config.json -> our name
BY_DIFFUSERS_CLASS = {"PNDMScheduler": "pndm", "DDIMScheduler": "ddim", "EulerDiscreteScheduler": "euler"}


def default_scheduler_name(config: dict) -> str:
    return BY_DIFFUSERS_CLASS.get(config.get("_class_name", ""), "pndm")


def make_scheduler(name: str, config: dict, options: dict | None = None):
    """A fresh scheduler for one generation, configured as diffusers' `Class.from_config(config)` would be."""
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler {name!r} is unknown; choose one of {', '.join(sorted(SCHEDULERS))}")
    return SCHEDULERS[name](config, options)
