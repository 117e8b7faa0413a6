"""The one source of randomness: `generator.standard_normal(shape, dtype=np.float32)`
(docs/architecture.md, "Randomness")."""
from __future__ import annotations

import numbers

import numpy as np


def as_generator(generator):
    """An int seed, None (fresh entropy) or any object with numpy Generator's standard_normal(size, dtype)."""
    if generator is None or isinstance(generator, numbers.Integral):
        return np.random.default_rng(generator)
    if not callable(getattr(generator, "standard_normal", None)):
        raise ValueError(
            f"generator must be an int seed or an object with standard_normal(size, dtype) such as "
            f"numpy.random.default_rng(seed); got {type(generator).__name__}"
        )
    return generator


def draw(generator, shape) -> np.ndarray:
    noise = np.asarray(generator.standard_normal(tuple(shape), dtype=np.float32), dtype=np.float32)
    if noise.shape != tuple(shape):
        raise ValueError(f"generator.standard_normal returned shape {noise.shape}, expected {tuple(shape)}")
    return noise
