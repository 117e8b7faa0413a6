"""Drop-in defaults: every argument the engine shares with a diffusers pipeline has that pipeline's default,
except the deliberate exceptions listed here, so a diffusers call without that argument gives the same result."""
import inspect

import pytest

from inpaintrt import Engine
from inpaintrt.engine.kandinsky import KandinskyEngine

diffusers = pytest.importorskip("diffusers")

# (our function, diffusers pipeline) pairs whose shared argument names must share defaults
ENTRY_POINTS = [
    (Engine.inpaint, "StableDiffusionInpaintPipeline"),
    (Engine.inpaint, "StableDiffusionXLInpaintPipeline"),
    (Engine.inpaint, "StableDiffusionControlNetInpaintPipeline"),
    (Engine.inpaint, "StableDiffusionXLControlNetInpaintPipeline"),
    (KandinskyEngine.inpaint, "KandinskyV22InpaintCombinedPipeline"),
    (KandinskyEngine.prior, "KandinskyV22PriorPipeline"),
]

# name -> why our default differs in the signature (the value used at run time is diffusers')
EXCEPTIONS = {
    # required here; diffusers' None default only moves its "image is required" error into check_inputs
    "image": "required",
    "mask_image": "required",
    # None: taken per family at run time (SD 1.0, SDXL 0.9999), as the two diffusers pipelines differ
    "strength": "per family",
    # None: taken per family at run time (SD 0.5, SDXL 1.0), as the two ControlNet inpaint pipelines differ
    "controlnet_conditioning_scale": "per family",
    # the one exception whose run-time value is not that pipeline's: StableDiffusionXLControlNetInpaintPipeline
    # defaults to 5.0, every other SD/SDXL inpaint pipeline to 7.5. An SDXL ControlNet engine also serves plain
    # SDXL inpainting, so it keeps 7.5 (docs/controlnet-sdxl.md tells users to pass 5.0 for that pipeline's)
    "guidance_scale": "7.5 kept",
    # None: SDXL micro-conditioning filled in at run time with diffusers' 6.0 / 2.5 / (0, 0), and refused
    # by name on SD engines when given
    "aesthetic_score": "run time", "negative_aesthetic_score": "run time",
    "crops_coords_top_left": "run time", "negative_crops_coords_top_left": "run time",
    # Kandinsky: None = the checkpoint's default size from the manifest (512 for the real decoder)
    "height": "manifest", "width": "manifest",
    # Kandinsky: None = 25 / 4.0 at run time; None tells "not given" apart, since these are refused with image_embeds
    "prior_guidance_scale": "run time", "prior_num_inference_steps": "run time",
    # Kandinsky: prompt may be left out when image_embeds is given (KandinskyV22InpaintPipeline's way)
    "prompt": "optional",
}


def defaults(function) -> dict:
    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name != "self"}


@pytest.mark.parametrize("ours,pipeline", ENTRY_POINTS, ids=[p for _, p in ENTRY_POINTS])
def test_shared_arguments_have_diffusers_defaults(ours, pipeline):
    theirs = defaults(getattr(diffusers, pipeline).__call__)
    mine = defaults(ours)
    shared = sorted(set(theirs) & set(mine))
    assert len(shared) >= 7, "the comparison must cover the common arguments"
    differ = {name: (mine[name], theirs[name]) for name in shared
              if name not in EXCEPTIONS and not _same(mine[name], theirs[name])}
    assert not differ, f"defaults differing from {pipeline}'s (ours, theirs): {differ}"


def test_exceptions_are_still_needed():
    """An exception that no pipeline needs any more is dropped, so the list stays honest."""
    needed = set()
    for ours, pipeline in ENTRY_POINTS:
        theirs, mine = defaults(getattr(diffusers, pipeline).__call__), defaults(ours)
        needed |= {name for name in set(theirs) & set(mine) if not _same(mine[name], theirs[name])}
    assert set(EXCEPTIONS) == needed


def test_controlnet_scale_default_is_each_familys_pipelines():
    """The engine's per-family controlnet_conditioning_scale is the matching diffusers pipeline's default."""
    from inpaintrt.engine.families import FAMILIES

    pipelines = {"sd1": "StableDiffusionControlNetInpaintPipeline", "sd2": "StableDiffusionControlNetInpaintPipeline",
                 "sdxl": "StableDiffusionXLControlNetInpaintPipeline"}
    assert {name for name, record in FAMILIES.items() if record.controlnet_scale is not None} == set(pipelines)
    for family, pipeline in pipelines.items():
        theirs = inspect.signature(getattr(diffusers, pipeline).__call__).parameters["controlnet_conditioning_scale"]
        assert FAMILIES[family].controlnet_scale == theirs.default, family
    assert inspect.signature(Engine.inpaint).parameters["controlnet_conditioning_scale"].default is None


def test_family_records_hold_each_pipelines_defaults():
    """strength, steps and guidance of each family record are its diffusers pipeline's; the engines'
    signatures say the same (a family's record is where the engines and the server read them)."""
    from inpaintrt.engine.families import FAMILIES

    pipelines = {"sd1": "StableDiffusionInpaintPipeline", "sd2": "StableDiffusionInpaintPipeline",
                 "sdxl": "StableDiffusionXLInpaintPipeline", "kandinsky22": "KandinskyV22InpaintCombinedPipeline"}
    assert {name for name, record in FAMILIES.items() if record.kind == "diffusion"} == set(pipelines)
    for family, pipeline in pipelines.items():
        record, theirs = FAMILIES[family], defaults(getattr(diffusers, pipeline).__call__)
        ours = defaults(record.engine_class().inpaint)
        assert (record.steps, record.guidance) == (theirs["num_inference_steps"], theirs["guidance_scale"]), family
        assert (record.steps, record.guidance) == (ours["num_inference_steps"], ours["guidance_scale"]), family
        if "strength" in theirs:
            assert record.strength == theirs["strength"], family


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return a is b
