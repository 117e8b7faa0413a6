"""The request fields that steer an inpaint with pictures besides the image: ControlNet's control images,
scales, guidance window and guess mode, and Kandinsky 2.2's image prompts (docs/serving.md).

Everything is checked against the engine's facts (/v1/info) before a job is queued: the number of control
images and scales against the engine's ControlNets, each control image's size against the image's, image
prompts against a Kandinsky engine exported with the CLIP image encoder. A refusal names the field.
"""
from __future__ import annotations

from typing import Annotated, Optional, Union

from pydantic import BaseModel, Field

from ..engine.argument_specs import SPECS
from ..engine.families import families_with, family
from .errors import ApiError
from .pictures import decode_picture

# the picture fields that may come several times: multipart repeats the file part, JSON sends a list
LISTED_PICTURES = ("control_image", "image_prompt")
# the number fields that may come once per ControlNet or image prompt (multipart repeats the field)
LISTED_NUMBERS = ("controlnet_conditioning_scale", "control_guidance_start", "control_guidance_end",
                  "image_prompt_weight")
CONTROL_FIELDS = ("controlnet_conditioning_scale", "control_guidance_start", "control_guidance_end", "guess_mode")
MAX_CONTROL_IMAGES = 8
MAX_IMAGE_PROMPTS = 4  # diffusers' interpolate takes any number; each is one CLIP image encoder run


def _bounded(name: str):
    spec = SPECS[name].served()
    return Annotated[float, Field(ge=spec.low, le=spec.high, allow_inf_nan=False)]


Scale = _bounded("controlnet_conditioning_scale")
Fraction = _bounded("control_guidance_start")
Weight = Annotated[float, Field(allow_inf_nan=False)]


class GuideFields(BaseModel):
    """The fields of POST /v1/inpaint and /v1/jobs besides control_image and image_prompt (pictures)."""

    controlnet_conditioning_scale: Optional[Union[Scale, list[Scale]]] = Field(
        None, description=SPECS["controlnet_conditioning_scale"].help + " One number, or one per ControlNet "
        "(multipart: repeat the field).")
    control_guidance_start: Optional[Union[Fraction, list[Fraction]]] = Field(
        None, description=SPECS["control_guidance_start"].help + " One number, or one per ControlNet.")
    control_guidance_end: Optional[Union[Fraction, list[Fraction]]] = Field(
        None, description=SPECS["control_guidance_end"].help + " One number, or one per ControlNet.")
    guess_mode: bool = Field(False, description=SPECS["guess_mode"].help)
    prompt_weight: Optional[Weight] = Field(None, description=SPECS["prompt_weight"].help + " Default 1.")
    image_prompt_weight: Optional[Union[Weight, list[Weight]]] = Field(
        None, description="Kandinsky 2.2: one weight per image_prompt, in order (multipart: repeat the field); "
                          "default 1 each.")


PICTURE_FIELDS = {
    "control_image": "ControlNet: one picture per ControlNet, in the order GET /v1/info lists them (multipart: repeat "
                     "the file part; an empty part, or JSON null, leaves that ControlNet its default), at the image's "
                     "size.",
    "image_prompt": f"Kandinsky 2.2: up to {MAX_IMAGE_PROMPTS} pictures mixed into the prompt, weighted by "
                    "image_prompt_weight (multipart: repeat the file part).",
}


def picture_schema(name: str, binary: bool) -> dict:
    one = ({"type": "string", "format": "binary"} if binary else
           {"type": "string", "contentEncoding": "base64"})
    if binary:
        return {"type": "array", "items": one, "description": PICTURE_FIELDS[name]}
    entry = {"anyOf": [one, {"type": "null"}]} if name == "control_image" else one
    return {"anyOf": [one, {"type": "array", "items": entry}], "description": PICTURE_FIELDS[name]}


async def repeated_part(name: str, value, fields: dict, files: dict) -> None:
    """A multipart part that may come several times: a picture (an empty part keeps its place: that
    ControlNet's default) or a number after the first of its name."""
    if name in LISTED_NUMBERS:
        fields[name] = [*(fields[name] if isinstance(fields[name], list) else [fields[name]]), value]
        return
    if isinstance(value, str) and value:
        raise ApiError(422, name, f"{name} arrived as a text field, not a file",
                       f"send {name} as a file part (curl: -F {name}=@picture.png)")
    files.setdefault(name, []).append(None if isinstance(value, str) else (await value.read() or None))


def json_pictures(fields: dict, decode_base64) -> dict:
    """control_image / image_prompt taken out of a JSON body: base64 text or a list of it (null: that
    ControlNet's default), as lists of bytes."""
    files = {}
    for name in LISTED_PICTURES:
        if name in fields:
            given = fields.pop(name)
            listed = given if isinstance(given, list) else [given]
            if not all(text is None or isinstance(text, str) for text in listed):
                raise ApiError(422, name, f"{name} must be base64 text or a list of it", f"send {name} as base64 "
                               "text of the file's bytes, or a list of them (null: that ControlNet's default)")
            files[name] = [None if text is None else decode_base64(text, name) for text in listed]
    return files


def guide_arguments(params, pictures: dict, size: tuple[int, int], facts: dict, max_pixels: int) -> dict:
    """Engine.inpaint's ControlNet and image-prompt arguments from a checked request; only those given, so
    an engine without ControlNets is never asked. pictures: the raw control_image / image_prompt entries
    (bytes, or None for a JSON null or an empty part); max_pixels: the server's limit per picture."""
    def decode(data: bytes, name: str):
        return decode_picture(data, name, max_pixels)

    # only empty parts (a form's unused file inputs) or nulls: the same as not sending the field
    pictures = {name: listed for name, listed in pictures.items() if any(data is not None for data in listed)}

    return {**_control(params, pictures.get("control_image"), size, facts, decode),
            **_image_prompts(params, pictures.get("image_prompt"), facts, decode)}


