"""One layer's change in a LoRA file, per algorithm, in numpy (float32): used at load (engine/lora.py) and
when baking at export (export/lora_map.py), so both apply the same formulas.

W is a weight in torch's layout, (out, in) or (out, in, kh, kw); r a factor's rank; s the file's scale
(`loras=[(file, s)]`); alpha the file's `.alpha` (any numeric dtype), else peft's adapter metadata,
else r. The change, as LyCORIS and peft define it:

- LoRA / LoCon: ΔW = alpha/r · up·down; LoCon's Tucker core `lora_mid` (r, r, kh, kw) joins them as
  einsum("ij..., pi, jr -> pr...", mid, up, down).
- LoHa: ΔW = alpha/r · (w1_a·w1_b) ⊙ (w2_a·w2_b), r = w1_b's rows; with Tucker cores `hada_t1`/`hada_t2`
  each factor is einsum("ij..., ip, jr -> pr...", t, w_a, w_b).
- LoKr: ΔW = kron(w1, w2) · alpha/r, w1 = `lokr_w1` or w1_a·w1_b, w2 = `lokr_w2`, w2_a·w2_b or the
  Tucker form of `lokr_t2`; r the inner size of a decomposed factor, and the scale 1 when both
  factors are full (LyCORIS).
- full: ΔW = `diff`, Δb = `diff_b`. Bias patches: Δb = alpha/r · `lora_B.bias` (peft's lora_bias).

Then W' = W + s·ΔW and b' = b + s·Δb, except with DoRA, where V = W + ΔW is renormalised to the stored
magnitude m, ‖·‖ the L2 norm over each output channel (each input channel where m is (1, in, ...)):
- LyCORIS / kohya `dora_scale`: W' = W + s·(m·V/(‖V‖ + eps) − W), eps float32's (A1111's merge: s = 0
  gives W; LyCORIS's own module scales inside, V·(s·(m/‖V‖ − 1) + 1), which differs where s ≠ 1).
- peft `lora_magnitude_vector`: W' = m·V/‖V‖ with V = W + s·ΔW (peft's fused DoRA, as diffusers runs it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .lora_keys import LoraError

ALGORITHMS = {
    "LoRA": ("down", "up", "mid"),
    "LoHa": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"),
    "LoKr": ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"),
    "full": ("diff",),
}
EPS = float(np.finfo(np.float32).eps)


@dataclass
class Layer:
    """One layer's parts in a file: {role: (key, array)}; `file` names the file in messages."""
    file: str
    parts: dict

    def __getitem__(self, role: str) -> np.ndarray | None:
        return self.parts[role][1] if role in self.parts else None

    def key(self, *roles: str) -> str:
        return next(self.parts[r][0] for r in roles + tuple(self.parts) if r in self.parts)

    def fail(self, message: str, *roles: str) -> LoraError:
        return LoraError(f"LoRA {self.file}: {self.key(*roles)} {message}")


