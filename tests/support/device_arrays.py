"""A stand-in "device" array module without a GPU: its arrays behave as cupy's do where it matters (numpy
functions called on them fail, mixing them with a host numpy array in arithmetic fails, numpy scalars mix freely)
and `array_module` finds its module. The array-module tests (tests/runtime/test_array_module.py) and ort-cuda's
CPU tests (tests/gpu/test_ort_cuda.py) run on it."""
from __future__ import annotations

import types

import numpy as np


class DeviceArray(np.ndarray):
    """A numpy array pretending to live on a device."""

    def __array_namespace__(self, api_version=None):
        return device

    def __array_function__(self, func, types_, args, kwargs):
        raise TypeError(f"numpy.{func.__name__} called on a device array; use the array module's function")

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        for x in inputs:
            if type(x) is np.ndarray:
                raise TypeError(f"{ufunc.__name__}: a host numpy array {x.shape} mixed with a device array")
        args = [x.view(np.ndarray) if isinstance(x, DeviceArray) else x for x in inputs]
        if out is not None:
            kwargs["out"] = tuple(o.view(np.ndarray) for o in out)
        result = getattr(ufunc, method)(*args, **kwargs)
        return _wrap(result)

    def __float__(self):
        raise TypeError("float() of a device array would synchronise; keep scalars on the host")


def _wrap(result):
    if isinstance(result, (tuple, list)):
        return type(result)(_wrap(r) for r in result)
    return np.asarray(result).view(DeviceArray) if isinstance(result, np.ndarray) else result


def _plain(a):
    if isinstance(a, (list, tuple)):
        return type(a)(_plain(x) for x in a)
    return a.view(np.ndarray) if isinstance(a, DeviceArray) else a


def _device_function(name):
    return lambda *args, **kwargs: _wrap(getattr(np, name)(*[_plain(a) for a in args], **kwargs))


device = types.SimpleNamespace(
    __name__="device", float32=np.float32, float16=np.float16,
    asarray=lambda a, dtype=None: np.array(_plain(a), dtype=dtype).view(DeviceArray),
    asnumpy=lambda a: np.array(_plain(a)),
    **{name: _device_function(name) for name in ("clip", "where", "concatenate", "repeat", "split", "full",
                                                  "zeros", "empty", "exp", "sqrt", "isfinite", "broadcast_to",
                                                  "zeros_like")},
)
