"""What every scheduler shares: config handling, the noise schedule, timestep spacing.

Arithmetic follows diffusers' float32 torch code so trajectories match it step for step.
A scheduler instance serves one generation; `step` takes the step index explicitly.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import InvalidArgument

COMMON_DEFAULTS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "steps_offset": 0,
}


# the string settings with a fixed set of values (diffusers' names); other strings are passed through
CHOICES = {"beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2"),
           "prediction_type": ("epsilon", "v_prediction", "sample"), "timestep_spacing": ("leading", "trailing", "linspace"),
           "interpolation_type": ("linear", "log_linear"), "final_sigmas_type": ("zero", "sigma_min"),
           "solver_type": ("midpoint", "heun", "bh1", "bh2"),
           "variance_type": ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")}


def checked_option(key: str, value, default):
    """A scheduler option given by a caller, checked against the type of its default: booleans, whole
    numbers, finite numbers and the CHOICES are refused by name when they are something else."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if isinstance(default, bool):
        ok, want = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, want = number and float(value).is_integer(), "a whole number"
    elif isinstance(default, float) or default is None and key != "trained_betas":
        ok, want = number or (default is None and value is None), "a finite number"
    elif key in CHOICES:
        ok, want = value in CHOICES[key], "one of " + ", ".join(CHOICES[key])
    else:
        ok, want = default is None or isinstance(value, type(default)), f"a {type(default).__name__}"
    if not ok:
        raise InvalidArgument(f"scheduler_options.{key}", f"scheduler_options.{key}={value!r} must be {want}",
                              f"send {want} as {key}, or leave it out")
    return int(value) if isinstance(default, int) and not isinstance(default, bool) else value


# diffusers settings not implemented here: a config that turns one on is refused, not silently ignored
UNSUPPORTED = {"rescale_betas_zero_snr": False, "thresholding": False, "use_exponential_sigmas": False,
               "use_beta_sigmas": False, "use_lu_lambdas": False, "use_flow_sigmas": False,
               "timestep_type": "discrete", "variance_type": None, "use_dynamic_shifting": False}


class SchedulerBase:
    defaults: dict = {}
    order = 1

    def __init__(self, config: dict, options: dict | None = None):
        known = {**COMMON_DEFAULTS, **self.defaults}
        self.config = {**known, **{k: v for k, v in config.items() if k in known}}
        unknown = sorted(set(options or {}) - set(known) - set(self.call_options))
        if unknown:
            takes = sorted(set(known) | set(self.call_options))
            raise InvalidArgument("scheduler_options", f"scheduler_options {unknown} are not options of scheduler "
                                  f"{self.name!r}; it takes {takes}", f"use options from {takes}, or another scheduler")
        options = {k: checked_option(k, v, {**known, **self.call_options}[k]) for k, v in (options or {}).items()}
        self.given = set(options)  # the caller's options: what refuse_setting names
        self.options = {k: v for k, v in options.items() if k in self.call_options}
        self.config.update(self.forced)
        self.config.update({k: v for k, v in options.items() if k in known})
        for key, default in UNSUPPORTED.items():
            if key not in self.defaults and config.get(key, default) != default:  # a scheduler's own key: it checks it
                raise ValueError(
                    f"the scheduler config sets {key}={config[key]!r}, which inpaintrt's {self.name!r} does not "
                    "implement; results would differ from diffusers"
                )
        # torch's float32 cumprod accumulates in double; doing the same keeps sigmas bit-identical
        self.alphas_cumprod = np.cumprod((1.0 - betas(self.config)).astype(np.float64)).astype(np.float32)
        self.begin_index = 0
        self.timesteps = None

    name = "base"
    call_options: dict = {}  # per-call options (e.g. DDIM's eta) with their defaults
    forced: dict = {}  # config this name always implies (e.g. Karras sigmas for dpmpp_2m_karras)

    def option(self, key):
        return self.options.get(key, self.call_options[key])

    def refuse_setting(self, key: str, message: str, fix: str):
        """A setting this scheduler cannot run with. The caller's scheduler option: refused naming that option;
        the engine's scheduler config (the model's own, which the caller cannot change): refused naming
        `scheduler`, the caller's choice that meets it."""
        if key in self.given:
            raise InvalidArgument(f"scheduler_options.{key}", f"scheduler_options.{key}={self.config[key]!r}: "
                                  f"{message}", f"{fix}, or leave {key} out")
        raise InvalidArgument("scheduler", f"{message} (this engine's scheduler config sets "
                              f"{key}={self.config[key]!r})", "choose another scheduler")

    @property
    def init_noise_sigma(self) -> float:
        return 1.0

    def scale_model_input(self, sample: np.ndarray, index: int) -> np.ndarray:
        return sample

    def add_noise(self, original: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        """Forward diffusion of `original` to the noise level of timesteps[index]."""
        alpha_prod = self.alphas_cumprod[int(self.timesteps[index])]
        return alpha_prod**0.5 * original + (1 - alpha_prod) ** 0.5 * noise


def betas(config: dict) -> np.ndarray:
    n = config["num_train_timesteps"]
    schedule = config["beta_schedule"]
    if config.get("trained_betas") is not None:
        return np.asarray(config["trained_betas"], dtype=np.float32)
    if schedule == "linear":
        return torch_linspace(config["beta_start"], config["beta_end"], n)
    if schedule == "scaled_linear":
        return torch_linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, n) ** 2
    if schedule == "squaredcos_cap_v2":
        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)], np.float32)
    raise ValueError(f"beta_schedule {schedule!r} is not supported; use linear, scaled_linear or squaredcos_cap_v2")


