"""LMS (linear multistep over sigmas), matching diffusers' LMSDiscreteScheduler with order 4."""
from __future__ import annotations

import numpy as np

from .sigmas import SigmaScheduler

ORDER = 4


class LMS(SigmaScheduler):
    name = "lms"
    defaults = {**SigmaScheduler.defaults, "use_karras_sigmas": False, "sigma_min": None, "sigma_max": None}

    def set_timesteps(self, num_steps: int) -> None:
        self.timesteps, sigmas = self.schedule(num_steps)
        self.sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        self.derivatives: list[np.ndarray] = []

    def coefficient(self, order: int, index: int, current: int) -> float:
        """Integral over [sigma_index, sigma_index+1] of the Lagrange basis polynomial of `current`
        (diffusers integrates it numerically; it is a polynomial of degree < 4, so exactly here)."""
        s = self.sigmas.astype(np.float64)
        basis = np.poly1d([1.0])
        for k in range(order):
            if k != current:
                basis *= np.poly1d([1.0, -s[index - k]]) / (s[index - current] - s[index - k])
        antiderivative = basis.integ()
        return float(antiderivative(s[index + 1]) - antiderivative(s[index]))

    def step(self, model_output, index, sample, generator=None):
        sigma = self.sigmas[index]
        derivative = (sample - self.predict_x0(model_output, sample, sigma)) / sigma
        self.derivatives = (self.derivatives + [derivative])[-ORDER:]
        # diffusers sizes the order by the global step index, even when strength < 1 skipped steps
        order = min(index + 1, ORDER)
        coeffs = [self.coefficient(order, index, current) for current in range(order)]
        return sample + sum(c * d for c, d in zip(coeffs, reversed(self.derivatives)))
