"""Where each LoRA-targetable torch weight lives in the stored graphs (read by engine/lora.py at load).

torch's exporter renames Linear weights (`onnx::MatMul_123`) and stores them transposed; ONNX
Runtime's optimizer may pack Q/K/V into one tensor; the fp16 graphs hold cast copies; the CUDA
graphs may store convolutions channels-last. Rather than follow each of those steps, every weight is
found by value: random or trained weights are unique, so a tensor that equals a weight, its
transpose, its channels-last layout, or a contiguous block of a packed tensor, is that weight. Each
weight is hashed before export (so `release` may free the torch module), and every stored graph's
initializers are matched against those hashes afterwards.

Biases are found the same way, as one row (a 1-D initializer, or a block of a packed one, viewed as
(1, n)), and mapped under `<module>.bias`; a bias whose value another layer's bias shares (zeros, say)
is left out of the graphs' maps, since its value cannot say which layer it is. For each initializer
that holds a weight the map also records where its bytes lie in the engine directory (file, offset), so
the runtime reads it with numpy alone: no onnx package at run time.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..engine.families import family
from ..engine.onnx_weights import float_initializers

FORMAT = 1
MAP_FILE = "lora_map.json"
LORA_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
# the forms a weight may be stored in: how to make it from the torch weight
_LAYOUTS = {"plain": lambda w: w, "transposed": lambda w: w.T, "nhwc": lambda w: w.transpose(0, 2, 3, 1)}


@dataclass
class Prints:
    """Hashes of one component's weights in every form and dtype a graph may hold them."""
    shapes: dict = field(default_factory=dict)  # module -> torch weight shape
    digests: dict = field(default_factory=dict)  # (dtype, shape, digest) -> [(module, layout)]
    rows: dict = field(default_factory=dict)  # dtype -> [(module, layout, form shape, first row)] of 2-D forms
    biases: dict = field(default_factory=dict)  # module -> torch bias shape
    bias_rows: dict = field(default_factory=dict)  # dtype -> [(module + ".bias", "plain", (1, n), bias)]


def _digest(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


def _fp16(array: np.ndarray) -> np.ndarray:
    """As ONNX Runtime's fp16 converter casts weights (it clamps tiny and huge values first)."""
    from onnxruntime.transformers.float16 import convert_np_to_float16

    return convert_np_to_float16(array)


def targets(module) -> dict:
    """{module name: float32 weight} of the Linear and Conv2d layers of a torch module."""
    import torch

    found = {}
    for name, layer in module.named_modules():
        if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)) and layer.weight is not None:
            found[name] = layer.weight.detach().float().cpu().numpy()
    return found


def bias_targets(module) -> dict:
    """{module name: float32 bias} of the Linear and Conv2d layers of a torch module that have one."""
    import torch

    return {name: layer.bias.detach().float().cpu().numpy() for name, layer in module.named_modules()
            if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)) and layer.bias is not None}


def fingerprint(module) -> Prints:
    prints = Prints()
    for name, weight in targets(module).items():
        prints.shapes[name] = list(weight.shape)
        for dtype, cast in (("float32", lambda w: w), ("float16", _fp16)):
            base = cast(weight)
            for layout in ("plain", "transposed") if base.ndim == 2 else ("plain", "nhwc"):
                form = np.ascontiguousarray(_LAYOUTS[layout](base))
                prints.digests.setdefault((dtype, form.shape, _digest(form)), []).append((name, layout))
                if form.ndim == 2:
                    prints.rows.setdefault(dtype, []).append((name, layout, form.shape, form[0].copy()))
    biases = bias_targets(module)
    forms = {(name, dtype): cast(bias).reshape(1, -1) for name, bias in biases.items()
             for dtype, cast in (("float32", lambda b: b), ("float16", _fp16))}
    owners: dict = {}
    for (name, dtype), form in forms.items():
        owners.setdefault((dtype, _digest(form)), set()).add(name)
    for (name, dtype), form in forms.items():
        prints.biases[name] = list(biases[name].shape)
        digest = _digest(form)
        if len(owners[(dtype, digest)]) == 1:  # a shared value says nothing about which layer it is
            prints.digests.setdefault((dtype, form.shape, digest), []).append((name + ".bias", "plain"))
            prints.bias_rows.setdefault(dtype, []).append((name + ".bias", "plain", form.shape, form[0].copy()))
    return prints


def map_graph(root: Path, graph_file: str, prints: Prints) -> dict:
    """{"initializers": {name: where its bytes lie}, "modules": {module: [[initializer, layout, axis, start]]}}
    for one stored graph; modules found nowhere are left out (loading a LoRA that targets one says so)."""
    initializers, modules = {}, {}
    firsts = {dtype: np.array([row[0] for *_, row in rows], dtype) for dtype, rows in prints.bias_rows.items()}
    for name, info, array in float_initializers(root, graph_file):
        dtype = str(array.dtype)
        form = array.reshape(1, -1) if array.ndim == 1 else array  # biases are matched as one row
        hits = [(m, layout, None, 0) for m, layout in prints.digests.get((dtype, form.shape, _digest(form)), [])]
        if not hits and array.ndim == 2:
            hits = _packed(array, prints.rows.get(dtype, []), prints.digests) or _interleaved(
                array, prints.rows.get(dtype, []), prints.digests)
        elif not hits and array.ndim == 1 and dtype in firsts and np.isin(array, firsts[dtype]).any():
            # a packed bias (the check above is one pass: most 1-D tensors, norms' scales, hold no bias's first value)
            rows = prints.bias_rows.get(dtype, [])
            hits = _packed(form, rows, prints.digests) or _interleaved(form, rows, prints.digests)
        for module, layout, axis, start in hits:
            modules.setdefault(module, []).append([name, layout, axis, start])
        if hits:
            initializers[name] = info
    return {"initializers": initializers, "modules": modules}


