"""LoRA at load time: fuse each file's change (engine/lora_variants.py: LoRA/LoCon, LoHa, LoKr, DoRA, full
diffs, bias patches) into the stored weights, in numpy.

The export's map (lora_map.json, export/lora_map.py) says where each UNet / text-encoder weight and bias
lives in each stored graph: which initializer, in which layout (as torch holds it, transposed, channels-
last) and which block of a packed tensor, and where that initializer's bytes lie on disk. Loading
reads those initializers, adds the deltas, and hands the changed tensors to the backend as
initializer overrides; nothing on disk changes. Every key of a file must be applied or refused by
name: a key of no known role, a layer this engine has not, a shape that does not fit, NaN weights.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .lora_keys import KeyResolver, LoraError, other_algorithm, split_key
from .lora_variants import Layer, layer_delta
from .families import families_with, family
from .manifest import file_digest
from .safetensors_io import SafetensorsError, read_header, read_tensor

MAP_FORMAT = 1
__all__ = ["LoraError", "Lora", "fuse", "lora_deltas", "open_loras", "prepare_loras", "lora_pairs"]


@dataclass
class Lora:
    path: Path
    scale: float
    sha256: str

    @property
    def name(self) -> str:
        return self.path.name

    def describe(self) -> dict:
        return {"name": self.name, "sha256": self.sha256, "scale": self.scale}


def parse_spec(spec) -> tuple[str, float]:
    """A (path, scale) pair, a path, or "FILE[:SCALE]" (the command lines' form) -> (path, scale)."""
    if isinstance(spec, (tuple, list)):
        if len(spec) != 2:
            raise LoraError(f"a LoRA is (path, scale), got {spec!r}")
        path, scale = spec
    else:
        path, scale = str(spec), 1.0
        head, sep, tail = path.rpartition(":")
        if sep and head and _is_number(tail):
            path, scale = head, float(tail)
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        raise LoraError(f"LoRA {path}: scale {scale!r} is not a number") from None
    if not np.isfinite(scale):
        raise LoraError(f"LoRA {path}: scale {scale} is not finite")
    return str(path), scale


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def open_loras(specs, check: bool = False) -> list[Lora]:
    """The files of `specs`, hashed; with `check`, each is also read through (a damaged file is refused here,
    before any engine loads: the command lines do so)."""
    loras = []
    for spec in specs or []:
        path, scale = parse_spec(spec)
        file = Path(path)
        if not file.is_file():
            raise LoraError(f"LoRA file {path!r} does not exist; pass a .safetensors LoRA")
        loras.append(Lora(file, scale, file_digest(file)))
        if check:
            lora_layers(loras[-1])
    return loras


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors: floats as float32, integers as they are; metadata), every header claim checked first
    (engine/safetensors_io.py); a damaged file is a LoraError naming it and what is wrong."""
    try:
        infos, metadata = read_header(path)
        return {key: read_tensor(path, info, key) for key, info in infos.items()}, metadata
    except SafetensorsError as e:
        raise LoraError(f"LoRA file {path.name} cannot be read: {e}; pass a .safetensors LoRA (download or save "
                        "it again if it is one)") from None
    except OSError as e:
        raise LoraError(f"LoRA file {path} cannot be read ({e})") from None


def lora_layers(lora: Lora) -> tuple[dict[str, Layer], dict]:
    """({layer spelling: its parts}, the peft adapter config) of one file, every value checked."""
    tensors, metadata = read_safetensors(lora.path)
    if not tensors:
        raise LoraError(f"LoRA {lora.name} holds no tensors, so it would change nothing; pass the LoRA file itself")
    try:
        config = _peft_config(metadata)
    except (ValueError, TypeError, AttributeError):
        raise LoraError(f"LoRA {lora.name}: its lora_adapter_metadata is not a JSON object of adapter settings; "
                        "the file is damaged") from None
    layers: dict[str, Layer] = {}
    for key, value in tensors.items():
        split = split_key(key)
        if split is None:
            other = other_algorithm(key)
            raise LoraError(f"LoRA {lora.name}: key {key!r} is " + (f"{other}, which this engine does not apply"
                            if other else "no LoRA weight this engine can apply") + " (it applies LoRA / LoCon, LoHa, "
                            "LoKr, DoRA, full diffs and bias patches); convert the file or leave the key out")
        layer, role = split
        if role == "alpha":
            if value.size != 1 or value.dtype == bool:
                raise LoraError(f"LoRA {lora.name}: {key} holds {value.size} {value.dtype} values; alpha is one "
                                "number; the file is damaged")
        elif not np.issubdtype(value.dtype, np.floating):
            raise LoraError(f"LoRA {lora.name}: {key} is {value.dtype}; LoRA weights must be float (F16, BF16 or "
                            "F32; only alpha may be an integer)")
        elif value.size == 0:
            raise LoraError(f"LoRA {lora.name}: {key} has no values (shape {list(value.shape)}); the file is damaged")
        if not np.isfinite(value).all():
            raise LoraError(f"LoRA {lora.name}: {key} has NaN or infinite values; the file is damaged")
        layers.setdefault(layer, Layer(lora.name, {})).parts[role] = (key, value)
    return layers, config


def lora_deltas(lora: Lora, resolver: KeyResolver, shapes: dict, biases: dict | None,
                weight) -> dict[tuple[str, str], np.ndarray]:
    """{(component, module): W' - W, (component, module + ".bias"): b' - b} of one file at its scale.
    shapes / biases: {component: {module: weight / bias shape}} (biases None: the engine's map predates
    them); weight(component, module): W in torch's layout, or None where no graph computes it (DoRA only)."""
    layers, config = lora_layers(lora)
    deltas = {}
    for name, layer in layers.items():
        target = resolver.resolve(name)
        if target is None:
            raise LoraError(f"LoRA {lora.name}: {layer.key('down', 'up')} names no layer of this engine's UNet or text "
                            "encoders (a LoRA for another model architecture?)")
        component, module = target
        own = config.get(component, {})
        alpha = float(layer["alpha"].reshape(-1)[0]) if "alpha" in layer.parts else None

        def scaling(rank, alpha=alpha, own=own, module=module):
            found = alpha if alpha is not None else _alpha(own, module, rank)
            return found / (np.sqrt(rank) if own.get("use_rslora") else rank)

        if biases is None and {"diff_b", "up_bias"} & set(layer.parts):
            raise LoraError(f"LoRA {lora.name}: {layer.key('diff_b', 'up_bias')} changes a bias, and this engine's "
                            "LoRA map predates bias patches; re-export the engine, or bake the LoRA in with "
                            "`inpaint-export --lora FILE:SCALE`")
        bias_shape = (biases or {}).get(component, {}).get(module)
        change, bias = layer_delta(layer, f"{component}.{module}", tuple(shapes[component][module]),
                                   None if bias_shape is None else tuple(bias_shape), scaling, lora.scale,
                                   lambda: weight(component, module))
        if change is not None:
            deltas[target] = change
        if bias is not None:
            deltas[(component, module + ".bias")] = bias
    return deltas


