"""DDPM, matching diffusers' DDPMScheduler (Kandinsky 2.2's decoder scheduler): ancestral, one draw per step
while t > 0, variance fixed_small / fixed_small_log / fixed_large, or learned / learned_range from the
UNet's variance half: then the model output has twice the sample's channels, [prediction, variance]."""
from __future__ import annotations

import numpy as np

from ..xp import array_module, draw_like
from .common import SchedulerBase, check_indexable, check_step_count, spaced_timesteps

VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range")
LEARNED = ("learned", "learned_range")


class DDPM(SchedulerBase):
    name = "ddpm"
    defaults = {"variance_type": "fixed_small", "clip_sample": True, "clip_sample_range": 1.0}
    prediction_types = ("epsilon", "sample", "v_prediction")

    def set_timesteps(self, num_steps: int) -> None:
        check_step_count(self.config, num_steps)
        if self.config["variance_type"] not in VARIANCE_TYPES:
            self.refuse_setting("variance_type", f"inpaintrt's 'ddpm' implements variance_type "
                                f"{', '.join(VARIANCE_TYPES)}", f"use variance_type {' or '.join(VARIANCE_TYPES)}")
        self.timesteps = np.round(spaced_timesteps(self.config, num_steps)).astype(np.int64)
        check_indexable(self.config, self.timesteps, num_steps)

    def _coefficients(self, t: int, prev_t: int):
        """(alpha_t, alpha_prev, current_beta, current_alpha): cumulative products at t and prev_t, and
        the one-step beta/alpha between them."""
        alpha_t = self.alphas_cumprod[t]
        alpha_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else np.float32(1.0)
        current_alpha = alpha_t / alpha_prev
        return alpha_t, alpha_prev, 1 - current_alpha, current_alpha

    def _previous(self, index: int, t: int) -> int:
        return int(self.timesteps[index + 1]) if index + 1 < len(self.timesteps) else -1

    @property
    def reads_variance(self) -> bool:
        """Whether step() takes the UNet's variance half after the prediction."""
        return self.config["variance_type"] in LEARNED

    def step(self, model_output, index, sample, generator=None):
        t = int(self.timesteps[index])
        predicted_variance = None
        if self.reads_variance and model_output.shape[1] == 2 * sample.shape[1]:
            model_output, predicted_variance = model_output[:, :sample.shape[1]], model_output[:, sample.shape[1]:]
        elif self.reads_variance:
            raise ValueError(f"variance_type={self.config['variance_type']!r} reads the UNet's variance, but its output "
                             f"has {model_output.shape[1]} channels, not twice the sample's {sample.shape[1]}; re-export "
                             "the engine with this inpaintrt")
        alpha_t, alpha_prev, current_beta, current_alpha = self._coefficients(t, self._previous(index, t))
        beta_t, beta_prev = 1 - alpha_t, 1 - alpha_prev
        kind = self.config["prediction_type"]
        if kind == "epsilon":
            pred_x0 = (sample - beta_t**0.5 * model_output) / alpha_t**0.5
        elif kind == "sample":
            pred_x0 = model_output
        elif kind == "v_prediction" and kind in self.prediction_types:
            pred_x0 = alpha_t**0.5 * sample - beta_t**0.5 * model_output
        else:
            raise ValueError(f"{type(self).__name__} supports prediction_type {' or '.join(self.prediction_types)}, "
                             f"not {kind!r}")
        if self.config["clip_sample"]:
            limit = self.config["clip_sample_range"]
            pred_x0 = array_module(pred_x0).clip(pred_x0, -limit, limit)
        prev = (alpha_prev**0.5 * current_beta / beta_t) * pred_x0 + (current_alpha**0.5 * beta_prev / beta_t) * sample
        if t > 0:
            noise = draw_like(generator, model_output.shape, model_output)
            variance = max(beta_prev / beta_t * current_beta, np.float32(1e-20))
            kind = self.config["variance_type"]
            if kind == "fixed_small_log":
                std = np.exp(np.float32(0.5) * np.log(variance))
            elif kind == "learned_range" and predicted_variance is not None:  # between the two fixed ones, in log
                xp = array_module(predicted_variance)
                frac = (predicted_variance + 1) / 2
                log_variance = frac * np.log(current_beta) + (1 - frac) * np.log(variance)
                std = xp.exp(0.5 * log_variance)
            elif kind == "learned" and predicted_variance is not None:
                std = predicted_variance**0.5
            elif kind == "fixed_large":
                std = current_beta**0.5
            else:
                std = variance**0.5
            prev = prev + std * noise
        return prev