def _packed(array: np.ndarray, rows: list, digests: dict) -> list:
    """Weights stored as contiguous blocks of a concatenated 2-D tensor (packed Q/K/V): along axis 1
    (blocks of columns) or axis 0 (blocks of rows)."""
    hits, dtype = [], str(array.dtype)
    for module, layout, shape, first in rows:
        if shape[0] == array.shape[0] and shape[1] < array.shape[1]:  # columns [start, start + n)
            n = shape[1]
            for start in np.flatnonzero(array[0, : array.shape[1] - n + 1] == first[0]):
                block = array[:, start:start + n]
                if np.array_equal(block[0], first) and (module, layout) in digests.get((dtype, shape, _digest(block)), []):
                    hits.append((module, layout, 1, int(start)))
        elif shape[1] == array.shape[1] and shape[0] < array.shape[0]:  # rows [start, start + n)
            for start in np.flatnonzero((array[: array.shape[0] - shape[0] + 1] == first).all(axis=1)):
                block = array[start:start + shape[0]]
                if (module, layout) in digests.get((dtype, shape, _digest(block)), []):
                    hits.append((module, layout, 0, int(start)))
    return hits


def _interleaved(array: np.ndarray, rows_of: list, digests: dict) -> list:
    """Q/K/V (or K/V) packed head by head, as the CUDA attention fusion stores them: columns viewed as
    (heads, parts, head size), part j holding one weight's transpose. Located as axis "heads",
    start [parts, j, head size]."""
    dtype, (rows, width) = str(array.dtype), array.shape
    hits = []
    for parts in (2, 3):
        if width % parts:
            continue
        out = width // parts
        firsts = {first.tobytes() for _, _, shape, first in rows_of if shape == (rows, out)}
        if not firsts:
            continue
        for size in (d for d in range(1, out + 1) if out % d == 0):
            view = array.reshape(rows, out // size, parts, size)
            for j in range(parts):
                if np.ascontiguousarray(view[0, :, j, :]).tobytes() not in firsts:
                    continue  # the first row decides cheaply; the whole block's hash confirms
                block = view[:, :, j, :].reshape(rows, out)
                for module, layout in digests.get((dtype, (rows, out), _digest(block)), []):
                    hits.append((module, layout, "heads", [parts, j, size]))
            if hits:
                return hits
    return hits


def build_map(work: Path, manifest: dict, prints: dict[str, Prints]) -> str:
    """Write lora_map.json for the exported components' graphs (fp32, fp16, CUDA); returns its name."""
    import json

    components, graphs = {}, {}
    for name, component_prints in prints.items():
        component = manifest["components"][name]
        files = [component["file"]] + [component[k]["file"] for k in ("fp16", "cuda") if k in component]
        for file in files:
            graphs[file] = map_graph(work, file, component_prints)
        found = graphs[component["file"]]["modules"]
        components[name] = {"shapes": component_prints.shapes, "biases": component_prints.biases,
                            "unused": sorted(m for m in component_prints.shapes if m not in found
                                             and _unused(name, m, manifest, component_prints))}
    (work / MAP_FILE).write_text(json.dumps({"format": FORMAT, "components": components, "graphs": graphs}) + "\n")
    return MAP_FILE


def _unused(component: str, module: str, manifest: dict, prints: Prints) -> bool:
    """Layers the graph never computes: SDXL reads its text encoders' penultimate layer, so the last
    layer of an encoder without a pooled projection is cut from the graph (and from diffusers' result)."""
    if not family(manifest["model"]["family"]).micro_conditioning or component == "unet" or "text_projection" in prints.shapes:
        return False
    layers = [int(m.split(".")[-3]) for m in prints.shapes if ".layers." in m and m.split(".")[-3].isdigit()]
    last = max(layers, default=-1)
    return f"layers.{last}." in module


def bake(pipe, specs, log=print) -> list[dict]:
    """Fuse LoRA files into the torch pipeline's weights before export (`inpaint-export --lora`), with the
    formulas loading uses (engine/lora_variants.py); the manifest records each file's name, sha256 and scale."""
    import torch

    from ..engine.lora import lora_deltas, open_loras
    from ..engine.lora_keys import KeyResolver

    parts = {c: getattr(pipe, c) for c in LORA_COMPONENTS if getattr(pipe, c, None) is not None}
    # copies: every file's change is made on the checkpoint's weights, as at load
    modules = {c: {m: w.copy() for m, w in targets(module).items()} for c, module in parts.items()}
    shapes = {c: {m: list(w.shape) for m, w in found.items()} for c, found in modules.items()}
    biases = {c: {m: list(b.shape) for m, b in bias_targets(module).items()} for c, module in parts.items()}
    resolver = KeyResolver({c: list(s) for c, s in shapes.items()})
    loras = open_loras(specs)
    for lora in loras:
        deltas = lora_deltas(lora, resolver, shapes, biases, lambda c, m: modules[c][m])
        with torch.no_grad():
            for (component, module), delta in deltas.items():
                layer, _, kind = module.rpartition(".") if module.endswith(".bias") else (module, "", "weight")
                tensor = getattr(parts[component].get_submodule(layer), kind)
                tensor += torch.from_numpy(delta).to(tensor.dtype)
        log(f"baked LoRA {lora.name} (scale {lora.scale:g}) into {len(deltas)} tensors")
    return [lora.describe() for lora in loras]
