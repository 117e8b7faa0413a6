"""Reading an inpaint or outpaint request (multipart or JSON), checking every field before a worker sees it.

Every check raises ApiError naming the field, so a bad request costs the server no worker time
and never kills a worker. Field names are Engine.inpaint's (and Engine.outpaint's); `seed` stands for
their `generator=int`.
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal, Optional

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from ..engine.argument_specs import PER_FAMILY, SIDES, SPECS, needing
from ..engine.families import families_with, family
from ..engine.outpaint import plan
from ..engine.preflight import Preflight, preflight
from ..runtime.errors import InvalidArgument
from ..runtime.schedulers import SCHEDULERS
from .budget import DEFAULT_MAX_MEGAPIXEL_STEPS, check_request, request_work
from .erasing import engine_arguments, mask_maker_refusal, outpaint_refusal
from .errors import MAX_PROMPT, ApiError, json_object, read_form, request_fix, validation_error
from .numbers import NumbersOnly
from .pictures import decode_base64, decode_picture, picture_pair  # noqa: F401 (also the A1111 routes')
from .guides import (GuideFields, LISTED_NUMBERS, LISTED_PICTURES, MAX_CONTROL_IMAGES, MAX_IMAGE_PROMPTS,
                     guide_arguments, json_pictures, picture_schema, repeated_part)

SchedulerName = Literal[tuple(sorted(SCHEDULERS))]  # type: ignore[valid-type]


def spec_field(name: str, default=..., description: str | None = None, **more):
    """A request field made from the engines' argument table (engine/argument_specs.py): its range, as
    the server narrows it, and its help; `default` None leaves the engine's family default."""
    spec = SPECS[name].served()
    bounds = {}
    if spec.low is not None:
        bounds["gt" if spec.low_open else "ge"] = spec.low
    if spec.high is not None:
        bounds["lt" if spec.high_open else "le"] = spec.high
    if spec.kind == "real":
        bounds["allow_inf_nan"] = False
    if spec.multiple_of:
        bounds["multiple_of"] = spec.multiple_of
    if spec.kind == "other":  # text fields (negative_prior_prompt): as long as a prompt may be
        bounds["max_length"] = MAX_PROMPT
    return Field(spec.default if default is ... else default, description=description or spec.help + spec.serve_note,
                 **bounds, **more)


TYPES = {"whole": int, "real": float, "flag": bool, "other": str}


def table_fields(serve: str, base: type[BaseModel]) -> type[BaseModel]:
    """`base` with the request fields of the argument table's rows served to `serve` requests, typed by
    their kind: left out, a row whose default is None or per family leaves the engine its own."""
    fields = {}
    for name, spec in SPECS.items():
        if spec.serve != serve:
            continue
        annotation = Literal[spec.choices] if spec.kind == "choice" else TYPES[spec.kind]
        unset = spec.default is None or spec.per_family
        fields[name] = (Optional[annotation] if unset else annotation, spec_field(name, None if unset else ...))
    return create_model(f"{base.__name__}{serve.title()}Fields", __base__=base, **fields)


class RequestFields(NumbersOnly):
    """The fields every request has that are not rows of the argument table; number fields refuse true / false."""
    model_config = ConfigDict(extra="forbid")
    task: ClassVar[str] = ""  # the Engine method a job of these parameters calls
    pictures: ClassVar[tuple[str, ...]] = ()  # the picture parts
    listed: ClassVar[tuple[str, ...]] = ()  # optional picture parts that may come several times (guides.py)

    model: Optional[str] = Field(None, max_length=200, description="Which engine runs it, by name (GET /v1/info "
                                 "lists `models`); default: the server's first --engine.")
    prompt: str = Field("", max_length=MAX_PROMPT, description=SPECS["prompt"].help)
    negative_prompt: Optional[str] = Field(None, max_length=MAX_PROMPT, description=SPECS["negative_prompt"].help)
    scheduler: Optional[SchedulerName] = Field(None, description=SPECS["scheduler"].help)
    scheduler_options: Optional[dict[str, Any]] = Field(
        None, description=SPECS["scheduler_options"].help.rstrip(".") + " (JSON text in multipart).")
    seed: Optional[int] = Field(None, ge=0, le=2**63 - 1,
                                description="Random seed (Engine.inpaint's generator). Leave it out for a random "
                                            "one; the seed used is returned either way.")


class CommonParameters(table_fields("both", RequestFields)):
    """The fields inpaint and outpaint requests share (besides the pictures)."""


