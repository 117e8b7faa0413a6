"""Export diffusers' StableDiffusionSafetyChecker: the graph, its torch check, the feature extractor's settings.

The graph takes the feature extractor's `clip_input` and returns, per image, diffusers' decision
(`has_nsfw_concepts`) and the scores it was made from. The decision is `StableDiffusionSafetyChecker.forward`'s
(the one the pipeline calls): a score counts once rounded to 3 decimals, and a special-care hit raises
every concept score by 0.01. Blacking out is left to the runtime (engine/safety.py): it zeroes the
flagged images, as diffusers does. docs/safety-checker.md says what runs and how to turn it off.
"""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np

from .half import FP32_TOLERANCE, relative_error
from .specs import ComponentSpec, TensorSpec

FILE = "safety_checker.onnx"
OPSET = 17
CHECK_BATCHES = (1, 3)  # traced at the first; the batch axis is dynamic
# CLIPImageProcessor settings the runtime reproduces (engine/safety.py); others are refused at export
SETTINGS = ("do_convert_rgb", "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale",
            "rescale_factor", "do_normalize", "image_mean", "image_std")


class SafetyCheckerExportError(ValueError):
    """The checkpoint's safety checker cannot be exported faithfully (`--no-safety-checker` leaves it out)."""


def has_safety_checker(pipe) -> bool:
    return getattr(pipe, "safety_checker", None) is not None and getattr(pipe, "feature_extractor", None) is not None


def export_safety_checker(pipe, work: Path, log=print) -> dict:
    """Write safety_checker.onnx into `work`, check it against torch and diffusers' own decision, and
    return its manifest section."""
    import onnxruntime as ort
    import torch


    preprocessing = feature_extractor_settings(pipe.feature_extractor)
    checker = pipe.safety_checker
    side = checker.config.vision_config.image_size
    crop = preprocessing["crop_size"] if preprocessing["do_center_crop"] else preprocessing["size"]
    if (crop.get("height"), crop.get("width")) != (side, side):
        raise SafetyCheckerExportError(
            f"the feature extractor makes {crop} pictures but the safety checker's vision model takes {side}x{side}; "
            "fix the checkpoint's feature_extractor, or export with --no-safety-checker")
    spec = _spec(checker, side)
    references = _references(spec)
    _check_against_diffusers(checker, references)
    path = work / FILE
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow on shapes
        torch.onnx.export(spec.module.eval(), spec.make_inputs(CHECK_BATCHES[0], side, side), str(path),
                          input_names=["clip_input"], output_names=[t.name for t in spec.outputs],
                          dynamic_axes=spec.dynamic_axes, opset_version=OPSET, dynamo=False, do_constant_folding=True)
    path.chmod(0o644)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    error = 0.0
    for inputs, expected in references:
        got = dict(zip(expected, session.run(list(expected), inputs)))
        if not np.array_equal(got["has_nsfw_concepts"], expected["has_nsfw_concepts"]):
            raise SafetyCheckerExportError(
                f"safety_checker: the ONNX graph flags {got['has_nsfw_concepts'].tolist()} where torch flags "
                f"{expected['has_nsfw_concepts'].tolist()}; the export was discarded")
        scores = [n for n in expected if n != "has_nsfw_concepts"]
        error = max(error, relative_error({n: got[n] for n in scores}, {n: expected[n] for n in scores}))
    if not error <= FP32_TOLERANCE:
        raise SafetyCheckerExportError(
            f"safety_checker: the ONNX graph's scores differ from torch by {error:.2e} (relative), more than "
            f"{FP32_TOLERANCE:g}; the export was discarded")
    log(f"  safety_checker: max relative error vs torch {error:.2e}")
    return {
        "file": FILE, "files": [FILE], "precision": "fp32",
        "inputs": [t.as_dict() for t in spec.inputs], "outputs": [t.as_dict() for t in spec.outputs],
        "parity": {"max_rel_error": float(error), "batches": list(CHECK_BATCHES)},
        "preprocessing": preprocessing,
        "concepts": int(checker.concept_embeds.shape[0]), "special_care": int(checker.special_care_embeds.shape[0]),
    }