def _control(params, images: list | None, size: tuple[int, int], facts: dict, decode) -> dict:
    nets = facts.get("controlnets", [])
    given = {name: getattr(params, name) for name in CONTROL_FIELDS if getattr(params, name) not in (None, False)}
    if images is not None:
        given = {"control_image": images, **given}
    if not given:
        return {}
    if not nets:
        first = next(iter(given))
        raise ApiError(422, first, f"{first} is a ControlNet field, but this engine was exported without a "
                       "ControlNet (GET /v1/info lists controlnets: [])",
                       f"leave {first} out, or serve an engine exported with `inpaint-export --controlnet`")
    count = len(nets)
    per = f"one per ControlNet ({count}: {', '.join(net['component'] for net in nets)})"
    if images is not None:
        if len(images) != count:
            raise ApiError(422, "control_image", f"control_image came {_times(len(images))} but this engine has "
                           f"{count} ControlNet{'s' if count > 1 else ''}", f"send {per}, in that order")
        decoded = []
        for i, (data, net) in enumerate(zip(images, nets)):
            if data is None:
                decoded.append(None)
                continue
            label = "control_image" if count == 1 else f"control_image[{i}]"
            picture = decode(data, "control_image")
            if picture.size != size:
                raise ApiError(422, "control_image", f"{label} is {picture.size[0]}x{picture.size[1]} but image is "
                               f"{size[0]}x{size[1]}", "send each control image at exactly the image's size")
            if net["conditioning_channels"] != 3:
                raise ApiError(422, "control_image", f"{label}: ControlNet {net['component']} takes "
                               f"{net['conditioning_channels']}-channel conditions, which a picture cannot carry",
                               "leave it out (an empty part or null), or call Engine.inpaint with a float array")
            decoded.append(picture)
        given["control_image"] = decoded
    for name in ("controlnet_conditioning_scale", "control_guidance_start", "control_guidance_end"):
        value = given.get(name)
        if isinstance(value, list) and len(value) != count:
            raise ApiError(422, name, f"{name} came {_times(len(value))} but this engine has {count} "
                           f"ControlNet{'s' if count > 1 else ''}", f"send one number, or {per}")
    _check_window(given.get("control_guidance_start"), given.get("control_guidance_end"), count)
    return given


def _check_window(start, end, count: int) -> None:
    starts = start if isinstance(start, list) else [0.0 if start is None else start] * count
    ends = end if isinstance(end, list) else [1.0 if end is None else end] * count
    for i, (s, e) in enumerate(zip(starts, ends)):
        if s >= e:
            which = "" if count == 1 else f" (ControlNet {i})"
            field = "control_guidance_start" if start is not None else "control_guidance_end"
            raise ApiError(422, field, f"control_guidance_start={s} is not before control_guidance_end={e}{which}",
                           "send 0 <= control_guidance_start < control_guidance_end <= 1 (the fractions of the "
                           "steps during which the ControlNet steers)")


def _image_prompts(params, images: list | None, facts: dict, decode) -> dict:
    weights = params.image_prompt_weight
    weights = None if weights is None else weights if isinstance(weights, list) else [weights]
    given = [name for name, value in (("image_prompt", images), ("image_prompt_weight", weights),
                                      ("prompt_weight", params.prompt_weight)) if value is not None]
    if not given:
        return {}
    if not family(facts["family"]).prior:  # image prompts are mixed by the prior
        raise ApiError(422, given[0], f"{given[0]} is an argument of {', '.join(families_with('prior'))} engines; "
                       f"this engine is {facts['family']}", f"leave {given[0]} out")
    if given == ["prompt_weight"]:  # weighs the prompt against image prompts: alone only its default is meaningful
        if params.prompt_weight != 1:
            raise ApiError(422, "prompt_weight", f"prompt_weight={params.prompt_weight} weighs the prompt against "
                           "image_prompt pictures, and none were sent",
                           "leave prompt_weight out, or send image_prompt pictures to mix with")
        return {}
    if not facts.get("image_prompts"):
        raise ApiError(422, given[0], f"{given[0]} given, but this Kandinsky engine was exported without the CLIP "
                       "image encoder (GET /v1/info says image_prompts: false)",
                       f"leave {given[0]} out, or serve an engine re-exported with the current inpaint-export")
    images = images or []
    if any(data is None for data in images):
        raise ApiError(422, "image_prompt", "an image_prompt is empty", "send a picture in every image_prompt")
    if len(images) > MAX_IMAGE_PROMPTS:
        raise ApiError(422, "image_prompt", f"image_prompt came {_times(len(images))}; this server takes at most "
                       f"{MAX_IMAGE_PROMPTS}", f"send at most {MAX_IMAGE_PROMPTS} image prompts")
    weights = weights if weights is not None else [1.0] * len(images)
    if len(weights) != len(images):
        raise ApiError(422, "image_prompt_weight", f"image_prompt_weight came {_times(len(weights))} for "
                       f"{len(images)} image_prompt{'s' if len(images) != 1 else ''}",
                       "send one weight per image_prompt, in the same order (or none for 1.0 each)")
    if not images:
        return {}
    arguments = {"image_prompts": [(decode(data, "image_prompt"), weight) for data, weight in zip(images, weights)]}
    if params.prompt_weight is not None:
        arguments["prompt_weight"] = params.prompt_weight
    return arguments


def _times(count: int) -> str:
    return f"{count} time{'s' if count != 1 else ''}"
