"""ControlNet residuals for one denoising step, as diffusers' StableDiffusionControlNetInpaintPipeline makes them.

The loop calls a `ControlResiduals` once per step with the scaled 4-channel model input (the
ControlNet never sees the 9-channel UNet input) and adds what it returns to the UNet's feeds:
- each ControlNet's residuals times `controlnet_conditioning_scale`, and times 0 outside its
  [control_guidance_start, control_guidance_end] window of the steps that run (a ControlNet whose
  factor is 0 is not run: its residuals would be zeros);
- guess mode: the residuals scaled by 10^-1 ... 10^0 from the first down block to the mid block, and
  with classifier-free guidance the ControlNet runs on the conditional half only (its text feeds too:
  SDXL's text_embeds and time_ids are halved alike), zeros for the other;
- several ControlNets: their residuals summed in order;
- no ControlNet running: zeros, which leave the residual-input UNet equal to the plain one.
The residuals are arrays of the model input's module (cupy on ort-cuda: they never leave the GPU).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .xp import array_module


@dataclass
class ControlUnit:
    run: Callable[[dict], dict]  # the ControlNet graph: feeds -> {residual name: array}
    image: np.ndarray  # (rows, C, H, W): the control image for the largest batch the ControlNet sees
    scale: float
    start: float
    end: float
    global_pool: bool = False  # the graph already averaged its residuals over the picture


def residual_size(size: int, downsamplings: int) -> int:
    """A latent side after the UNet's stride-2 downsamplers (padding 1): ceil(size / 2) each time."""
    for _ in range(downsamplings):
        size = (size + 1) // 2
    return size


class ControlResiduals:
    """(step, steps, model_input, timestep) -> {residual name: (rows, C, h_k, w_k)} for the UNet."""

    def __init__(self, units: list[ControlUnit], layout: list[dict], conditioning: dict[str, np.ndarray], guided: bool,
                 guess_mode: bool):
        """conditioning: the ControlNets' text feeds for the whole model input ([uncond, cond] rows when guided):
        encoder_hidden_states, and SDXL's text_embeds and time_ids."""
        self.units, self.layout, self.conditioning = units, layout, conditioning
        self.guided, self.guess_mode = guided, guess_mode
        self._zeros: dict[tuple, dict] = {}
        self._moved: dict[str, tuple] = {}  # host arrays moved to the loop's module once

    def shapes(self, rows: int, height: int, width: int) -> dict[str, tuple]:
        return {r["name"]: (rows, r["channels"], residual_size(height, r["downsamplings"]),
                            residual_size(width, r["downsamplings"])) for r in self.layout}

    def zeros(self, rows: int, height: int, width: int, xp=np) -> dict[str, np.ndarray]:
        key = (rows, height, width, xp.__name__)
        if key not in self._zeros:
            self._zeros = {key: {name: xp.zeros(shape, np.float32)
                                 for name, shape in self.shapes(rows, height, width).items()}}
        return self._zeros[key]

    def _on(self, xp, name: str, host: np.ndarray):
        if self._moved.get(name, (None,))[0] is not xp:
            self._moved[name] = (xp, xp.asarray(host))
        return self._moved[name][1]

    def __call__(self, step: int, steps: int, model_input: np.ndarray, timestep: np.ndarray) -> dict:
        xp = array_module(model_input)
        rows, _, height, width = model_input.shape
        half = self.guess_mode and self.guided  # the ControlNet sees the conditional half only
        first = rows // 2 if half else 0
        sample, times = model_input[first:], timestep[first:]
        text = {name: self._on(xp, name, value)[first:] for name, value in self.conditioning.items()}
        total = None
        for unit in self.units:
            keep = 1.0 - float(step / steps < unit.start or (step + 1) / steps > unit.end)
            scale = unit.scale * keep
            if scale == 0:
                continue
            image = self._on(xp, f"image{id(unit)}", unit.image)
            out = unit.run({"sample": sample, "timestep": times, **text, "controlnet_cond": image[: len(sample)]})
            residuals = [out[r["name"]] for r in self.layout]
            if self.guess_mode and not unit.global_pool:
                factors = np.logspace(-1, 0, len(residuals)).astype(np.float32) * np.float32(scale)
            else:
                factors = np.full(len(residuals), scale, np.float32)
            residuals = [r * f for r, f in zip(residuals, factors)]
            total = residuals if total is None else [a + b for a, b in zip(total, residuals)]
        if total is None:
            return self.zeros(rows, height, width, xp)
        shapes = self.shapes(len(sample), height, width)
        found = {}
        for r, value in zip(self.layout, total):
            value = xp.broadcast_to(value, shapes[r["name"]]).astype(np.float32)  # pooled (1 x 1) residuals
            found[r["name"]] = xp.concatenate([xp.zeros_like(value), value]) if half else value
        return found
