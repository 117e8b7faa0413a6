"""UnCLIP, matching diffusers' UnCLIPScheduler (Kandinsky 2.2's prior scheduler): the prior's loop over the
CLIP image embedding. Timesteps spread over [0, N - 1] including both ends; step i goes to timestep
i + 1 (the last to -1); one draw per step while t > 0. Its step is DDPM's (variance fixed_small_log),
with its own timesteps and one-step coefficients."""
from __future__ import annotations

import numpy as np

from ..errors import InvalidArgument
from .common import betas
from .ddpm import DDPM


class UnCLIP(DDPM):
    name = "unclip"
    prediction_types = ("epsilon", "sample")
    defaults = {"variance_type": "fixed_small_log", "clip_sample": True, "clip_sample_range": 1.0,
                "beta_schedule": "squaredcos_cap_v2"}

    def __init__(self, config: dict, options: dict | None = None):
        super().__init__(config, options)
        if self.config["beta_schedule"] != "squaredcos_cap_v2":
            raise ValueError("UnCLIPScheduler only supports beta_schedule 'squaredcos_cap_v2'")
        if self.config["variance_type"] != "fixed_small_log":
            raise ValueError(f"the prior's scheduler sets variance_type={self.config['variance_type']!r}; inpaintrt's "
                             "'unclip' implements fixed_small_log (learned_range needs a variance output)")
        self.alphas = (1.0 - betas(self.config)).astype(np.float32)
        self.betas = betas(self.config)

    def set_timesteps(self, num_steps: int) -> None:
        if num_steps < 2:
            raise InvalidArgument("prior_num_inference_steps", f"prior_num_inference_steps={num_steps} must be at "
                                  "least 2 (the UnCLIP schedule spans the first and the last training timestep)",
                                  "use at least 2 prior steps")
        ratio = (self.config["num_train_timesteps"] - 1) / (num_steps - 1)
        self.timesteps = (np.arange(0, num_steps) * ratio).round()[::-1].copy().astype(np.int64)

    def _coefficients(self, t: int, prev_t: int):
        alpha_t = self.alphas_cumprod[t]
        alpha_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else np.float32(1.0)
        if prev_t == t - 1:  # diffusers takes the schedule's own beta here, not one derived from the products
            return alpha_t, alpha_prev, self.betas[t], self.alphas[t]
        beta = 1 - alpha_t / alpha_prev
        return alpha_t, alpha_prev, beta, 1 - beta

    def _previous(self, index: int, t: int) -> int:
        return int(self.timesteps[index + 1]) if index + 1 < len(self.timesteps) else t - 1
