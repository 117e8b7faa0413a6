"""PNDM (pseudo linear multistep), matching diffusers' PNDMScheduler with both skip_prk_steps settings."""
from __future__ import annotations

import numpy as np

from ..errors import InvalidArgument
from .common import SchedulerBase, check_indexable, spaced_timesteps


class PNDM(SchedulerBase):
    name = "pndm"
    defaults = {"skip_prk_steps": False, "set_alpha_to_one": False}

    def set_timesteps(self, num_steps: int) -> None:
        if self.config["prediction_type"] not in ("epsilon", "v_prediction"):  # before any step, unlike diffusers
            self.refuse_setting("prediction_type", "PNDM supports prediction_type epsilon or v_prediction",
                                "use prediction_type epsilon or v_prediction")
        if not self.config["skip_prk_steps"] and num_steps < 4:  # diffusers fails to broadcast its schedule
            fix = "use at least 4 steps, or skip_prk_steps=true"
            raise InvalidArgument("num_inference_steps", f"num_inference_steps={num_steps}: PNDM's Runge-Kutta "
                                  f"start (skip_prk_steps false) needs at least 4 steps; {fix}", fix)
        self.num_steps = num_steps
        base = np.round(spaced_timesteps(self.config, num_steps)[::-1]).astype(np.int64)  # ascending
        if self.config["skip_prk_steps"]:
            self.prk_timesteps = np.array([], np.int64)
            plms = np.concatenate([base[:-1], base[-2:-1], base[-1:]])[::-1]
        else:
            half = self.config["num_train_timesteps"] // num_steps // 2
            prk = base[-4:].repeat(2) + np.tile(np.array([0, half]), 4)
            self.prk_timesteps = prk[:-1].repeat(2)[1:-1][::-1].copy()
            plms = base[:-3][::-1]
        self.timesteps = np.concatenate([self.prk_timesteps, plms]).astype(np.int64)
        check_indexable(self.config, self.timesteps, num_steps)
        self.final_alpha = np.float32(1.0) if self.config["set_alpha_to_one"] else self.alphas_cumprod[0]
        self.ets: list[np.ndarray] = []
        self.cur_sample = None
        self.cur_model_output = 0

    def step(self, model_output, index, sample, generator=None):
        # diffusers counts calls, not positions: with strength < 1 the count starts at the begin index
        counter = index - self.begin_index
        timestep = int(self.timesteps[index])
        if counter < len(self.prk_timesteps) and not self.config["skip_prk_steps"]:
            return self._step_prk(model_output, counter, timestep, sample)
        return self._step_plms(model_output, counter, timestep, sample)

    def _step_prk(self, model_output, counter, timestep, sample):
        diff_to_prev = 0 if counter % 2 else self.config["num_train_timesteps"] // self.num_steps // 2
        prev_timestep = timestep - diff_to_prev
        timestep = int(self.prk_timesteps[counter // 4 * 4])
        if counter % 4 == 0:
            self.cur_model_output = self.cur_model_output + 1 / 6 * model_output
            self.ets.append(model_output)
            self.cur_sample = sample
        elif counter % 4 in (1, 2):
            self.cur_model_output = self.cur_model_output + 1 / 3 * model_output
        else:
            model_output = self.cur_model_output + 1 / 6 * model_output
            self.cur_model_output = 0
        cur_sample = self.cur_sample if self.cur_sample is not None else sample
        return self._prev_sample(cur_sample, timestep, prev_timestep, model_output)

    def _step_plms(self, model_output, counter, timestep, sample):
        if not self.config["skip_prk_steps"] and len(self.ets) < 3:
            raise ValueError("PNDM without skip_prk_steps needs its 12 Runge-Kutta steps first; use strength=1")
        ratio = self.config["num_train_timesteps"] // self.num_steps
        prev_timestep = timestep - ratio
        if counter != 1:
            self.ets = self.ets[-3:]
            self.ets.append(model_output)
        else:
            prev_timestep = timestep
            timestep = timestep + ratio
        ets = self.ets
        if len(ets) == 1 and counter == 0:
            self.cur_sample = sample
        elif len(ets) == 1 and counter == 1:
            model_output = (model_output + ets[-1]) / 2
            sample = self.cur_sample
            self.cur_sample = None
        elif len(ets) == 2:
            model_output = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            model_output = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            model_output = (1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])
        return self._prev_sample(sample, timestep, prev_timestep, model_output)

    def _prev_sample(self, sample, timestep, prev_timestep, model_output):
        alpha_t = self.alphas_cumprod[timestep]
        alpha_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha
        beta_t, beta_prev = 1 - alpha_t, 1 - alpha_prev
        if self.config["prediction_type"] == "v_prediction":
            model_output = alpha_t**0.5 * model_output + beta_t**0.5 * sample
        elif self.config["prediction_type"] != "epsilon":
            raise ValueError(f"PNDM supports prediction_type epsilon or v_prediction, not {self.config['prediction_type']!r}")
        sample_coeff = (alpha_prev / alpha_t) ** 0.5
        denom = alpha_t * beta_prev**0.5 + (alpha_t * beta_t * alpha_prev) ** 0.5
        return sample_coeff * sample - (alpha_prev - alpha_t) * model_output / denom
