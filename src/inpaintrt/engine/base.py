"""What every family's engine shares (docs/architecture.md, "Engines per family"): the opened directory,
its backend's sessions, where the denoising loop runs, the step callback, and opening itself.

The families' engines (engine.py: Stable Diffusion 1.x/2.x/SDXL; kandinsky.py: Kandinsky 2.2) are
siblings over this base; `Engine.load` picks one from the manifest's family. A method one family
lacks is absent from its class; calling it raises `MissingMethod` with what to do instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..runtime.callbacks import step_callback
from .families import family
from .backends import check_cuda_choice, open_backend, running_precision, unread_files
from .load_options import LoadOptions
from .lora import prepare_loras
from .textual_inversion import prepare_embeddings, with_embeddings
from .manifest import read_manifest, verify_files
from .safety import checker_files, open_safety_checker


@dataclass(frozen=True)
class Opened:
    """What opening a directory gave, handed whole to the engine's constructor."""
    options: LoadOptions
    backend: str  # the backend that runs (backend "auto" resolved)
    sessions: dict  # {component: executor}
    precision: str  # what the UNet runs in
    loras: list  # engine.loras: those baked in at export, then those fused at load
    embeddings: object  # engine/textual_inversion.py's prepared embeddings, or None
    safety_checker: object  # the opened checker, or None
    eraser: object = None  # the eraser engine opened beside it (LoadOptions.eraser), or None


class MissingMethod(AttributeError):
    """A method this engine's family does not have (its sibling does)."""


class EngineBase:
    # method name -> why this family lacks it and what to do instead (see __getattr__)
    missing_methods: dict[str, str] = {}

    def __init__(self, root: Path, manifest: dict, opened: "Opened"):
        self.root, self.manifest, self.options = root, manifest, opened.options
        self.backend, self.sessions, self.precision = opened.backend, opened.sessions, opened.precision
        self.loras = opened.loras  # baked in at export, then those fused at load
        self.embeddings: list = []  # textual inversions (the Stable Diffusion engine installs them)
        self.safety_checker = opened.safety_checker  # None where the directory has none or it was turned off
        self.eraser = opened.eraser  # masked_content="eraser" fills the mask with it (an EraserEngine), or None
        self.model = manifest["model"]
        self.family = self.model["family"]
        self.record = family(self.family)  # its defaults and what it supports (engine/families.py)
        self.scheduler_config = manifest.get("scheduler")  # erasers have none
        self.xp = loop_array_module(self.backend)
        self.controlnets = None  # engines of families with ControlNets set theirs (engine/control.py)
        self.image_prompts = False  # whether pictures can be mixed into the prompt (Kandinsky 2.2 with its encoder)

    @classmethod
    def open(cls, root: Path, manifest: dict, options: LoadOptions):
        """This class over the directory's sessions (Engine.load documents the options)."""
        check_cuda_choice(options.backend, manifest, options.cuda_options)  # before any hashing
        checked = set()
        if options.verify_hashes:  # the files this backend reads (OpenVINO bf16: its cached IR, not the ONNX);
            # the safety checker's only where it is opened (safety_checker=False never reads them)
            skipped = unread_files(options.backend, root, manifest, options.precision) | checker_files(manifest)
            checked = verify_files(root, manifest, skipped)
        lora, described = prepare_loras(root, manifest, options.loras)
        added = prepare_embeddings(root, manifest, options.embeddings)  # textual inversion
        backend, sessions = open_backend(options, root, manifest, checked, with_embeddings(lora, added))
        opened = Opened(options, backend, sessions, running_precision(backend, manifest, sessions, options.precision),
                        described, added, open_safety_checker(root, manifest, backend, options.safety_checker,
                                                              options.verify_hashes), _open_eraser(options, backend))
        return cls(root, manifest, opened)

    def facts(self) -> dict:
        """What a server checks requests against and shows in /v1/info (plain data: it travels to Ray)."""
        model = self.manifest["model"]
        nets = self.controlnets
        return {"family": self.family, "kind": self.record.kind, "unet_in_channels": model["unet_in_channels"],
                "latent_channels": model["latent_channels"], "vae_scale_factor": model["vae_scale_factor"],
                "default_height": model["default_height"], "default_width": model["default_width"],
                "default_scheduler": self.default_scheduler, "scheduler_config": self.scheduler_config,
                "backend": self.backend, "safety_checker": self.safety_checker is not None,
                "precision": self.precision, "default_steps": self.record.steps,
                "default_guidance_scale": self.record.guidance, "loras": self.loras, "embeddings": self.embeddings,
                "controlnets": [{key: entry[key] for key in ("component", "kind", "source", "conditioning_channels")}
                                for entry in (nets.entries if nets else [])],
                "default_controlnet_scale": nets.default_scale if nets else None,
                "image_prompts": bool(self.image_prompts), "eraser": self.eraser is not None}

    def __getattr__(self, name: str):
        # only reached when normal lookup fails: a sibling family's method gets its own message
        reason = type(self).missing_methods.get(name)
        if reason is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        raise MissingMethod(f"{name} is not available for {self.family} engines: {reason}")

    def _step_callback(self, function, tensor_inputs):
        """callback_on_step_end in diffusers' form or the short one (runtime/callbacks.py), checked up front."""
        return step_callback(function, self, tensor_inputs, self._callback_kind(), self._unavailable_tensors())

    def _callback_kind(self) -> str:
        return self.record.callback

    def _unavailable_tensors(self) -> dict[str, str]:
        """diffusers' callback tensors this engine does not make -> why."""
        return {}


def _open_eraser(options: LoadOptions, backend: str):
    """The eraser engine of LoadOptions.eraser, on the diffusion engine's device: the same backend, or
    ort-cuda beside TensorRT (an eraser has no plans); None without one."""
    if options.eraser is None:
        return None
    root = Path(options.eraser)
    manifest, name = read_family(root)
    record = family(name, str(root))
    if not record.eraser:
        raise ValueError(f"eraser={str(root)!r} is a {record.title} engine, not an eraser; export LaMa or MI-GAN "
                         "with `inpaint-export --model big-lama --output DIR` and pass that DIR")
    precision = options.precision if options.precision == "bf16" else None
    eraser_options = LoadOptions("ort-cuda" if backend == "tensorrt" else backend, precision,
                                 verify_hashes=options.verify_hashes)
    return record.engine_class().open(root, manifest, eraser_options)


def read_family(root: Path) -> tuple[dict, str]:
    """The manifest (hashes not checked yet) and its model family, which picks the engine class."""
    manifest = read_manifest(root, verify_hashes=False)
    return manifest, manifest["model"]["family"]


def loop_array_module(backend: str):
    """Where the denoising loop runs: ort-cuda keeps it on the GPU (cupy), the others on the host (numpy)."""
    return __import__("cupy") if backend == "ort-cuda" else np


def first_output(outputs: dict) -> np.ndarray:
    """The one output of a single-output graph."""
    return next(iter(outputs.values()))


def progress_bar(enabled: bool, description: str):
    """steps -> an iterable over them, with a tqdm bar when enabled."""
    if not enabled:
        return iter
    from tqdm.auto import tqdm

    return lambda steps: tqdm(steps, desc=description, unit="step")
