"""Heun (second order), matching diffusers' HeunDiscreteScheduler: every timestep but the first runs twice."""
from __future__ import annotations

import numpy as np

from ..xp import array_module
from .sigmas import SigmaScheduler


class Heun(SigmaScheduler):
    name = "heun"
    order = 2
    defaults = {**SigmaScheduler.defaults, "use_karras_sigmas": False, "beta_start": 0.00085, "beta_end": 0.012, "clip_sample": False,
                "clip_sample_range": 1.0, "sigma_min": None, "sigma_max": None}

    def set_timesteps(self, num_steps: int) -> None:
        timesteps, sigmas = self.schedule(num_steps)
        sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        self.sigmas = np.concatenate([sigmas[:1], sigmas[1:-1].repeat(2), sigmas[-1:]])
        self.timesteps = np.concatenate([timesteps[:1], timesteps[1:].repeat(2)]).astype(np.float32)
        self._first = None  # (derivative, dt, sample) of the pending first-order half step

    def step(self, model_output, index, sample, generator=None):
        first_order = (index - self.begin_index) % 2 == 0  # begin indices are even (t_start * order)
        if first_order:
            sigma, sigma_next = self.sigmas[index], self.sigmas[index + 1]
            sigma_input = sigma
        else:
            sigma, sigma_next = self.sigmas[index - 1], self.sigmas[index]
            sigma_input = sigma_next
        pred_x0 = self.predict_x0(model_output, sample, sigma_input)
        if self.config["clip_sample"]:
            limit = self.config["clip_sample_range"]
            pred_x0 = array_module(pred_x0).clip(pred_x0, -limit, limit)
        if first_order:
            derivative = (sample - pred_x0) / sigma
            dt = sigma_next - sigma
            self._first = (derivative, dt, sample)
            return sample + derivative * dt
        first_derivative, dt, first_sample = self._first
        derivative = (first_derivative + (sample - pred_x0) / sigma_next) / 2
        self._first = None
        return first_sample + derivative * dt
