"""Export an eraser (LaMa, MI-GAN) into an engine directory, through the same component export as diffusion.

Sources: LaMa's release folder (config.yaml + models/best.ckpt), a best.ckpt or a generator state dict, IOPaint's
big-lama.pt (TorchScript); MI-GAN's generator checkpoints (migan_256_*.pt, migan_512_*.pt). The kind is told
from the weights' keys (`kind=` forces it). Checkpoints are unpickled by `read_checkpoint`, which builds tensors
and plain containers only: whatever else a Lightning checkpoint pickles (its hyper-parameters' classes) becomes
an inert placeholder, so reading a file never runs its code.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from ..engine import backends
from ..engine.families import LAMA, MIGAN, family
from ..engine.manifest import ERASER
from .eraser_lama import LamaGraph, lama_from_state_dict, lama_generator_weights
from .eraser_migan import MiganGraph, load_migan_state_dict
from .exporter import export_component, library_versions, check_output, engine_directory
from .specs import ComponentSpec, TensorSpec

ERASER_KINDS = (LAMA, MIGAN)


class EraserSourceError(ValueError):
    """The source is not an eraser checkpoint this export reads (the message says what it expected)."""


def detect_eraser(source: str | Path) -> str | None:
    """LAMA or MIGAN when `source` looks like an eraser checkpoint (by its path alone), else None."""
    path = Path(source)
    if path.is_dir():
        return LAMA if (path / "config.yaml").is_file() or (path / "models" / "best.ckpt").is_file() else None
    name = path.name.lower()
    return MIGAN if "migan" in name else LAMA if "lama" in name or path.suffix == ".ckpt" else None


def load_eraser(source: str | Path, kind: str | None = None):
    """(kind, torch generator in eval mode) from a checkpoint file or LaMa release folder."""
    if kind is not None and kind not in ERASER_KINDS:
        raise EraserSourceError(f"--kind {kind!r} is not an eraser; choose one of {', '.join(ERASER_KINDS)}")
    weights = read_state_dict(_checkpoint_file(Path(source)))
    found = kind or _kind_of(weights, source)
    if found == LAMA:
        return LAMA, lama_from_state_dict(weights)
    return MIGAN, load_migan_state_dict(weights)


def _checkpoint_file(path: Path) -> Path:
    if not path.exists():
        raise EraserSourceError(f"--model {str(path)!r} does not exist; pass a LaMa release folder, a best.ckpt, "
                                "big-lama.pt or an MI-GAN .pt file")
    if not path.is_dir():
        return path
    if not (path / "config.yaml").is_file():
        raise EraserSourceError(f"{path} has no config.yaml: a LaMa release folder holds config.yaml and "
                                "models/best.ckpt (big-lama.zip unpacked); pass that folder or the .ckpt file itself")
    ckpt = path / "models" / "best.ckpt"
    if not ckpt.is_file():
        raise EraserSourceError(f"{path} has config.yaml but no models/best.ckpt; unpack the whole release "
                                "(big-lama.zip) or pass the checkpoint file itself")
    return ckpt


def read_state_dict(path: Path) -> dict:
    """The tensors of a TorchScript archive, a Lightning checkpoint or a plain state dict."""
    try:
        if _is_torchscript(path):
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        found = read_checkpoint(path)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise EraserSourceError(f"{path} cannot be read as a torch checkpoint ({type(e).__name__}: {str(e)[:200]}); "
                                "the file is truncated or not a checkpoint: download it again") from None
    if not isinstance(found, dict):
        raise EraserSourceError(f"{path} holds a {type(found).__name__}, not a state dict of tensors")
    return found


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1].startswith("code/") for name in archive.namelist())


class _Placeholder:
    """Stands for a pickled object of any class outside torch and plain containers; never calls it."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