def _peft_config(metadata: dict) -> dict:
    """diffusers' saved adapter config (`lora_adapter_metadata`: `unet.lora_alpha`, ...) by component."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    found = {}
    for key, value in json.loads(raw).items():
        component, _, name = key.partition(".")
        found.setdefault(component, {})[name] = value
    return found


def _alpha(own: dict, module: str, rank: int) -> float:
    """peft's alpha for a module (own: its component's adapter config): its alpha_pattern entry, else the
    adapter's lora_alpha, else the rank (diffusers' assumption for files without metadata)."""
    for pattern, alpha in (own.get("alpha_pattern") or {}).items():
        if module == pattern or module.endswith("." + pattern):
            return float(alpha)
    return float(own.get("lora_alpha", rank))


def read_map(root: Path, manifest: dict) -> dict:
    file = manifest.get("lora_map")
    if not file:
        raise LoraError(f"{root} was exported before LoRA support (its manifest has no lora_map); re-export it "
                        "with `inpaint-export` to load LoRAs, or bake them in with `inpaint-export --lora FILE:SCALE`")
    try:
        found = json.loads((root / file).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise LoraError(f"{root}/{file} cannot be read ({str(e)[:120]}); re-export the engine") from None
    if not isinstance(found, dict) or found.get("format") != MAP_FORMAT:
        raise LoraError(f"{root}/{file} has format {found.get('format') if isinstance(found, dict) else None!r}, this "
                        f"inpaintrt reads {MAP_FORMAT}; re-export the engine")
    return found


def fuse(root: Path, manifest: dict, loras: list[Lora]) -> "Overrides":
    """The summed deltas of all files, ready to become each graph's initializer overrides (each file's change
    is made on the checkpoint's own weights; the changes add)."""
    lora_map = read_map(root, manifest)
    components = lora_map["components"]
    shapes = {c: info["shapes"] for c, info in components.items()}
    # maps written before bias patches have no "biases": a bias patch then asks for a re-export
    biases = ({c: info["biases"] for c, info in components.items()}
              if all("biases" in info for info in components.values()) else None)
    resolver = KeyResolver({c: list(s) for c, s in shapes.items()})
    overrides = Overrides(root, lora_map, {}, {c: manifest["components"][c]["file"] for c in components})
    for lora in loras:
        for target, delta in lora_deltas(lora, resolver, shapes, biases, overrides.weight).items():
            overrides.deltas[target] = overrides.deltas[target] + delta if target in overrides.deltas else delta
    return overrides