class InpaintParameters(table_fields("inpaint", CommonParameters), GuideFields):
    """The fields of POST /v1/inpaint and POST /v1/jobs besides the pictures: the argument table's rows
    served to inpaint requests, ControlNet's and Kandinsky's image prompts' from GuideFields."""
    task: ClassVar[str] = "inpaint"
    pictures: ClassVar[tuple[str, ...]] = ("image", "mask_image")
    listed: ClassVar[tuple[str, ...]] = LISTED_PICTURES


class OutpaintParameters(table_fields("outpaint", CommonParameters)):
    """The fields of POST /v1/outpaint and POST /v1/outpaint/jobs besides the picture (Engine.outpaint's)."""
    task: ClassVar[str] = "outpaint"
    pictures: ClassVar[tuple[str, ...]] = ("image",)

    left: int = spec_field("left", description="Pixels to add on the left (at least one side > 0).")
    height: Optional[int] = spec_field("height", description="Height of each pass (window); default: the model's. "
                                                             "The result is the picture's height + top + bottom.")
    width: Optional[int] = spec_field("width", description="Width of each pass (window); default: the model's. The "
                                                           "result is the picture's width + left + right.")


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    response_format: Literal["png", "json"] = Field(
        "png", description="png: the picture, seed and timings in X-Seed / X-Timings headers; json: base64 + fields.")


class SyncParameters(ResponseFormat, InpaintParameters):
    """POST /v1/inpaint: the job's fields and how to answer."""


class SyncOutpaintParameters(ResponseFormat, OutpaintParameters):
    """POST /v1/outpaint: the job's fields and how to answer."""


PRIOR_FIELDS = tuple(name for name in needing("prior") if name in InpaintParameters.model_fields)
# left out of a request: not passed, so the engine's family default applies
DEFAULTED = PER_FAMILY + PRIOR_FIELDS


@dataclass
class Limits:
    max_upload_bytes: int
    max_pixels: int  # of an uploaded picture, checked from its header before decoding
    max_output_pixels: int  # height x width generated (memory grows with it)
    max_steps: int
    max_outpaint_passes: int = 8  # an outpaint job runs this many inpaint passes at most (its work grows with them)
    max_megapixel_steps: float = DEFAULT_MAX_MEGAPIXEL_STEPS  # work per request (budget.py)
    max_request_memory: int = 2**62  # estimated host bytes per request; the server sets it at startup (budget.py)
    max_batch: int = 1  # pictures of one size that may share an engine call (--max-batch)


@dataclass
class Parsed:
    task: str  # the Engine method: inpaint or outpaint
    arguments: dict  # its keyword arguments, pictures decoded
    seed: int
    total_steps: int  # denoising loop iterations (fewer with strength < 1, more for second-order samplers; outpaint:
    # those of every pass)
    response_format: str = "png"
    model: str | None = None  # the engine's name; None: the server's default


def request_schema(model: type[CommonParameters], binary: bool) -> dict:
    """The OpenAPI schema of a request body: the parameters plus the pictures."""
    schema = model.model_json_schema()
    picture = ({"type": "string", "format": "binary"} if binary else
               {"type": "string", "contentEncoding": "base64", "description": "base64 (a data: URL is fine)"})
    described = {"image": "The picture (PNG, JPEG, WebP, ...).",
                 "mask_image": "Mask of the same size: white = repaint, black = keep. Leave it out to repaint the "
                               "image's transparent pixels (its alpha channel)."}
    schema["properties"] = {**{name: {**picture, "description": described[name]} for name in model.pictures},
                            **{name: picture_schema(name, binary) for name in model.listed},
                            **schema["properties"]}
    schema["required"] = [name for name in model.pictures if name != "mask_image"]  # no mask: the image's alpha
    return schema