class _TensorsOnly(pickle.Unpickler):
    SAFE = {("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.SAFE or (module.split(".")[0] == "torch" and _tensor_builder(module, name)):
            return super().find_class(module, name)
        return _Placeholder


def _tensor_builder(module: str, name: str) -> bool:
    """torch's own tensor, storage and dtype rebuilding: what a state dict needs, nothing that runs code."""
    return name.startswith("_rebuild") or name.endswith("Storage") or (module == "torch" and name in (
        "Size", "device", "float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool"))


class _Pickle:  # the pickle module torch.load is given: only its Unpickler differs
    Unpickler = _TensorsOnly
    load = pickle.load
    __name__ = "inpaintrt_tensors_only"


def read_checkpoint(path: Path):
    return torch.load(str(path), map_location="cpu", weights_only=False, pickle_module=_Pickle)


def _kind_of(weights: dict, source) -> str:
    keys = list(lama_generator_weights(weights))
    if any(k.startswith("model.") for k in keys):
        return LAMA
    if any(k.startswith(("encoder.", "synthesis.")) for k in keys):
        return MIGAN
    sample = ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
    raise EraserSourceError(f"{source}: these weights are neither LaMa's generator (model.*) nor MI-GAN's "
                            f"(encoder.*, synthesis.*); its keys: {sample}. Pass big-lama's best.ckpt or an MI-GAN "
                            "generator checkpoint, or --kind lama|migan to see which keys do not fit")


def eraser_spec(kind: str, generator) -> ComponentSpec:
    """The one component: image (B,3,H,W) in [0,1] + mask (B,1,H,W), 1 = hole -> output in [0,1]."""
    if kind == LAMA:
        module, height, width = LamaGraph(generator), "height", "width"
        step = 2 ** generator_downsampling(generator)
        shapes = [(1, 8 * step, 12 * step), (2, 5 * step, 7 * step)]  # H != W: a swapped axis shows
    else:
        module, height = MiganGraph(generator), generator.resolution
        width = height
        shapes = [(1, height, height), (2, height, height)]

    def make_inputs(batch, h, w):
        g = torch.Generator().manual_seed(h * w + batch)
        return torch.rand(batch, 3, h, w, generator=g), (torch.rand(batch, 1, h, w, generator=g) > 0.6).float()

    return ComponentSpec(
        "eraser", module.eval(),
        [TensorSpec("image", "float32", ("batch", 3, height, width)),
         TensorSpec("mask", "float32", ("batch", 1, height, width))],
        [TensorSpec("output", "float32", ("batch", 3, height, width))],
        make_inputs, shapes)


def generator_downsampling(generator) -> int:
    return sum(1 for layer in generator.model if type(layer).__name__ == "ConvTranspose2d")


def export_eraser(source: str | Path, output: str | Path, kind: str | None = None, overwrite: bool = False,
                  optimize: bool = True, fp16: bool = False, log=print, tensorrt=None) -> Path:
    """Write an eraser engine directory, atomically as export_engine does: a failure leaves nothing.
    tensorrt (exporter.PlanOptions): also build and check TensorRT plans (LaMa: one per static size, which
    windows are padded up to; MI-GAN: one at its resolution); it implies fp16 graphs."""
    if tensorrt is not None:
        backends.load_tensorrt()  # before the export, with the install instructions
        fp16 = True
    check_output(Path(output), overwrite)  # before the checkpoint is read
    kind, generator = load_eraser(source, kind)
    spec = eraser_spec(kind, generator)
    with engine_directory(output, overwrite, log) as (work, manifest):
        log(f"exporting {family(kind).title} eraser ...")
        component = export_component(spec, work, optimize, "fp16" if fp16 else None)
        log(f"  eraser: max relative error vs torch {component['parity']['max_rel_error']:.2e}"
            + (f", fp16 {component['fp16']['max_rel_error']:.2e}" if fp16 else ""))
        multiple = 2 ** generator_downsampling(generator) if kind == LAMA else None
        model = {"family": kind, "kind": ERASER, "size_multiple": multiple,
                 "resolution": None if kind == LAMA else generator.resolution,
                 "parameters": sum(p.numel() for p in generator.parameters())}
        manifest.update(source=str(source), model=model, components={"eraser": component}, versions=library_versions())
        if tensorrt is not None:
            from .trt_build import build_plans

            manifest["tensorrt"] = build_plans(work, manifest, tensorrt.sizes, 1, tensorrt.timing_cache, log)
    return Path(output)
