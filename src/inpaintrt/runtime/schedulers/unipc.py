"""UniPC (bh1/bh2, predictor-corrector), matching diffusers' UniPCMultistepScheduler."""
from __future__ import annotations

import numpy as np

from .common import check_distinct
from .dpmsolver import DPMSolverMultistep, multistep_timesteps
from .sigmas import karras_sigmas, sigma_to_t


class UniPC(DPMSolverMultistep):
    name = "unipc"
    defaults = {"solver_order": 2, "predict_x0": True, "solver_type": "bh2", "lower_order_final": True,
                "disable_corrector": [], "use_karras_sigmas": False, "timestep_spacing": "linspace",
                "final_sigmas_type": "zero", "sigma_min": None, "sigma_max": None}
    forced = {}

    def set_timesteps(self, num_steps: int) -> None:
        c = self.config
        if c["solver_type"] not in ("bh1", "bh2"):
            self.refuse_setting("solver_type", "unipc's solver_type must be 'bh1' or 'bh2'",
                                "use solver_type bh1 or bh2")
        timesteps = multistep_timesteps(c, num_steps, c["num_train_timesteps"])
        ac = self.alphas_cumprod
        train_sigmas = ((1 - ac) / ac) ** 0.5
        if c["final_sigmas_type"] not in ("zero", "sigma_min"):
            raise ValueError("final_sigmas_type must be 'zero' or 'sigma_min'")
        if c["use_karras_sigmas"]:
            sigmas = karras_sigmas(train_sigmas[::-1], num_steps, c)
            timesteps = sigma_to_t(sigmas, np.log(train_sigmas)).round()
            last = sigmas[-1] if c["final_sigmas_type"] == "sigma_min" else 0
        else:
            sigmas = np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas)
            last = train_sigmas[0] if c["final_sigmas_type"] == "sigma_min" else 0
        self.sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)
        self.timesteps = timesteps.astype(np.int64)
        check_distinct(self.sigmas, self.timesteps, num_steps)
        self.outputs: list[np.ndarray] = []
        self.last_sample = None
        self.this_order = 1

    def _lambda(self, index):
        alpha, sigma = self._alpha_sigma(self.sigmas[index])
        with np.errstate(divide="ignore"):
            return np.log(alpha) - np.log(sigma), alpha, sigma

    def _convert(self, model_output, sample, index):
        alpha, sigma = self._alpha_sigma(self.sigmas[index])
        kind = self.config["prediction_type"]
        if self.config["predict_x0"]:
            table = {"epsilon": lambda: (sample - sigma * model_output) / alpha, "sample": lambda: model_output,
                     "v_prediction": lambda: alpha * sample - sigma * model_output}
        else:
            table = {"epsilon": lambda: model_output, "sample": lambda: (sample - alpha * model_output) / sigma,
                     "v_prediction": lambda: alpha * model_output + sigma * sample}
        if kind not in table:
            raise ValueError(f"unipc supports prediction_type epsilon, sample or v_prediction, not {kind!r}")
        return table[kind]()

    def _update(self, x, order, target, source, correction=None):
        """One UniPC update from sigma[source] to sigma[target] (predictor, or corrector when `correction`)."""
        lam_t, alpha_t, sigma_t = self._lambda(target)
        lam_s0, alpha_s0, sigma_s0 = self._lambda(source)
        h = lam_t - lam_s0
        m0 = self.outputs[-1]
        rks, d1s = [], []
        for i in range(1, order):
            lam_si = self._lambda(source - i)[0]
            rk = (lam_si - lam_s0) / h
            rks.append(rk)
            d1s.append((self.outputs[-(i + 1)] - m0) / rk)
        rks.append(np.float32(1.0))
        x0_mode = self.config["predict_x0"]
        hh = -h if x0_mode else h
        h_phi_1 = np.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if self.config["solver_type"] == "bh1" else np.expm1(hh)
        R, b, factorial = [], [], 1
        for i in range(1, order + 1):
            R.append(np.power(np.array(rks, np.float32), i - 1))
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        R, b = np.array(R, np.float64), np.array(b, np.float64)
        if x0_mode:
            x_t = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0
            scale = alpha_t * b_h
        else:
            x_t = alpha_t / alpha_s0 * x - sigma_t * h_phi_1 * m0
            scale = sigma_t * b_h
        if correction is None:  # predictor
            if not d1s:
                return x_t
            rhos = np.array([0.5]) if order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
            return x_t - scale * sum(np.float32(r) * d for r, d in zip(rhos, d1s))
        rhos = np.array([0.5]) if order == 1 else np.linalg.solve(R, b)
        res = sum(np.float32(r) * d for r, d in zip(rhos[:-1], d1s)) if d1s else 0
        return x_t - scale * (res + np.float32(rhos[-1]) * (correction - m0))

    def step(self, model_output, index, sample, generator=None):
        c = self.config
        taken = index - self.begin_index
        converted = self._convert(model_output, sample, index)
        if index > 0 and (index - 1) not in c["disable_corrector"] and self.last_sample is not None:
            # the corrector refines the sample the previous step predicted, with this step's model output
            sample = self._update(self.last_sample, self.this_order, index, index - 1, correction=converted)
        self.outputs = (self.outputs + [converted])[-c["solver_order"]:]
        order = min(c["solver_order"], len(self.timesteps) - index) if c["lower_order_final"] else c["solver_order"]
        self.this_order = min(order, min(taken, c["solver_order"]) + 1)
        self.last_sample = sample
        return self._update(sample, self.this_order, index + 1, index).astype(np.float32)