def layer_delta(layer: Layer, target: str, shape: tuple, bias_shape: tuple | None, scaling: Callable[[int], float],
                scale: float, weight: Callable[[], np.ndarray | None]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(W' − W, b' − b) of one layer (either None where the file leaves it alone). target names the
    layer in messages; scaling(r) is alpha/r; weight() gives W (read only for DoRA)."""
    kinds = [name for name, roles in ALGORITHMS.items() if any(r in layer.parts for r in roles)]
    if len(kinds) > 1:
        raise layer.fail(f"mixes {' and '.join(kinds)} parts for one layer; the file is damaged or merged wrongly")
    kind = kinds[0] if kinds else None
    factor, delta = 1.0, None
    if kind is not None:
        delta, rank = FORMULAS[kind](layer, shape)
        factor = scaling(rank) if rank else 1.0
        delta = _fit(layer, delta, shape, target, ALGORITHMS[kind])
    bias = _bias(layer, bias_shape, target, factor)
    magnitude = next((r for r in ("dora_scale", "magnitude") if r in layer.parts), None)
    if delta is None:
        if bias is None or magnitude:
            lora_parts = {"up_bias", "alpha", "dora_scale", "magnitude"} & set(layer.parts)
            raise layer.fail(f"has no {'up and down weights' if lora_parts else 'weights'} beside it; the file is incomplete")
        return None, scale * bias
    delta = factor * delta
    if magnitude:
        base = weight()
        delta = np.zeros(shape, np.float32) if base is None else _dora(layer, magnitude, base, delta, scale)
    else:
        delta = scale * delta
    return delta.astype(np.float32), None if bias is None else (scale * bias).astype(np.float32)


def _lora(layer: Layer, shape: tuple) -> tuple[np.ndarray, int]:
    down, up, mid = layer["down"], layer["up"], layer["mid"]
    if down is None or up is None:
        raise layer.fail(f"has no {'up' if up is None else 'down'} weight beside it; the file is incomplete")
    rank = down.shape[0]
    if up.ndim < 2 or up.shape[1] != rank or (mid is None and up[0].size != rank):
        raise LoraError(f"LoRA {layer.file}: {layer.key('up')} has shape {list(up.shape)}, which does not fit the "
                        f"rank {rank} of {layer.key('down')}")
    if mid is None:
        return up.reshape(up.shape[0], rank) @ down.reshape(rank, -1), rank
    if mid.ndim < 2 or mid.shape[:2] != (rank, rank) or down[0].size != down.shape[1] or up[0].size != rank:
        raise layer.fail(f"has shape {list(mid.shape)}, which does not join up {list(up.shape)} and down "
                         f"{list(down.shape)} (a Tucker core is (rank, rank, kh, kw))", "mid")
    up, down = up.reshape(up.shape[0], rank), down.reshape(rank, -1)
    return np.einsum("ij...,pi,jr->pr...", mid, up, down, optimize=True), rank


def _tucker(layer: Layer, t: str, a: str, b: str) -> np.ndarray:
    core, wa, wb = layer[t], layer[a], layer[b]
    if (wa is None or wb is None or wa.ndim != 2 or wb.ndim != 2 or core.ndim < 2
            or core.shape[:2] != (wa.shape[0], wb.shape[0])):
        raise layer.fail(f"({list(core.shape)}) does not join {a} and {b} (a Tucker core is (rank, rank, kh, kw), "
                         "its factors (rank, out) and (rank, in))", t)
    return np.einsum("ij...,ip,jr->pr...", core, wa, wb, optimize=True)


def _product(layer: Layer, a: str, b: str) -> np.ndarray:
    wa, wb = layer[a], layer[b]
    if wa is None or wb is None:
        raise layer.fail(f"has no {b if wb is None else a} beside it; the file is incomplete", a, b)
    if wa.ndim != 2 or wa.shape[1] != wb.shape[0]:
        raise layer.fail(f"has shape {list(wa.shape)}, which does not fit {layer.key(b)} {list(wb.shape)}", a)
    return wa @ wb.reshape(wb.shape[0], -1)


def _loha(layer: Layer, shape: tuple) -> tuple[np.ndarray, int]:
    tucker = [t for t in ("hada_t1", "hada_t2") if t in layer.parts]
    if len(tucker) == 2:
        one = _tucker(layer, "hada_t1", "hada_w1_a", "hada_w1_b")
        two = _tucker(layer, "hada_t2", "hada_w2_a", "hada_w2_b")
    elif tucker:
        raise layer.fail("has only one of hada_t1 / hada_t2; the file is incomplete", *tucker)
    else:
        one, two = _product(layer, "hada_w1_a", "hada_w1_b"), _product(layer, "hada_w2_a", "hada_w2_b")
    if one.shape != two.shape:
        raise layer.fail(f"makes a {list(one.shape)} factor but hada_w2 a {list(two.shape)} one", "hada_w1_a")
    return one * two, layer["hada_w1_b"].shape[0]


def _lokr(layer: Layer, shape: tuple) -> tuple[np.ndarray, int | None]:
    rank = None
    if layer["lokr_w1"] is not None:
        w1 = layer["lokr_w1"]
    else:
        w1, rank = _product(layer, "lokr_w1_a", "lokr_w1_b"), layer["lokr_w1_b"].shape[0]
    if layer["lokr_w2"] is not None:
        w2 = layer["lokr_w2"]
    else:
        w2 = (_tucker(layer, "lokr_t2", "lokr_w2_a", "lokr_w2_b") if "lokr_t2" in layer.parts
              else _product(layer, "lokr_w2_a", "lokr_w2_b"))
        rank = rank or layer["lokr_w2_b"].shape[0]
    out, inputs, kernel = shape[0], int(np.prod(shape[1:2])), tuple(shape[2:])
    if (w1.ndim != 2 or out % w1.shape[0] or inputs % w1.shape[1] or w2.size * w1.size != int(np.prod(shape))
            or w2.shape[0] != out // w1.shape[0]):
        raise layer.fail(f"makes kron({list(w1.shape)}, {list(w2.shape)}), which is no change of a {list(shape)} "
                         "weight (a LoRA for another model architecture?)", "lokr_w1", "lokr_w1_a")
    w2 = w2.reshape(out // w1.shape[0], inputs // w1.shape[1], *kernel)
    return np.kron(w1.reshape(w1.shape + (1,) * len(kernel)), w2), rank


def _full(layer: Layer, shape: tuple) -> tuple[np.ndarray, None]:
    return layer["diff"], None


FORMULAS = {"LoRA": _lora, "LoHa": _loha, "LoKr": _lokr, "full": _full}


def _fit(layer: Layer, delta: np.ndarray, shape: tuple, target: str, roles: tuple) -> np.ndarray:
    if delta.size != int(np.prod(shape)) or delta.shape[0] != shape[0]:
        raise LoraError(f"LoRA {layer.file}: {layer.key(*roles)} makes a {list(delta.shape)} change for {target}, "
                        f"whose weight is {list(shape)} (a LoRA for another model architecture?)")
    return delta.reshape(shape)


def _bias(layer: Layer, bias_shape: tuple | None, target: str, factor: float) -> np.ndarray | None:
    role = next((r for r in ("diff_b", "up_bias") if r in layer.parts), None)
    if role is None:
        return None
    if role == "up_bias" and "up" not in layer.parts:
        raise layer.fail("has no up and down weights beside it; the file is incomplete", role)
    if bias_shape is None:
        raise layer.fail(f"changes the bias of {target}, which has none in this model; leave the key out", role)
    value = layer[role]
    if value.size != int(np.prod(bias_shape)):
        raise layer.fail(f"has {value.size} values for the {list(bias_shape)} bias of {target} (a LoRA for another "
                         "model architecture?)", role)
    return (factor if role == "up_bias" else 1.0) * value.reshape(bias_shape)


def _dora(layer: Layer, role: str, weight: np.ndarray, delta: np.ndarray, scale: float) -> np.ndarray:
    """W' − W of a weight-decomposed (DoRA) layer; delta is ΔW at scale 1."""
    m, out, inputs = layer[role], weight.shape[0], weight.shape[1]
    peft = role == "magnitude"
    merged = weight + (scale * delta if peft else delta)
    if m.size == out and (peft or m.shape[0] == out or m.ndim == 1):
        axes, view = tuple(range(1, weight.ndim)), (out,) + (1,) * (weight.ndim - 1)
    elif not peft and m.ndim >= 2 and m.shape[0] == 1 and m.size == inputs:  # LyCORIS with wd_on_out=False
        axes, view = (0,) + tuple(range(2, weight.ndim)), (1, inputs) + (1,) * (weight.ndim - 2)
    else:
        raise layer.fail(f"has shape {list(m.shape)}, which is neither the output ({out}) nor the input ({inputs}) "
                         f"channels of the {list(weight.shape)} weight", role)
    norm = np.sqrt(np.square(merged, dtype=np.float64).sum(axis=axes, keepdims=True))
    decomposed = merged * (m.reshape(view) / (norm if peft else norm + EPS))
    return decomposed - weight if peft else scale * (decomposed - weight)
