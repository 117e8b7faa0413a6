"""Replay numpy noise into diffusers: the accuracy checks' way to give diffusers and the engine the same noise.

The engine draws every random tensor from numpy's default_rng(seed) in diffusers' order (docs/architecture.md, "Randomness");
inside `numpy_randn(seed)` diffusers' `randn_tensor` draws from the same numpy generator in its own call
order, then moves the draw to the device and dtype diffusers asked for (so a CUDA pipeline in fp16 gets
the same numbers as the engine). Export-side only: it needs torch and diffusers.
"""
from __future__ import annotations

import contextlib
import sys

import numpy as np


@contextlib.contextmanager
def numpy_randn(seed: int, shapes: list | None = None):
    """Make diffusers draw every randn_tensor from numpy's default_rng(seed), in its own call order
    (appending each draw's shape to `shapes` when given)."""
    import torch
    from diffusers.utils import torch_utils

    original = torch_utils.randn_tensor
    rng = np.random.default_rng(seed)

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        if shapes is not None:
            shapes.append(tuple(shape))
        values = torch.from_numpy(rng.standard_normal(tuple(shape), dtype=np.float32))
        return values.to(device=device or "cpu", dtype=dtype or torch.float32)

    patched = [m for m in list(sys.modules.values())
               if getattr(m, "__name__", "").startswith("diffusers") and getattr(m, "randn_tensor", None) is original]
    for module in patched:
        module.randn_tensor = randn_tensor
    try:
        yield
    finally:
        for module in patched:
            module.randn_tensor = original
