"""DDIM, matching diffusers' DDIMScheduler, including eta > 0 (noise drawn through the generator)."""
from __future__ import annotations

import numpy as np

from ..xp import array_module, draw_like
from .common import SchedulerBase, check_indexable, check_step_count, spaced_timesteps


class DDIM(SchedulerBase):
    name = "ddim"
    defaults = {"clip_sample": True, "clip_sample_range": 1.0, "set_alpha_to_one": True}
    call_options = {"eta": 0.0}

    def set_timesteps(self, num_steps: int) -> None:
        check_step_count(self.config, num_steps)
        self.num_steps = num_steps
        self.timesteps = np.round(spaced_timesteps(self.config, num_steps)).astype(np.int64)
        check_indexable(self.config, self.timesteps, num_steps)
        self.final_alpha = np.float32(1.0) if self.config["set_alpha_to_one"] else self.alphas_cumprod[0]

    def step(self, model_output, index, sample, generator=None):
        timestep = int(self.timesteps[index])
        prev_timestep = timestep - self.config["num_train_timesteps"] // self.num_steps
        alpha_t = self.alphas_cumprod[timestep]
        alpha_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha
        beta_t = 1 - alpha_t
        kind = self.config["prediction_type"]
        if kind == "epsilon":
            pred_x0 = (sample - beta_t**0.5 * model_output) / alpha_t**0.5
            pred_eps = model_output
        elif kind == "sample":
            pred_x0 = model_output
            pred_eps = (sample - alpha_t**0.5 * pred_x0) / beta_t**0.5
        elif kind == "v_prediction":
            pred_x0 = alpha_t**0.5 * sample - beta_t**0.5 * model_output
            pred_eps = alpha_t**0.5 * model_output + beta_t**0.5 * sample
        else:
            raise ValueError(f"DDIM supports prediction_type epsilon, sample or v_prediction, not {kind!r}")
        if self.config["clip_sample"]:
            limit = self.config["clip_sample_range"]
            pred_x0 = array_module(pred_x0).clip(pred_x0, -limit, limit)
        eta = self.option("eta")
        variance = (1 - alpha_prev) / beta_t * (1 - alpha_t / alpha_prev)
        std = eta * variance**0.5
        prev = alpha_prev**0.5 * pred_x0 + (1 - alpha_prev - std**2) ** 0.5 * pred_eps
        if eta > 0:
            prev = prev + std * draw_like(generator, model_output.shape, model_output)
        return prev
