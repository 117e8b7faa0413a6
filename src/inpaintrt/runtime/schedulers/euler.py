"""Euler and Euler ancestral, matching diffusers' EulerDiscreteScheduler and EulerAncestralDiscreteScheduler."""
from __future__ import annotations

import numpy as np

from ..xp import draw_like
from .sigmas import SigmaScheduler


class Euler(SigmaScheduler):
    name = "euler"
    defaults = {**SigmaScheduler.defaults, "use_karras_sigmas": False, "interpolation_type": "linear",
                "final_sigmas_type": "zero",
                "sigma_min": None, "sigma_max": None}

    def set_timesteps(self, num_steps: int) -> None:
        timesteps, sigmas = self.schedule(num_steps)
        if self.config["interpolation_type"] == "log_linear":
            train = self.train_sigmas
            sigmas = np.exp(np.linspace(np.log(train[-1]), np.log(train[0]), num_steps + 1).astype(np.float32))
        elif self.config["interpolation_type"] != "linear":
            raise ValueError("interpolation_type must be 'linear' or 'log_linear'")
        if self.config["final_sigmas_type"] not in ("zero", "sigma_min"):
            raise ValueError("final_sigmas_type must be 'zero' or 'sigma_min'")
        last = self.train_sigmas[0] if self.config["final_sigmas_type"] == "sigma_min" else 0
        self.sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)
        self.timesteps = timesteps

    def step(self, model_output, index, sample, generator=None):
        sigma, sigma_next = self.sigmas[index], self.sigmas[index + 1]
        derivative = (sample - self.predict_x0(model_output, sample, sigma)) / sigma
        return sample + derivative * (sigma_next - sigma)


class EulerAncestral(SigmaScheduler):
    """Euler with fresh noise each step (one generator draw per step)."""

    name = "euler_a"

    def set_timesteps(self, num_steps: int) -> None:
        if self.config["prediction_type"] == "sample":  # diffusers refuses it at its first step; here before any
            self.refuse_setting("prediction_type", "euler_a does not support prediction_type 'sample'",
                                "use prediction_type epsilon or v_prediction")
        self.timesteps, sigmas = self.schedule(num_steps)
        self.sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)

    def step(self, model_output, index, sample, generator=None):
        sigma, sigma_to = self.sigmas[index], self.sigmas[index + 1]
        pred_x0 = self.predict_x0(model_output, sample, sigma)
        sigma_up = (sigma_to**2 * (sigma**2 - sigma_to**2) / sigma**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        prev = sample + (sample - pred_x0) / sigma * (sigma_down - sigma)
        return prev + draw_like(generator, model_output.shape, model_output) * sigma_up
