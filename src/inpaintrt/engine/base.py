"""What every family's engine shares (docs/architecture.md, "Engines per family"): the opened directory,
its backend's sessions, where the denoising loop runs, the step callback, and opening itself.

The families' engines (engine.py: Stable Diffusion 1.x/2.x/SDXL; kandinsky.py: Kandinsky 2.2) are
siblings over this base; `Engine.load` picks one from the manifest's family. A method one family
lacks is absent from its class; calling it raises `MissingMethod` with what to do instead.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..runtime.callbacks import step_callback
from .backends import check_cuda_choice, open_backend, running_precision, unread_files
from .lora import prepare_loras
from .textual_inversion import prepare_embeddings, with_embeddings
from .manifest import read_manifest, verify_files
from .safety import checker_files


class MissingMethod(AttributeError):
    """A method this engine's family does not have (its sibling does)."""


class EngineBase:
    # method name -> why this family lacks it and what to do instead (see __getattr__)
    missing_methods: dict[str, str] = {}

    def __init__(self, root: Path, manifest: dict, backend: str, sessions: dict):
        self.root, self.manifest, self.backend, self.sessions = root, manifest, backend, sessions
        self.model = manifest["model"]
        self.family = self.model["family"]
        self.scheduler_config = manifest["scheduler"]
        self.xp = loop_array_module(backend)

    @classmethod
    def open(cls, root: Path, manifest: dict, backend: str, verify_hashes: bool, cuda_graph: bool,
             precision: str | None, cuda_options: dict | None, loras, embeddings=None):
        """This class over the directory's sessions (Engine.load documents the arguments)."""
        check_cuda_choice(backend, manifest, cuda_options)  # before any hashing
        checked = set()
        if verify_hashes:  # the files this backend reads (OpenVINO bf16: its cached IR, not the ONNX); the
            # safety checker's only where it is opened (Engine.load's safety_checker=False never reads them)
            skipped = unread_files(backend, root, manifest, precision) | checker_files(manifest)
            checked = verify_files(root, manifest, skipped)
        lora, described = prepare_loras(root, manifest, loras)
        added = prepare_embeddings(root, manifest, embeddings)  # textual inversion (engine/textual_inversion.py)
        engine = cls(root, manifest, *open_backend(backend, root, manifest, cuda_graph, precision, checked,
                                                   cuda_options, with_embeddings(lora, added)))
        engine.loras = described
        engine.embeddings = added.install(engine.text.tokenizers) if added else []
        engine.precision = running_precision(engine.backend, manifest, engine.sessions, precision)
        return engine

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
        return self.family

    def _unavailable_tensors(self) -> dict[str, str]:
        """diffusers' callback tensors this engine does not make -> why."""
        return {}


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