def torch_linspace(start: float, end: float, n: int) -> np.ndarray:
    """torch.linspace(start, end, n, dtype=float32) bit for bit: float32 ends and step, summed from both ends."""
    start32, end32 = np.float64(np.float32(start)), np.float64(np.float32(end))
    step = np.float64(np.float32((end32 - start32) / max(n - 1, 1)))
    i = np.arange(n, dtype=np.float64)
    from_start = start32 + step * i
    from_end = end32 - step * (n - 1 - i)
    return np.where(i < n // 2, from_start, from_end).astype(np.float32)


def check_indexable(config: dict, timesteps: np.ndarray, num_steps: int) -> None:
    """Schedulers that look up alphas_cumprod by timestep need every timestep below the training count
    (leading spacing with steps_offset reaches it at num_train_timesteps steps; diffusers then fails
    with an IndexError)."""
    n = config["num_train_timesteps"]
    if timesteps.size and int(timesteps.max()) >= n:
        fix = f"use fewer steps (e.g. {n // 2})"
        raise InvalidArgument("num_inference_steps", f"num_inference_steps={num_steps} makes this scheduler's timestep "
                              f"spacing reach timestep {int(timesteps.max())}, past the model's {n} training steps; "
                              f"{fix}", fix)


def check_step_count(config: dict, num_steps: int) -> None:
    """No more inference steps than the model has training timesteps."""
    n = config["num_train_timesteps"]
    if num_steps > n:
        raise InvalidArgument("num_inference_steps", f"num_inference_steps={num_steps} exceeds the {n} training "
                              f"timesteps; use at most {n}", f"use at most {n} steps")


def check_distinct(sigmas: np.ndarray, timesteps: np.ndarray, num_steps: int) -> None:
    """Multistep solvers divide by the step between consecutive noise levels: a repeated one (linspace
    spacing rounds two steps onto one timestep near num_train_timesteps steps) gives NaN, in diffusers too."""
    same = np.flatnonzero(sigmas[:-2] == sigmas[1:-1])
    if same.size:
        fix = f"use fewer steps (e.g. {num_steps - 1}) or another scheduler"
        raise InvalidArgument("num_inference_steps", f"num_inference_steps={num_steps} gives this scheduler timestep "
                              f"{int(timesteps[same[0]])} twice, and its multistep update would divide by zero "
                              f"(diffusers returns NaN there); {fix}", fix)


def spaced_timesteps(config: dict, num_steps: int) -> np.ndarray:
    """Descending float64 timesteps for `num_steps` steps, following config['timestep_spacing']."""
    n = config["num_train_timesteps"]
    spacing = config["timestep_spacing"]
    if spacing == "linspace":
        return np.linspace(0, n - 1, num_steps)[::-1].copy()
    if spacing == "leading":
        ratio = n // num_steps
        return (np.arange(0, num_steps) * ratio).round()[::-1].copy() + config["steps_offset"]
    if spacing == "trailing":
        return np.round(np.arange(n, 0, -n / num_steps)) - 1
    raise ValueError(f"timestep_spacing {spacing!r} is not supported; use leading, trailing or linspace")
