"""Eraser engines (LaMa, MI-GAN) behind the same routes: which request fields reach an engine, by its kind.

The request models hold every engine's fields (one table, engine/argument_specs.py). A diffusion engine refuses
the eraser-only rows (`needs="eraser"`) given off their defaults, by Engine.inpaint's own rule
(engine/arguments.py `refuse_needing`); an eraser refuses the diffusion fields given off their defaults by
EraserEngine's. Either way the job keeps only what its engine takes: an eraser's job never carries a diffusion
field, and a diffusion job's arguments (and so its batch key) are what they were before erasers existed.
"""
from __future__ import annotations

from ..engine.argument_specs import ERASER_ARGUMENTS, SPECS
from ..engine.arguments import refuse_diffusion, refuse_needing
from ..runtime.errors import InvalidArgument
from .errors import ApiError

NOT_OUTPAINT = "an eraser fills holes inside a picture; it cannot grow one"


def engine_arguments(arguments: dict, params, record) -> dict:
    """The job's keyword arguments for this engine's kind, or the 422 naming the first field it refuses."""
    try:
        if record.eraser:
            return _eraser_arguments(arguments, params, record)
        return refuse_needing(arguments, record)  # the eraser rows left at their defaults are dropped
    except InvalidArgument as e:
        raise ApiError(422, e.field, str(e), e.fix) from None


def _eraser_arguments(arguments: dict, params, record) -> dict:
    if params.seed is not None:  # `seed` is the request's generator, which is no table row
        raise ApiError(422, "seed", f"seed={params.seed} was given, but this engine is an eraser ({record.title}): it "
                       "draws no noise, so the same picture and mask always give the same result", "leave seed out")
    diffusion = {name: value for name, value in arguments.items() if name in SPECS and name not in ERASER_ARGUMENTS}
    if diffusion.get("prompt") == "":  # the request's own default: no prompt given
        del diffusion["prompt"]
    refuse_diffusion(diffusion, record)  # EraserEngine's own rule, before a job is queued
    return {name: value for name, value in arguments.items() if name in ERASER_ARGUMENTS}


def outpaint_refusal(record, model: str | None) -> ApiError:
    """Outpaint asked of an eraser: a 422 naming `model`, the field that picks a diffusion engine instead."""
    named = f"model={model!r} is" if model else "the server's default engine is"
    return ApiError(422, "model", f"{named} an eraser ({record.title}): {NOT_OUTPAINT}",
                    "send model= a diffusion engine (GET /v1/info lists models with their kind), or grow the canvas "
                    "yourself and erase or inpaint the new area with POST /v1/inpaint")


def mask_maker_refusal(record, model: str | None) -> ApiError:
    """Inpaint or outpaint asked of a mask maker (Segment Anything, CLIPSeg): a 422 naming `model`."""
    named = f"model={model!r} is" if model else "the engine this request runs on (model left out: the first --engine) is"
    return ApiError(422, "model", f"{named} a mask maker ({record.title}): it makes masks and paints nothing; call "
                    "POST /v1/segment with it", "send model= a diffusion or eraser engine (GET /v1/info lists models "
                    "with their kind), and make the mask with POST /v1/segment first")
