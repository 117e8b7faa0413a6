"""LoRA at load time: fuse W + sum(scale * alpha / rank * up @ down) into the stored weights, in numpy.

The export's map (lora_map.json, export/lora_map.py) says where each UNet / text-encoder weight lives
in each stored graph: which initializer, in which layout (as torch holds it, transposed, channels-
last) and which block of a packed tensor, and where that initializer's bytes lie on disk. Loading
reads those initializers, adds the deltas, and hands the changed tensors to the backend as
initializer overrides; nothing on disk changes. Every key of a file must be applied or refused by
name: a key of no known role, a layer this engine has not, a shape that does not fit, NaN weights.
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .lora_keys import KeyResolver, split_key

MAP_FORMAT = 1
_SAFETENSORS_TYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": "bf16"}


class LoraError(ValueError):
    """A LoRA file that cannot be applied to this engine; the message names the key and the fix."""


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


def open_loras(specs) -> list[Lora]:
    loras = []
    for spec in specs or []:
        path, scale = parse_spec(spec)
        file = Path(path)
        if not file.is_file():
            raise LoraError(f"LoRA file {path!r} does not exist; pass a .safetensors LoRA")
        loras.append(Lora(file, scale, "sha256:" + hashlib.sha256(file.read_bytes()).hexdigest()))
    return loras


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors as float32 numpy, metadata). Read here rather than with safetensors' numpy API, which
    refuses bf16 tensors, the dtype many LoRAs are saved in."""
    data = path.read_bytes()
    try:
        size = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + size])
    except (struct.error, ValueError) as e:
        raise LoraError(f"LoRA file {path} is not a safetensors file ({e}); pass a .safetensors LoRA") from None
    metadata = header.pop("__metadata__", None) or {}
    tensors, base = {}, 8 + size
    for key, info in header.items():
        kind = _SAFETENSORS_TYPES.get(info["dtype"])
        if kind is None:
            raise LoraError(f"LoRA {path.name}: {key} is {info['dtype']}; LoRA weights must be float")
        start, end = info["data_offsets"]
        raw = data[base + start: base + end]
        if kind == "bf16":  # the top half of a float32
            array = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            array = np.frombuffer(raw, kind)
        tensors[key] = array.astype(np.float32).reshape(info["shape"])
    return tensors, metadata


def lora_deltas(lora: Lora, resolver: KeyResolver, shapes: dict) -> dict[tuple[str, str], np.ndarray]:
    """{(component, module): scale * alpha / rank * up @ down} of one file; shapes: {component: {module: shape}}."""
    tensors, metadata = read_safetensors(lora.path)
    config = _peft_config(metadata)
    pairs: dict[str, dict] = {}
    for key, value in tensors.items():
        split = split_key(key)
        if split is None:
            raise LoraError(f"LoRA {lora.name}: key {key!r} is no LoRA weight this engine can apply (only plain "
                            "LoRA / LoCon down-up pairs are; DoRA, LoHa, LoKr and bias patches are not)")
        layer, role = split
        if not np.isfinite(value).all():
            raise LoraError(f"LoRA {lora.name}: {key} has NaN or infinite values; the file is damaged")
        pairs.setdefault(layer, {})[role] = (key, value)
    deltas = {}
    for layer, parts in pairs.items():
        target = resolver.resolve(layer)
        key = (parts.get("down") or parts.get("up") or parts["alpha"])[0]
        if target is None:
            raise LoraError(f"LoRA {lora.name}: {key} names no layer of this engine's UNet or text encoders "
                            f"(a LoRA for another model architecture?)")
        if "down" not in parts or "up" not in parts:
            raise LoraError(f"LoRA {lora.name}: {key} has no {'up' if 'down' in parts else 'down'} weight beside it; "
                            "the file is incomplete")
        down, up = parts["down"][1], parts["up"][1]
        rank = down.shape[0]
        if up.ndim < 2 or up.shape[1] != rank:
            raise LoraError(f"LoRA {lora.name}: {parts['up'][0]} has shape {list(up.shape)}, which does not "
                            f"fit the rank {rank} of {parts['down'][0]}")
        alpha = float(parts["alpha"][1].reshape(-1)[0]) if "alpha" in parts else _alpha(config, target, rank)
        rslora = config.get(target[0], {}).get("use_rslora")
        factor = lora.scale * alpha / (np.sqrt(rank) if rslora else rank)
        delta = up.reshape(up.shape[0], rank) @ down.reshape(rank, -1)
        shape = tuple(shapes[target[0]][target[1]])
        if delta.size != int(np.prod(shape)) or delta.shape[0] != shape[0]:
            raise LoraError(f"LoRA {lora.name}: {key} makes a {list(up.shape[:1]) + list(down.shape[1:])} change "
                            f"for {target[0]}.{target[1]}, whose weight is {list(shape)} (a LoRA for another "
                            "model architecture?)")
        deltas[target] = (factor * delta).reshape(shape).astype(np.float32)
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


