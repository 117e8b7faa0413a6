"""The array-module shim (docs/architecture.md, "One loop"): the loop and the schedulers compute with whichever module
holds their arrays — numpy on the CPU, cupy on a CUDA GPU — through one code path.

`array_module(*arrays)` finds it by duck typing and never imports cupy: an array that is a cupy
array means cupy is already imported. Arrays that name their module through the array API's
`__array_namespace__` (numpy 2 arrays, a test's stand-in device module) are taken at their word.
Host-side schedule math (timesteps, sigmas, coefficients) stays numpy; only the latent-sized
tensors move.
"""
from __future__ import annotations

import sys

import numpy as np

from .noise import draw


def array_module(*arrays):
    """The module of the first array that is not numpy's (or numpy when all are numpy / scalars)."""
    for a in arrays:
        if a is None or type(a) is np.ndarray or isinstance(a, (np.generic, int, float)):
            continue
        cupy = sys.modules.get("cupy")
        if cupy is not None and isinstance(a, cupy.ndarray):
            return cupy
        namespace = getattr(a, "__array_namespace__", None)
        if namespace is not None:
            module = namespace()
            if module is not np:
                return module
    return np


def device_address(array) -> int:
    """Device address of a cupy array (or host address of a numpy one, for the tests): what IO binding and
    TensorRT take as a buffer."""
    data = array.data
    return data.ptr if hasattr(data, "ptr") else array.ctypes.data


def to_host(a) -> np.ndarray:
    """A numpy copy of a device array (one synchronisation), or the numpy array itself."""
    if isinstance(a, np.ndarray) and type(a) is np.ndarray:
        return a
    xp = array_module(a)
    if hasattr(xp, "asnumpy"):
        return xp.asnumpy(a)
    return np.asarray(a).view(np.ndarray)


def draw_like(generator, shape, like):
    """`draw(generator, shape)` (the draws stay on the host generator, in diffusers' order: §4),
    moved to the module that holds `like`."""
    noise = draw(generator, shape)
    xp = array_module(like)
    return noise if xp is np else xp.asarray(noise)