async def read_request(request, model: type[CommonParameters], limits: Limits,
                       engine_facts: dict | Callable[[str | None], dict]) -> Parsed:
    """Parse the body by its content type, check it, decode the pictures."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        fields, files = await _read_multipart(request, limits)
    elif kind == "application/json":
        fields, files = await _read_json(request)
    else:
        raise ApiError(415, "content-type", f"content type {kind or 'none'!r} is not accepted",
                       "send multipart/form-data (image and mask_image files) or application/json (base64 pictures)")
    try:
        params = model.model_validate(fields)
    except ValidationError as e:
        raise validation_error(e.errors(), set(model.model_fields) | set(model.pictures) | set(model.listed)) from None
    if callable(engine_facts):  # a server of several engines: the facts of the one the request names
        engine_facts = engine_facts(params.model)
    return check(params, files, limits, engine_facts)


async def _read_multipart(request, limits: Limits) -> tuple[dict, dict]:
    form = await read_form(request, "send multipart/form-data with the files image and mask_image and one part per "
                           "field", max_files=2 + MAX_CONTROL_IMAGES + MAX_IMAGE_PROMPTS, max_fields=60,
                           max_part_size=limits.max_upload_bytes)
    fields, files = {}, {}
    for name, value in form.multi_items():
        if name in ("image", "mask_image"):
            if isinstance(value, str):
                raise ApiError(422, name, f"{name} arrived as a text field, not a file",
                               f"send {name} as a file part (curl: -F {name}=@picture.png)")
            files[name] = await value.read()
        elif name in LISTED_PICTURES or (name in LISTED_NUMBERS and name in fields):
            await repeated_part(name, value, fields, files)
        elif name == "scheduler_options" and value:
            try:
                fields[name] = json.loads(value)
            except json.JSONDecodeError:
                raise ApiError(422, name, f"scheduler_options={value[:60]!r} is not JSON",
                               "send a JSON object, e.g. {\"eta\": 0.3}") from None
        elif value != "":  # an empty form field means "not given"
            fields[name] = value
    return fields, files


async def _read_json(request) -> tuple[dict, dict]:
    fields = await json_object(request, "send one JSON object with base64 image and mask_image and the other fields")
    files = {}
    for name in ("image", "mask_image"):
        if name not in fields:
            continue
        text = fields.pop(name)
        if not isinstance(text, str):
            raise ApiError(422, name, f"{name} must be base64 text, got {type(text).__name__}",
                           f"send {name} as base64 text of the file's bytes")
        files[name] = decode_base64(text, name)
    return fields, {**files, **json_pictures(fields, decode_base64)}


def check(params: CommonParameters, files: dict, limits: Limits, engine_facts: dict,
          pictures: tuple | None = None) -> Parsed:
    """Every check of an inpaint or outpaint request; the Parsed job is what a worker runs. pictures: (count,
    field, value) of the pictures a request makes as jobs of these parameters (A1111's batch); None: one."""
    for name in files:
        if name not in params.pictures + params.listed:
            raise ApiError(422, name, f"{name} is not a part of {params.task} requests"
                           + (" (outpaint makes the mask itself from left, right, top and bottom)"
                              if name == "mask_image" else ""), f"leave {name} out")
    record = family(engine_facts["family"])
    if record.segmenter:  # a mask maker answers POST /v1/segment only (segmenting.py)
        raise mask_maker_refusal(record, params.model)
    if params.task == "outpaint" and record.eraser:
        raise outpaint_refusal(record, params.model)
    if params.task == "outpaint" and not record.outpaint:  # refused before a job is queued
        raise ApiError(422, "request", f"outpaint is not available for {record.title} engines yet",
                       "grow the canvas yourself and POST /v1/inpaint with a mask over the new area")
    for name in params.pictures:
        if name not in files and name != "mask_image":  # without a mask, the image's transparent pixels are one
            raise ApiError(422, name, f"{name} is required", f"send {name} as a file part or base64 field")
    prior = [name for name in PRIOR_FIELDS if getattr(params, name, None) is not None]
    if prior and not record.prior:
        raise ApiError(422, prior[0], f"{prior[0]} is an argument of {', '.join(families_with('prior'))} engines; "
                       f"this engine is {engine_facts['family']}", f"leave {prior[0]} out")
    prior_steps = getattr(params, "prior_num_inference_steps", None)
    if prior_steps is not None and prior_steps > limits.max_steps:
        raise ApiError(422, "prior_num_inference_steps", f"prior_num_inference_steps={prior_steps} is above this "
                       f"server's max_steps={limits.max_steps}", f"send at most {limits.max_steps} steps")
    steps = params.num_inference_steps or engine_facts.get("default_steps", 0)
    if steps > limits.max_steps and not record.eraser:  # an eraser refuses steps outright (erasing.py)
        given = "" if params.num_inference_steps else " (the model's default)"
        raise ApiError(422, "num_inference_steps", f"num_inference_steps={steps}{given} is above this "
                       f"server's max_steps={limits.max_steps}", f"send at most {limits.max_steps} steps")
    image = decode_picture(files["image"], "image", limits.max_pixels)
    unset = {name for name in DEFAULTED if getattr(params, name, 0) is None}
    # unset: the engine's own defaults; model picked the engine already
    arguments = params.model_dump(exclude={"seed", "response_format", "model"} | unset | set(GuideFields.model_fields))
    arguments = engine_arguments(arguments, params, record)  # what this kind of engine takes (erasing.py)
    arguments["image"] = image
    if isinstance(params, InpaintParameters):
        mask = _checked_mask(files["mask_image"], image.size, limits) if "mask_image" in files else None
        image, arguments["mask_image"] = picture_pair(image, mask)  # no mask sent: the image's alpha, image as RGB
        arguments["image"] = image
    planned = _preflight(arguments, engine_facts, limits)  # the engine's own checks (engine/preflight.py)
    if params.listed:  # checked against the engine's ControlNets and image encoder before the job is queued
        guides = {name: files[name] for name in params.listed if name in files}
        arguments.update(guide_arguments(params, guides, image.size, engine_facts, limits.max_pixels))
    calls, passes = planned.calls, 1
    if isinstance(params, OutpaintParameters):
        passes = _outpaint_passes(params, image.size, limits, engine_facts)
        arguments["max_pixels"] = limits.max_pixels
    # work and memory of the whole request, the same rule for every route (budget.py)
    try:
        check_request(request_work(params, arguments, engine_facts, planned, passes, limits, pictures), limits,
                      engine_facts)
    except InvalidArgument as e:
        raise ApiError(422, e.field, str(e), e.fix) from None
    seed = params.seed if params.seed is not None else secrets.randbelow(2**31)  # small enough for JS numbers
    seed = 0 if record.eraser else seed  # an eraser draws no noise: no seed is used (erasing.py refuses one)
    return Parsed(params.task, arguments, seed, calls * passes, getattr(params, "response_format", "png"), params.model)


def _checked_mask(data: bytes, size: tuple[int, int], limits: Limits) -> Image.Image:
    mask = decode_picture(data, "mask_image", limits.max_pixels)
    if size != mask.size:
        raise ApiError(422, "mask_image", f"mask_image is {mask.size[0]}x{mask.size[1]} but image is "
                       f"{size[0]}x{size[1]}", "send a mask of exactly the picture's size")
    return mask


def _preflight(arguments: dict, facts: dict, limits: Limits) -> Preflight:
    """engine/preflight.py's checks with this server's output limit, their refusals as 422s."""
    try:
        return preflight(arguments, facts, limits.max_output_pixels, "this server's max_output_pixels allows")
    except InvalidArgument as e:
        fixes = {"scheduler": "GET /v1/info lists the schedulers", "scheduler_options": "GET /v1/info lists the "
                 "schedulers", "strength": "raise strength or change num_inference_steps"}
        raise ApiError(422, e.field, str(e), request_fix(e.fix, fixes.get(e.field, f"change {e.field}"))) from None
    except ValueError as e:  # this engine's scheduler config is one the chosen scheduler does not implement
        raise ApiError(422, "scheduler", str(e), "choose another scheduler (GET /v1/info lists them)") from None


def _outpaint_passes(params: OutpaintParameters, size: tuple[int, int], limits: Limits, facts: dict) -> int:
    """Refuse what Engine.outpaint would refuse; the number of inpaint passes it will run."""
    sides = {name: getattr(params, name) for name in SIDES}
    if not any(sides.values()):
        raise ApiError(422, "left", "left, right, top and bottom are all 0: nothing to add",
                       "give the number of pixels to add on at least one side, e.g. right=128")
    width, height = size[0] + sides["left"] + sides["right"], size[1] + sides["top"] + sides["bottom"]
    if width * height > limits.max_pixels:
        largest = max(sides, key=sides.get)
        raise ApiError(422, largest, f"the grown picture would be {width}x{height} = {width * height} pixels, over "
                       f"this server's limit of {limits.max_pixels}",
                       f"add fewer pixels ({largest}={sides[largest]} is the largest side) or send a smaller picture")
    window = (params.height or facts["default_height"], params.width or facts["default_width"])
    box = (sides["top"], sides["left"], sides["top"] + size[1], sides["left"] + size[0])
    known = np.zeros((height, width), bool)
    known[box[0]:box[2], box[1]:box[3]] = True
    passes = 0
    for y, x, wh, ww in plan((height, width), box, window):  # Engine.outpaint skips windows with nothing new
        if not known[y:y + wh, x:x + ww].all():
            passes += 1
            known[y:y + wh, x:x + ww] = True
    if passes > limits.max_outpaint_passes:
        largest = max(sides, key=sides.get)
        raise ApiError(422, largest, f"growing the picture to {width}x{height} takes {passes} passes of "
                       f"{window[1]}x{window[0]}, over this server's max_outpaint_passes={limits.max_outpaint_passes}",
                       "add fewer pixels, or send a larger height/width per pass within max_output_pixels")
    return passes
