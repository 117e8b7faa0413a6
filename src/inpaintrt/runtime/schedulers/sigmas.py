"""The k-diffusion family (Euler, Euler ancestral, Heun, LMS): samplers over a sigma schedule.

`x_t = x_0 + sigma * noise`; the UNet sees x_t / sqrt(sigma^2 + 1). Sigmas are indexed like
the timesteps, with a final sigma appended.
"""
from __future__ import annotations

import numpy as np

from .common import SchedulerBase, spaced_timesteps


class SigmaScheduler(SchedulerBase):
    defaults = {"timestep_spacing": "linspace"}

    def schedule(self, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
        """(float32 timesteps, float64 sigmas) before the final sigma is appended."""
        timesteps = spaced_timesteps(self.config, num_steps).astype(np.float32)
        sigmas = np.interp(timesteps, np.arange(len(self.train_sigmas)), self.train_sigmas)
        if self.config.get("use_karras_sigmas"):
            sigmas = karras_sigmas(sigmas, num_steps, self.config)
            timesteps = sigma_to_t(sigmas, np.log(self.train_sigmas)).astype(np.float32)
        return timesteps, sigmas

    @property
    def train_sigmas(self) -> np.ndarray:
        return ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5

    @property
    def init_noise_sigma(self) -> float:
        top = self.sigmas.max()
        return top if self.config["timestep_spacing"] in ("linspace", "trailing") else (top**2 + 1) ** 0.5

    def scale_model_input(self, sample, index):
        return sample / ((self.sigmas[index] ** 2 + 1) ** 0.5)

    def add_noise(self, original, noise, index):
        return original + noise * self.sigmas[index]

    def predict_x0(self, model_output, sample, sigma):
        kind = self.config["prediction_type"]
        if kind == "epsilon":
            return sample - sigma * model_output
        if kind == "v_prediction":
            return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
        if kind in ("sample", "original_sample"):
            return model_output
        raise ValueError(f"{self.name} supports prediction_type epsilon, v_prediction or sample, not {kind!r}")


def karras_sigmas(sigmas: np.ndarray, num_steps: int, config: dict, rho: float = 7.0) -> np.ndarray:
    sigma_min = config.get("sigma_min") or float(sigmas[-1])
    sigma_max = config.get("sigma_max") or float(sigmas[0])
    ramp = np.linspace(0, 1, num_steps)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timesteps whose interpolated sigma is `sigmas` (diffusers' _sigma_to_t)."""
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    dists = log_sigma - log_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
    return (1 - w) * low + w * (low + 1)
