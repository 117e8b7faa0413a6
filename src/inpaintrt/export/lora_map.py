"""Where each LoRA-targetable torch weight lives in the stored graphs (read by engine/lora.py at load).

torch's exporter renames Linear weights (`onnx::MatMul_123`) and stores them transposed; ONNX
Runtime's optimizer may pack Q/K/V into one tensor; the fp16 graphs hold cast copies; the CUDA
graphs may store convolutions channels-last. Rather than follow each of those steps, every weight is
found by value: random or trained weights are unique, so a tensor that equals a weight, its
transpose, its channels-last layout, or a contiguous block of a packed tensor, is that weight. Each
weight is hashed before export (so `release` may free the torch module), and every stored graph's
initializers are matched against those hashes afterwards.

For each initializer that holds a weight the map also records where its bytes lie in the engine
directory (file, offset), so the runtime reads it with numpy alone: no onnx package at run time.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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
    return prints


def map_graph(root: Path, graph_file: str, prints: Prints) -> dict:
    """{"initializers": {name: where its bytes lie}, "modules": {module: [[initializer, layout, axis, start]]}}
    for one stored graph; modules found nowhere are left out (loading a LoRA that targets one says so)."""
    initializers, modules = {}, {}
    for name, info, array in float_initializers(root, graph_file):
        dtype = str(array.dtype)
        hits = [(m, layout, None, 0) for m, layout in prints.digests.get((dtype, array.shape, _digest(array)), [])]
        if not hits and array.ndim == 2:
            hits = _packed(array, prints.rows.get(dtype, []), prints.digests) or _interleaved(array, prints)
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


def _interleaved(array: np.ndarray, prints: Prints) -> list:
    """Q/K/V (or K/V) packed head by head, as the CUDA attention fusion stores them: columns viewed as
    (heads, parts, head size), part j holding one weight's transpose. Located as axis "heads",
    start [parts, j, head size]."""
    dtype, (rows, width) = str(array.dtype), array.shape
    hits = []
    for parts in (2, 3):
        if width % parts:
            continue
        out = width // parts
        firsts = {first.tobytes() for _, _, shape, first in prints.rows.get(dtype, []) if shape == (rows, out)}
        if not firsts:
            continue
        for size in (d for d in range(1, out + 1) if out % d == 0):
            view = array.reshape(rows, out // size, parts, size)
            for j in range(parts):
                if np.ascontiguousarray(view[0, :, j, :]).tobytes() not in firsts:
                    continue  # the first row decides cheaply; the whole block's hash confirms
                block = view[:, :, j, :].reshape(rows, out)
                for module, layout in prints.digests.get((dtype, (rows, out), _digest(block)), []):
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
        components[name] = {"shapes": component_prints.shapes,
                            "unused": sorted(m for m in component_prints.shapes if m not in found
                                             and _unused(name, m, manifest, component_prints))}
    (work / MAP_FILE).write_text(json.dumps({"format": FORMAT, "components": components, "graphs": graphs}) + "\n")
    return MAP_FILE


def _unused(component: str, module: str, manifest: dict, prints: Prints) -> bool:
    """Layers the graph never computes: SDXL reads its text encoders' penultimate layer, so the last
    layer of an encoder without a pooled projection is cut from the graph (and from diffusers' result)."""
    if manifest["model"]["family"] != "sdxl" or component == "unet" or "text_projection" in prints.shapes:
        return False
    layers = [int(m.split(".")[-3]) for m in prints.shapes if ".layers." in m and m.split(".")[-3].isdigit()]
    last = max(layers, default=-1)
    return f"layers.{last}." in module


def bake(pipe, specs, log=print) -> list[dict]:
    """Fuse LoRA files into the torch pipeline's weights before export (`inpaint-export --lora`); the
    manifest records each file's name, sha256 and scale."""
    import torch

    from ..engine.lora import lora_deltas, open_loras
    from ..engine.lora_keys import KeyResolver

    modules = {c: targets(getattr(pipe, c)) for c in LORA_COMPONENTS if getattr(pipe, c, None) is not None}
    shapes = {c: {m: list(w.shape) for m, w in found.items()} for c, found in modules.items()}
    resolver = KeyResolver({c: list(s) for c, s in shapes.items()})
    loras = open_loras(specs)
    for lora in loras:
        deltas = lora_deltas(lora, resolver, shapes)
        with torch.no_grad():
            for (component, module), delta in deltas.items():
                weight = getattr(pipe, component).get_submodule(module).weight
                weight += torch.from_numpy(delta).to(weight.dtype)
        log(f"baked LoRA {lora.name} (scale {lora.scale:g}) into {len(deltas)} layers")
    return [lora.describe() for lora in loras]
