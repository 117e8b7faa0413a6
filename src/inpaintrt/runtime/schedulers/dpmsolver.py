"""DPM-Solver++ 2M (and DPM-Solver), matching diffusers' DPMSolverMultistepScheduler, orders 1 and 2."""
from __future__ import annotations

import numpy as np

from .common import SchedulerBase, check_distinct
from .sigmas import karras_sigmas, sigma_to_t


class DPMSolverMultistep(SchedulerBase):
    name = "dpmpp_2m"
    defaults = {"solver_order": 2, "algorithm_type": "dpmsolver++", "solver_type": "midpoint",
                "lower_order_final": True, "euler_at_final": False, "use_karras_sigmas": False,
                "final_sigmas_type": "zero", "lambda_min_clipped": -float("inf"), "timestep_spacing": "linspace",
                "sigma_min": None, "sigma_max": None}
    forced = {"algorithm_type": "dpmsolver++", "solver_order": 2}

    def set_timesteps(self, num_steps: int) -> None:
        c = self.config
        if c["algorithm_type"] not in ("dpmsolver++", "dpmsolver"):
            self.refuse_setting("algorithm_type", "dpmpp_2m supports algorithm_type dpmsolver++ or dpmsolver",
                                "use algorithm_type dpmsolver++ or dpmsolver")
        if c["solver_order"] not in (1, 2):
            self.refuse_setting("solver_order", "dpmpp_2m supports solver_order 1 or 2", "use solver_order 1 or 2")
        if c["solver_type"] not in ("midpoint", "heun"):
            self.refuse_setting("solver_type", "dpmpp_2m's solver_type must be 'midpoint' or 'heun'",
                                "use solver_type midpoint or heun")
        n = c["num_train_timesteps"]
        ac = self.alphas_cumprod
        lambdas = np.log(np.sqrt(ac)) - np.log(np.sqrt(1 - ac))
        last = n - int(np.searchsorted(lambdas[::-1], c["lambda_min_clipped"]))
        timesteps = multistep_timesteps(c, num_steps, last)
        train_sigmas = ((1 - ac) / ac) ** 0.5
        if c["use_karras_sigmas"]:
            sigmas = karras_sigmas(train_sigmas[::-1], num_steps, c)
            timesteps = sigma_to_t(sigmas, np.log(train_sigmas))
            if c["beta_schedule"] != "squaredcos_cap_v2":
                timesteps = timesteps.round()
        else:
            sigmas = np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas)
        if c["final_sigmas_type"] not in ("zero", "sigma_min"):
            raise ValueError("final_sigmas_type must be 'zero' or 'sigma_min'")
        last_sigma = train_sigmas[0] if c["final_sigmas_type"] == "sigma_min" else 0
        self.sigmas = np.concatenate([sigmas, [last_sigma]]).astype(np.float32)
        self.timesteps = timesteps.astype(np.int64)
        check_distinct(self.sigmas, self.timesteps, num_steps)
        self.outputs: list[np.ndarray] = []

    @staticmethod
    def _alpha_sigma(sigma):
        alpha = 1 / ((sigma**2 + 1) ** 0.5)
        return alpha, sigma * alpha

    def add_noise(self, original, noise, index):
        alpha, sigma = self._alpha_sigma(self.sigmas[index])
        return alpha * original + sigma * noise

    def _data_prediction(self, model_output, sample, index):
        alpha, sigma = self._alpha_sigma(self.sigmas[index])
        kind = self.config["prediction_type"]
        plus = self.config["algorithm_type"] == "dpmsolver++"
        if kind == "epsilon":
            return (sample - sigma * model_output) / alpha if plus else model_output
        if kind == "sample":
            return model_output if plus else (sample - alpha * model_output) / sigma
        if kind == "v_prediction":
            return alpha * sample - sigma * model_output if plus else alpha * model_output + sigma * sample
        raise ValueError(f"dpmpp_2m supports prediction_type epsilon, sample or v_prediction, not {kind!r}")

    def step(self, model_output, index, sample, generator=None):
        c = self.config
        count = len(self.timesteps)
        taken = index - self.begin_index  # diffusers' lower_order_nums: steps taken in this generation
        final = index == count - 1 and (c["euler_at_final"] or (c["lower_order_final"] and count < 15)
                                        or c["final_sigmas_type"] == "zero")
        self.outputs = (self.outputs + [self._data_prediction(model_output, sample, index)])[-2:]
        lambdas = []
        for k in (index + 1, index, index - 1):
            alpha, sigma = self._alpha_sigma(self.sigmas[max(k, 0)])
            with np.errstate(divide="ignore"):  # the final sigma may be 0: lambda = inf, exp(-h) = 0
                lambdas.append((np.log(alpha) - np.log(sigma), alpha, sigma))
        (lam_t, alpha_t, sigma_t), (lam_s0, alpha_s0, sigma_s0), (lam_s1, _, _) = lambdas
        h = lam_t - lam_s0
        plus = c["algorithm_type"] == "dpmsolver++"
        m0 = self.outputs[-1]
        if c["solver_order"] == 1 or taken < 1 or final:
            if plus:
                return (sigma_t / sigma_s0) * sample - (alpha_t * (np.exp(-h) - 1.0)) * m0
            return (alpha_t / alpha_s0) * sample - (sigma_t * (np.exp(h) - 1.0)) * m0
        r0 = (lam_s0 - lam_s1) / h
        d0, d1 = m0, (1.0 / r0) * (m0 - self.outputs[-2])
        midpoint = c["solver_type"] == "midpoint"
        if plus:
            d1_coeff = -0.5 * (alpha_t * (np.exp(-h) - 1.0)) if midpoint else alpha_t * ((np.exp(-h) - 1.0) / h + 1.0)
            return (sigma_t / sigma_s0) * sample - (alpha_t * (np.exp(-h) - 1.0)) * d0 + d1_coeff * d1
        d1_coeff = -0.5 * (sigma_t * (np.exp(h) - 1.0)) if midpoint else -(sigma_t * ((np.exp(h) - 1.0) / h - 1.0))
        return (alpha_t / alpha_s0) * sample - (sigma_t * (np.exp(h) - 1.0)) * d0 + d1_coeff * d1


def multistep_timesteps(config: dict, num_steps: int, last: int) -> np.ndarray:
    """The multistep solvers' spacing: N + 1 points with the last dropped (DPM-Solver and UniPC)."""
    spacing, n = config["timestep_spacing"], config["num_train_timesteps"]
    if spacing == "linspace":
        return np.linspace(0, last - 1, num_steps + 1).round()[::-1][:-1].astype(np.int64)
    if spacing == "leading":
        ratio = last // (num_steps + 1)
        return (np.arange(0, num_steps + 1) * ratio).round()[::-1][:-1].astype(np.int64) + config["steps_offset"]
    if spacing == "trailing":
        return np.arange(last, 0, -n / num_steps).round().astype(np.int64) - 1
    raise ValueError(f"timestep_spacing {spacing!r} is not supported; use leading, trailing or linspace")


class DPMSolverMultistepKarras(DPMSolverMultistep):
    name = "dpmpp_2m_karras"
    forced = {**DPMSolverMultistep.forced, "use_karras_sigmas": True}
