"""Euler (Karras et al. 2022, Algorithm 2 without churn), matching diffusers' EulerDiscreteScheduler."""
from __future__ import annotations

import numpy as np

from .common import SchedulerBase, spaced_timesteps


class Euler(SchedulerBase):
    name = "euler"
    defaults = {"timestep_spacing": "linspace", "interpolation_type": "linear", "use_karras_sigmas": False,
                "final_sigmas_type": "zero",
                "sigma_min": None, "sigma_max": None}

    def set_timesteps(self, num_steps: int) -> None:
        timesteps = spaced_timesteps(self.config, num_steps).astype(np.float32)
        train_sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        if self.config["interpolation_type"] == "linear":
            sigmas = np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas)
        elif self.config["interpolation_type"] == "log_linear":
            sigmas = np.exp(np.linspace(np.log(train_sigmas[-1]), np.log(train_sigmas[0]), num_steps + 1)
                            .astype(np.float32))
        else:
            raise ValueError("interpolation_type must be 'linear' or 'log_linear'")
        if self.config["use_karras_sigmas"]:
            sigmas = karras_sigmas(sigmas, num_steps, self.config)
            timesteps = sigma_to_t(sigmas, np.log(train_sigmas))
        if self.config["final_sigmas_type"] == "sigma_min":
            last = train_sigmas[0]
        elif self.config["final_sigmas_type"] == "zero":
            last = 0
        else:
            raise ValueError("final_sigmas_type must be 'zero' or 'sigma_min'")
        self.sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)
        self.timesteps = timesteps.astype(np.float32)

    @property
    def init_noise_sigma(self) -> float:
        top = self.sigmas.max()
        return top if self.config["timestep_spacing"] in ("linspace", "trailing") else (top**2 + 1) ** 0.5

    def scale_model_input(self, sample, index):
        return sample / ((self.sigmas[index] ** 2 + 1) ** 0.5)

    def step(self, model_output, index, sample, generator=None):
        sigma, sigma_next = self.sigmas[index], self.sigmas[index + 1]
        kind = self.config["prediction_type"]
        if kind in ("original_sample", "sample"):
            pred_x0 = model_output
        elif kind == "epsilon":
            pred_x0 = sample - sigma * model_output
        elif kind == "v_prediction":
            pred_x0 = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
        else:
            raise ValueError(f"Euler supports prediction_type epsilon, sample or v_prediction, not {kind!r}")
        derivative = (sample - pred_x0) / sigma
        return sample + derivative * (sigma_next - sigma)

    def add_noise(self, original, noise, index):
        return original + noise * self.sigmas[index]


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