def _alpha(config: dict, target: tuple[str, str], rank: int) -> float:
    """peft's alpha for a module: its alpha_pattern entry, else the adapter's lora_alpha, else the rank
    (diffusers' assumption for files without metadata)."""
    own = config.get(target[0], {})
    for pattern, alpha in (own.get("alpha_pattern") or {}).items():
        if target[1] == pattern or target[1].endswith("." + pattern):
            return float(alpha)
    return float(own.get("lora_alpha", rank))


def read_map(root: Path, manifest: dict) -> dict:
    file = manifest.get("lora_map")
    if not file:
        raise LoraError(f"{root} was exported before LoRA support (its manifest has no lora_map); re-export it "
                        "with `inpaint-export` to load LoRAs, or bake them in with `inpaint-export --lora FILE:SCALE`")
    found = json.loads((root / file).read_text())
    if found.get("format") != MAP_FORMAT:
        raise LoraError(f"{root}/{file} has format {found.get('format')!r}, this inpaintrt reads {MAP_FORMAT}; "
                        "re-export the engine")
    return found


def fuse(root: Path, manifest: dict, loras: list[Lora]) -> "Overrides":
    """The summed deltas of all files, ready to become each graph's initializer overrides."""
    lora_map = read_map(root, manifest)
    shapes = {c: info["shapes"] for c, info in lora_map["components"].items()}
    resolver = KeyResolver({c: list(s) for c, s in shapes.items()})
    total: dict[tuple[str, str], np.ndarray] = {}
    for lora in loras:
        for target, delta in lora_deltas(lora, resolver, shapes).items():
            total[target] = total[target] + delta if target in total else delta
    return Overrides(root, lora_map, total)


class Overrides:
    """Initializer overrides per stored graph: {initializer name: changed array in the graph's dtype}."""

    def __init__(self, root: Path, lora_map: dict, deltas: dict):
        self.root, self.map, self.deltas = root, lora_map, deltas

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
                if module in unused:
                    continue  # the graph never computes it (SDXL reads the penultimate layer): no effect
                raise LoraError(f"{component}.{module} was not found in {graph_file}, so a LoRA cannot change it "
                                "there; bake the LoRA in with `inpaint-export --lora FILE:SCALE`")
            for name, layout, axis, start in places:
                if name not in changed:
                    changed[name] = self._read(graph["initializers"][name]).astype(np.float32)
                form = {"plain": delta, "transposed": delta.T, "nhwc": np.moveaxis(delta, 1, -1)}[layout]
                target = changed[name]
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

    def _read(self, info: dict) -> np.ndarray:
        count = int(np.prod(info["shape"]))
        return np.fromfile(self.root / info["file"], info["dtype"], count, offset=info["offset"]).reshape(info["shape"])


def prepare_loras(root: Path, manifest: dict, specs) -> tuple["Overrides | None", list[dict]]:
    """(the overrides of `specs` or None, what `engine.loras` reports: those baked in at export, then these)."""
    baked = [dict(entry, baked=True) for entry in manifest.get("loras", [])]
    if not specs:
        return None, baked
    family = manifest["model"]["family"]
    if family not in ("sd1", "sd2", "sdxl"):
        raise LoraError(f"LoRAs apply to SD 1.x, 2.x and SDXL engines; this engine is {family}: leave loras out")
    loras = open_loras(specs)
    return fuse(root, manifest, loras), baked + [dict(lora.describe(), baked=False) for lora in loras]


def lora_pairs(specs: list[str]) -> list[list]:
    """[[absolute path, scale], ...] from FILE[:SCALE] (absolute: Ray replicas may run elsewhere)."""
    return [[str(Path(lora.path).resolve()), lora.scale] for lora in open_loras(specs)]
