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


class StackedGenerator:
    """Several requests' generators answering as one, for requests denoised in one batch
    (docs/batching.md): a draw's leading axis is either one entry per picture or one per row, and
    each member's share is drawn from that member's own generator, so every member sees exactly
    the draws it would see alone."""

    def __init__(self, generators: list, counts: tuple[int, ...]):
        if len(generators) != len(counts) or min(counts) < 1:
            raise ValueError(f"StackedGenerator needs one generator per member and counts of at least 1; got "
                             f"{len(generators)} generators for counts {tuple(counts)}")
        self.generators, self.counts = list(generators), tuple(counts)

    def shares(self, leading: int) -> tuple[int, ...]:
        """Each member's part of a draw's leading axis (one picture each, or its rows)."""
        if leading == len(self.counts):
            return (1,) * len(self.counts)
        if leading == sum(self.counts):
            return self.counts
        raise ValueError(f"a draw of {leading} leading entries fits neither the {len(self.counts)} pictures nor "
                         f"their {sum(self.counts)} rows")

    def standard_normal(self, size, dtype=np.float32) -> np.ndarray:
        size = tuple(size)
        parts = [draw(g, (share, *size[1:])) for g, share in zip(self.generators, self.shares(size[0]))]
        return np.concatenate(parts).astype(dtype, copy=False)
