"""LCM (latent consistency), matching diffusers' LCMScheduler, for LCM-distilled or LCM-LoRA checkpoints."""
from __future__ import annotations

import numpy as np

from ..xp import array_module, draw_like
from ..errors import InvalidArgument
from .common import SchedulerBase


class LCM(SchedulerBase):
    name = "lcm"
    defaults = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                "original_inference_steps": 50, "clip_sample": False, "clip_sample_range": 1.0,
                "set_alpha_to_one": True, "timestep_scaling": 10.0}

    def set_timesteps(self, num_steps: int) -> None:
        c = self.config
        original = c["original_inference_steps"]
        k = c["num_train_timesteps"] // original
        origin = np.arange(1, original + 1) * k - 1
        if num_steps > original:
            fix = f"use at most {original} steps"
            raise InvalidArgument("num_inference_steps", f"num_inference_steps={num_steps} exceeds the LCM's "
                                  f"original_inference_steps={original}; {fix}", fix)
        picks = np.floor(np.linspace(0, len(origin), num=num_steps, endpoint=False)).astype(np.int64)
        self.timesteps = origin[::-1][picks].astype(np.int64)
        self.final_alpha = np.float32(1.0) if c["set_alpha_to_one"] else self.alphas_cumprod[0]

    def step(self, model_output, index, sample, generator=None):
        c = self.config
        timestep = int(self.timesteps[index])
        prev_timestep = int(self.timesteps[index + 1]) if index + 1 < len(self.timesteps) else timestep
        alpha_t = self.alphas_cumprod[timestep]
        alpha_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha
        scaled = np.float32(timestep * c["timestep_scaling"])
        c_skip = np.float32(0.25) / (scaled**2 + np.float32(0.25))
        c_out = scaled / (scaled**2 + np.float32(0.25)) ** 0.5
        kind = c["prediction_type"]
        if kind == "epsilon":
            pred_x0 = (sample - np.sqrt(1 - alpha_t) * model_output) / np.sqrt(alpha_t)
        elif kind == "sample":
            pred_x0 = model_output
        elif kind == "v_prediction":
            pred_x0 = np.sqrt(alpha_t) * sample - np.sqrt(1 - alpha_t) * model_output
        else:
            raise ValueError(f"lcm supports prediction_type epsilon, sample or v_prediction, not {kind!r}")
        if c["clip_sample"]:
            pred_x0 = array_module(pred_x0).clip(pred_x0, -c["clip_sample_range"], c["clip_sample_range"])
        denoised = c_out * pred_x0 + c_skip * sample
        if index == len(self.timesteps) - 1:
            return denoised
        return np.sqrt(alpha_prev) * denoised + np.sqrt(1 - alpha_prev) * draw_like(generator, model_output.shape, model_output)