def feature_extractor_settings(extractor) -> dict:
    """The CLIPImageProcessor's preprocessing as plain JSON; SafetyCheckerExportError for settings the runtime
    does not reproduce."""
    config = extractor.to_dict()
    problems = [f"no {k}" for k in SETTINGS if k not in config] + (["do_pad"] if config.get("do_pad") else [])
    settings = {k: config[k] for k in SETTINGS if k in config}
    for key in ("size", "crop_size"):
        size = settings.get(key)
        if isinstance(size, int):  # older configs: one number
            settings[key] = {"shortest_edge": size} if key == "size" else {"height": size, "width": size}
        elif isinstance(size, dict):
            settings[key] = {k: int(v) for k, v in size.items() if v is not None}
    if set(settings.get("size") or {}) not in ({"shortest_edge"}, {"height", "width"}):
        problems.append(f"size={settings.get('size')}")
    if problems:
        raise SafetyCheckerExportError(
            f"the feature extractor ({type(extractor).__name__}) has settings the engine does not reproduce "
            f"({', '.join(problems)}); export with --no-safety-checker")
    settings["resample"] = int(settings["resample"])
    settings["image_mean"] = [float(v) for v in settings["image_mean"]]
    settings["image_std"] = [float(v) for v in settings["image_std"]]
    settings["rescale_factor"] = float(settings["rescale_factor"])
    settings["processor"] = config.get("image_processor_type", type(extractor).__name__)
    # transformers 5 resizes with torchvision where it is installed, else with PIL (what the runtime does)
    settings["backend"] = getattr(extractor, "backend", "pil")
    return settings


def _spec(checker, side: int) -> ComponentSpec:
    import torch

    gen = torch.Generator().manual_seed(0)
    concepts, special = checker.concept_embeds.shape[0], checker.special_care_embeds.shape[0]
    return ComponentSpec(
        "safety_checker", _decision_module(checker),
        [TensorSpec("clip_input", "float32", ("batch", 3, side, side))],
        [TensorSpec("has_nsfw_concepts", "bool", ("batch",)),
         TensorSpec("concept_scores", "float32", ("batch", concepts)),
         TensorSpec("special_scores", "float32", ("batch", special))],
        lambda b, h, w: (torch.randn(b, 3, h, w, generator=gen) * 1.5,),
        [(b, side, side) for b in CHECK_BATCHES],
    )


def _references(spec: ComponentSpec) -> list[tuple[dict, dict]]:
    import torch

    references = []
    for shape in spec.check_shapes:
        inputs = spec.make_inputs(*shape)
        with torch.no_grad():
            outputs = spec.module(*inputs)
        references.append(({"clip_input": inputs[0].numpy()},
                           {t.name: o.numpy() for t, o in zip(spec.outputs, outputs)}))
    return references


def _check_against_diffusers(checker, references) -> None:
    """The graph's module must decide as diffusers' own forward (a Python loop) does on the same inputs."""
    import torch


    for inputs, expected in references:
        clip_input = torch.from_numpy(inputs["clip_input"])
        with torch.no_grad(), _quiet_diffusers():
            _, flags = checker(clip_input=clip_input, images=np.zeros((len(clip_input), 1, 1, 3)))
        if list(flags) != expected["has_nsfw_concepts"].tolist():
            raise SafetyCheckerExportError(
                f"safety_checker: the exported decision {expected['has_nsfw_concepts'].tolist()} differs from "
                f"diffusers' {list(flags)}; the export was discarded")


@contextlib.contextmanager
def _quiet_diffusers():
    """diffusers warns 'Potential NSFW content' whenever a sample input flags: not news at export."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


def _decision_module(checker):
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import cosine_distance

    class Decision(torch.nn.Module):
        """StableDiffusionSafetyChecker.forward's decision without its Python loop, so it traces."""

        def __init__(self):
            super().__init__()
            self.checker = checker

        def forward(self, clip_input):
            c = self.checker
            embeds = c.visual_projection(c.vision_model(clip_input)[1])
            special = cosine_distance(embeds, c.special_care_embeds) - c.special_care_embeds_weights
            special_care = torch.any(_rounded_positive(special), dim=1)
            # the loop's `adjustment = 0.01` once any special-care score is positive
            concepts = cosine_distance(embeds, c.concept_embeds) - c.concept_embeds_weights
            concepts = concepts + (special_care.to(concepts.dtype) * 0.01).unsqueeze(1)
            return torch.any(_rounded_positive(concepts), dim=1), concepts, special

    return Decision()


def _rounded_positive(scores):
    """round(score, 3) > 0 as numpy rounds a float32 (x * 1000, half to even); diffusers' forward rounds."""
    import torch

    return torch.round(scores * 1000) > 0