class Overrides:
    """Initializer overrides per stored graph: {initializer name: changed array in the graph's dtype}."""

    def __init__(self, root: Path, lora_map: dict, deltas: dict, files: dict | None = None):
        """deltas: {(component, module or module + ".bias"): change}; files: each component's fp32 graph."""
        self.root, self.map, self.deltas, self.files = root, lora_map, deltas, files or {}

    def components(self) -> set[str]:
        return {component for component, _ in self.deltas}

    def for_graph(self, component: str, graph_file: str) -> dict[str, np.ndarray]:
        graph = self.map["graphs"].get(graph_file)
        mine = {module: d for (c, module), d in self.deltas.items() if c == component}
        if not mine:
            return {}
        if graph is None:
            raise LoraError(f"{graph_file} has no LoRA map (exported without it); re-export the engine, or bake "
                            "the LoRAs in with `inpaint-export --lora FILE:SCALE`")
        unused = set(self.map["components"][component].get("unused", []))
        changed: dict[str, np.ndarray] = {}
        for module, delta in mine.items():
            places = graph["modules"].get(module)
            if not places:
                if module.removesuffix(".bias") in unused:
                    continue  # the graph never computes it (SDXL reads the penultimate layer): no effect
                raise LoraError(f"{component}.{module} was not found in {graph_file}, so a LoRA cannot change it "
                                "there; bake the LoRA in with `inpaint-export --lora FILE:SCALE`")
            for name, layout, axis, start in places:
                if name not in changed:
                    changed[name] = self._read(graph["initializers"][name]).astype(np.float32)
                form = delta.T if layout == "transposed" else np.moveaxis(delta, 1, -1) if layout == "nhwc" else delta
                target = changed[name]
                if delta.ndim == 1:  # a bias: matched as one row (export/lora_map.py)
                    form, target = form.reshape(1, -1), target.reshape(1, -1)
                if axis == "heads":  # packed head by head: [parts, part, head size] (export/lora_map.py)
                    parts, part, size = start
                    rows, width = target.shape
                    view = target.reshape(rows, width // parts // size, parts, size)
                    view[:, :, part, :] += form.reshape(rows, -1, size)
                elif axis == 1:
                    target[:, start:start + form.shape[1]] += form
                elif axis == 0:
                    target[start:start + form.shape[0]] += form
                else:
                    target += form.reshape(target.shape)
        dtypes = {name: graph["initializers"][name]["dtype"] for name in changed}
        return {name: np.ascontiguousarray(value.astype(dtypes[name])) for name, value in changed.items()}

    def weight(self, component: str, module: str) -> np.ndarray | None:
        """A weight as the checkpoint holds it (torch's layout), read from the component's fp32 graph; None
        where that graph does not compute it."""
        graph = self.map["graphs"].get(self.files.get(component))
        places = (graph or {}).get("modules", {}).get(module)
        if not places:
            return None
        name, layout, axis, start = places[0]
        array = self._read(graph["initializers"][name]).astype(np.float32)
        shape = tuple(self.map["components"][component]["shapes"][module])
        form = {"plain": shape, "transposed": shape[::-1], "nhwc": (shape[0],) + shape[2:] + (shape[1],)}[layout]
        if axis == "heads":
            parts, part, size = start
            rows, width = array.shape
            block = array.reshape(rows, width // parts // size, parts, size)[:, :, part, :].reshape(rows, -1)
        elif axis == 1:
            block = array[:, start:start + form[1]]
        elif axis == 0:
            block = array[start:start + form[0]]
        else:
            block = array.reshape(form)
        return {"plain": block, "transposed": block.T, "nhwc": np.moveaxis(block, -1, 1)}[layout].reshape(shape)

    def _read(self, info: dict) -> np.ndarray:
        count = int(np.prod(info["shape"]))
        array = np.fromfile(self.root / info["file"], info["dtype"], count, offset=info["offset"])
        if array.size != count:
            raise LoraError(f"{self.root / info['file']} ends before the weights lora_map.json places in it "
                            "(truncated); re-export the engine")
        return array.reshape(info["shape"])


def prepare_loras(root: Path, manifest: dict, specs) -> tuple["Overrides | None", list[dict]]:
    """(the overrides of `specs` or None, what `engine.loras` reports: those baked in at export, then these)."""
    baked = [dict(entry, baked=True) for entry in manifest.get("loras", [])]
    if not specs:
        return None, baked
    record = family(manifest["model"]["family"])
    if not record.loras:
        raise LoraError(f"LoRAs apply to {', '.join(families_with('loras'))} engines; this engine is {record.name}: "
                        "leave loras out")
    loras = open_loras(specs)
    return fuse(root, manifest, loras), baked + [dict(lora.describe(), baked=False) for lora in loras]


def lora_pairs(specs: list[str]) -> list[list]:
    """[[absolute path, scale], ...] from FILE[:SCALE] (absolute: Ray replicas may run elsewhere)."""
    return [[str(Path(lora.path).resolve()), lora.scale] for lora in open_loras(specs, check=True)]
