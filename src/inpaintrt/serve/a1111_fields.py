"""AUTOMATIC1111's request fields and how each maps onto Engine.inpaint: the one table the routes use.

A1111 clients (webuiapi, Krita / Photoshop / GIMP plugins, openOutpaint, bots) send a long body with
A1111's own names. Each field is one of three kinds:
- mapped: it becomes an Engine.inpaint argument (MAPPED; docs/a1111.md's table says the same);
- at its default only: a feature this engine does not have (face restoration, tiling, scripts, ...),
  accepted while it holds A1111's default and refused, naming the field, when it asks for the feature;
- ignored by A1111 itself in this request (hires-fix settings with enable_hr false, image_cfg_scale of
  non-pix2pix models, save flags): accepted as anything.
A field A1111 does not have is refused with a did-you-mean, never dropped.
"""
from __future__ import annotations

from typing import Any, Optional

from pydantic import ConfigDict, Field

from ..runtime.errors import InvalidArgument
from .errors import MAX_PROMPT
from .numbers import NumbersOnly

# A1111 sampler name -> (our scheduler, A1111's aliases)
SAMPLERS = {
    "Euler": ("euler", ["k_euler"]), "Euler a": ("euler_a", ["k_euler_a", "k_euler_ancestral"]),
    "Heun": ("heun", ["k_heun"]), "LMS": ("lms", ["k_lms"]), "DPM++ 2M": ("dpmpp_2m", ["k_dpmpp_2m"]),
    "DDIM": ("ddim", []), "PLMS": ("pndm", []), "UniPC": ("unipc", []), "LCM": ("lcm", []),
}
# A1111's schedule names (`scheduler`): automatic keeps the sampler's own sigmas
SCHEDULES = {"automatic": "Automatic", "karras": "Karras"}
FILL = {0: "fill", 1: "original", 2: "latent_noise", 3: "latent_nothing"}  # inpainting_fill -> masked_content

# our field (Engine.inpaint's, as the server names it) -> the A1111 field that set it
MAPPED = {"prompt": "prompt", "negative_prompt": "negative_prompt", "seed": "seed", "num_inference_steps": "steps",
          "guidance_scale": "cfg_scale", "strength": "denoising_strength", "scheduler": "sampler_name",
          "scheduler_options": "scheduler", "height": "height", "width": "width", "blur_factor": "mask_blur",
          "masked_content": "inpainting_fill", "padding_mask_crop": "inpaint_full_res_padding",
          "mask_invert": "inpainting_mask_invert", "image": "init_images", "mask_image": "mask",
          "keep_unmasked": "inpaint_full_res", "request": "request",
          # the ControlNet extension's units (alwayson_scripts.controlnet.args, one per ControlNet; img2img only)
          "control_image": "alwayson_scripts.controlnet.args.image",
          "controlnet_conditioning_scale": "alwayson_scripts.controlnet.args.weight",
          "control_guidance_start": "alwayson_scripts.controlnet.args.guidance_start",
          "control_guidance_end": "alwayson_scripts.controlnet.args.guidance_end",
          "guess_mode": "alwayson_scripts.controlnet.args.control_mode"}

# features this engine does not have: the values that leave them off (A1111's defaults and what clients send)
DEFAULT_ONLY: dict[str, tuple] = {
    "restore_faces": (None, False), "tiling": (None, False), "styles": (None, []), "subseed_strength": (None, 0),
    "seed_resize_from_h": (None, 0, -1), "seed_resize_from_w": (None, 0, -1), "s_churn": (None, 0),
    "s_tmax": (None, 0), "s_tmin": (None, 0), "s_noise": (None, 1), "override_settings": (None, {}),
    "script_name": (None, ""), "script_args": (None, []), "alwayson_scripts": (None, {}), "save_images": (False,),
    "refiner_checkpoint": (None, ""), "initial_noise_multiplier": (None, 1), "include_init_images": (False,),
    "enable_hr": (None, False), "resize_mode": (0,), "infotext": (None, ""),
}
WHAT = {"restore_faces": "face restoration", "tiling": "tiling", "styles": "saved styles",
        "subseed_strength": "variation seeds", "seed_resize_from_h": "seed resizing", "seed_resize_from_w": "seed resizing",
        "override_settings": "settings overrides", "script_name": "scripts", "script_args": "scripts",
        "alwayson_scripts": "extensions (always-on scripts)", "save_images": "saving on the server",
        "refiner_checkpoint": "a refiner checkpoint", "initial_noise_multiplier": "noise multipliers",
        "include_init_images": "echoing the input pictures", "enable_hr": "hires fix",
        "resize_mode": "resize modes other than 0 (just resize)", "infotext": "infotext parameters",
        **dict.fromkeys(("s_churn", "s_tmax", "s_tmin", "s_noise"), "stochastic sampler settings")}


class Common(NumbersOnly):
    """Fields of both routes. Number fields take JSON numbers only (not true / false, not text), as the schema says."""
    model_config = ConfigDict(extra="forbid")
    text_numbers = False

    prompt: str = Field("", max_length=MAX_PROMPT)
    negative_prompt: Optional[str] = Field("", max_length=MAX_PROMPT)
    seed: int = Field(-1, ge=-1, le=2**63 - 1, description="-1: a random seed; image i of a request gets seed + i")
    steps: int = Field(50, ge=1, le=1000)
    cfg_scale: float = Field(7.0, ge=0, le=50, allow_inf_nan=False)
    width: int = Field(512, ge=8, multiple_of=8)
    height: int = Field(512, ge=8, multiple_of=8)
    batch_size: int = Field(1, ge=1, description="images per iteration, each with its own seed; batch_size x n_iter x "
                                                 "steps x pixels is bounded by the server's max_megapixel_steps")
    n_iter: int = Field(1, ge=1, description="iterations")
    sampler_name: Optional[str] = None
    sampler_index: Optional[str] = Field(None, description="A1111's older name of sampler_name")
    scheduler: Optional[str] = Field(None, description="automatic or karras")
    eta: Optional[float] = Field(None, ge=0, allow_inf_nan=False, description="DDIM's eta; other samplers ignore it")
    send_images: bool = True
    # kept at their defaults (DEFAULT_ONLY)
    restore_faces: Optional[bool] = None
    tiling: Optional[bool] = None
    styles: Optional[list[str]] = None
    subseed: Optional[int] = None  # unused while subseed_strength is 0
    subseed_strength: Optional[float] = None
    seed_resize_from_h: Optional[int] = None
    seed_resize_from_w: Optional[int] = None
    s_churn: Optional[float] = None
    s_tmax: Optional[float] = None
    s_tmin: Optional[float] = None
    s_noise: Optional[float] = None
    override_settings: Optional[dict[str, Any]] = None
    script_name: Optional[str] = None
    script_args: Optional[list] = None
    alwayson_scripts: Optional[dict[str, Any]] = None
    save_images: bool = False
    refiner_checkpoint: Optional[str] = None
    infotext: Optional[str] = None
    # A1111 ignores these here as well
    override_settings_restore_afterwards: Optional[bool] = None
    do_not_save_samples: Optional[bool] = None
    do_not_save_grid: Optional[bool] = None
    refiner_switch_at: Optional[float] = None
    disable_extra_networks: Optional[bool] = None
    comments: Optional[dict[str, Any]] = None
    force_task_id: Optional[str] = None
    sampler_noise_scheduler_override: Optional[Any] = None


class Img2Img(Common):
    """POST /sdapi/v1/img2img; with `mask` it is inpainting."""
    init_images: list[str] = Field(..., min_length=1, max_length=1, description="one picture, base64")
    mask: Optional[str] = Field(None, description="base64 mask, white = repaint; none: the whole picture")
    resize_mode: int = 0
    denoising_strength: float = Field(0.75, allow_inf_nan=False)
    mask_blur: float = Field(4, ge=0, le=1000, allow_inf_nan=False)
    mask_blur_x: Optional[float] = Field(None, ge=0, le=1000, allow_inf_nan=False, description="equal to mask_blur_y")
    mask_blur_y: Optional[float] = Field(None, ge=0, le=1000, allow_inf_nan=False)
    inpainting_fill: int = Field(0, ge=0, le=3, description="0 fill, 1 original, 2 latent noise, 3 latent nothing")
    inpaint_full_res: bool = Field(True, description="true: only the masked area, at width x height, pasted back")
    inpaint_full_res_padding: int = Field(0, ge=0)
    inpainting_mask_invert: int = Field(0, ge=0, le=1)
    initial_noise_multiplier: Optional[float] = None
    include_init_images: bool = False
    image_cfg_scale: Optional[float] = None  # instruct-pix2pix models only


class Txt2Img(Common):
    """POST /sdapi/v1/txt2img: the whole canvas is repainted."""
    enable_hr: Optional[bool] = None
    denoising_strength: Optional[float] = None  # hires fix's: unused while enable_hr is false
    firstphase_width: Optional[int] = None
    firstphase_height: Optional[int] = None
    hr_scale: Optional[float] = None
    hr_upscaler: Optional[str] = None
    hr_second_pass_steps: Optional[int] = None
    hr_resize_x: Optional[int] = None
    hr_resize_y: Optional[int] = None
    hr_checkpoint_name: Optional[str] = None
    hr_sampler_name: Optional[str] = None
    hr_scheduler: Optional[str] = None
    hr_prompt: Optional[str] = None
    hr_negative_prompt: Optional[str] = None


def sampler_choice(sampler_name: str | None, schedule: str | None) -> tuple[str | None, dict | None]:
    """(our scheduler or None for the checkpoint's own, scheduler_options); ValueError naming the A1111 field."""
    name = (sampler_name or "").strip()
    karras = (schedule or "automatic").strip().lower() == "karras"
    if name.lower().endswith(" karras"):  # A1111's older combined names, e.g. "DPM++ 2M Karras"
        name, karras = name[: -len(" karras")], True
    if (schedule or "automatic").strip().lower() not in SCHEDULES:
        raise InvalidArgument("scheduler", f"scheduler={schedule!r} is not one of {', '.join(SCHEDULES)}",
                              "send one of the names GET /sdapi/v1/schedulers lists")
    if name in ("", "Default", "Automatic"):
        return None, ({"use_karras_sigmas": True} if karras else None)
    by_alias = {alias.lower(): ours for ours, aliases in SAMPLERS.values() for alias in aliases}
    ours = next((s for n, (s, _) in SAMPLERS.items() if n.lower() == name.lower()), by_alias.get(name.lower()))
    if ours is None:
        raise InvalidArgument("sampler_name", f"sampler_name={sampler_name!r} is not one of {', '.join(SAMPLERS)}",
                              "send one of the names GET /sdapi/v1/samplers lists")
    if karras and ours == "dpmpp_2m":
        return "dpmpp_2m_karras", None
    return ours, ({"use_karras_sigmas": True} if karras else None)


def features_asked(params: Common) -> list[tuple[str, Any]]:
    """The (field, value) pairs that ask for something this engine does not do (img2img's ControlNet units are
    mapped by controlnet_units, so they do not count here)."""
    def value(name):
        given = getattr(params, name)
        if name == "alwayson_scripts" and isinstance(params, Img2Img) and given:
            given = {key: v for key, v in given.items() if key.lower() != CONTROLNET} or None
        return given
    return [(name, value(name)) for name, accepted in DEFAULT_ONLY.items()
            if name in type(params).model_fields and value(name) not in accepted]


CONTROLNET = "controlnet"
# a unit's keys the engine has no use for: the extension's preview, memory and resize options (resize_mode:
# the control picture must already be the image's size, which the native check enforces)
UNIT_IGNORED = {"model", "lowvram", "low_vram", "pixel_perfect", "processor_res", "threshold_a", "threshold_b",
                "resize_mode", "save_detected_map", "hr_option"}
CONTROL_MODES = {0: False, 1: True, "balanced": False, "my prompt is more important": True}


def controlnet_units(scripts: dict | None) -> tuple[dict, list]:
    """The ControlNet extension's enabled units as native fields (scales, windows, guess_mode) and control
    image base64 texts (None: the unit has no picture), one per unit in order; ({}, []) without units. The
    engine runs the ControlNets it was exported with, in order: a unit's `model` is not looked at."""
    script = next((v for key, v in (scripts or {}).items() if key.lower() == CONTROLNET), None)  # A1111: any case
    units = script.get("args") if isinstance(script, dict) else script
    if not units:
        return {}, []
    where = "alwayson_scripts.controlnet.args"
    if not isinstance(units, list) or not all(isinstance(unit, dict) for unit in units):
        raise InvalidArgument(where, f"{where} must be a list of ControlNet units (objects)",
                              "send a list of objects with image, weight, guidance_start, guidance_end, control_mode")
    fields, images, modes = {"controlnet_conditioning_scale": [], "control_guidance_start": [],
                             "control_guidance_end": []}, [], set()
    for i, unit in enumerate(units):
        if unit.get("enabled", True) is False:
            continue
        name = f"{where}[{i}]"
        module = unit.get("module") or "none"
        if str(module).lower() != "none":
            raise InvalidArgument(f"{name}.module", f"{name}.module={module!r} asks for a preprocessor, which this "
                                  "engine does not run", "send the preprocessed control picture with module \"none\"")
        unknown = sorted(set(unit) - UNIT_IGNORED - {"enabled", "module", "image", "input_image", "weight", "mask",
                                                    "guidance_start", "guidance_end", "control_mode", "guessmode"})
        if unknown:
            raise InvalidArgument(f"{name}.{unknown[0]}", f"{name}.{unknown[0]} is not a ControlNet unit setting "
                                  "this engine maps", f"leave {unknown[0]} out")
        image = unit.get("image", unit.get("input_image"))
        if isinstance(image, dict):  # the extension's {"image": ..., "mask": ...} form
            image, unit = image.get("image"), {**unit, "mask": image.get("mask")}
        if unit.get("mask"):
            raise InvalidArgument(f"{name}.mask", f"{name}.mask: a ControlNet unit's own mask is not something this "
                                  "engine uses", "leave the unit's mask out (the request's mask is the inpaint mask)")
        if image is not None and not isinstance(image, str):
            raise InvalidArgument(f"{name}.image", f"{name}.image must be base64 text", "send the picture as base64")
        mode = unit.get("control_mode", 1 if unit.get("guessmode") else 0)
        mode = mode.lower() if isinstance(mode, str) else mode
        if not isinstance(mode, (int, str)) or isinstance(mode, bool) or mode not in CONTROL_MODES:
            raise InvalidArgument(f"{name}.control_mode", f"{name}.control_mode={unit.get('control_mode')!r} is not "
                                  "one this engine has (0 Balanced, 1 My prompt is more important = guess mode)",
                                  "send 0 or 1")
        modes.add(CONTROL_MODES[mode])
        images.append(image or None)
        for ours, theirs, default in (("controlnet_conditioning_scale", "weight", 1.0),
                                      ("control_guidance_start", "guidance_start", 0.0),
                                      ("control_guidance_end", "guidance_end", 1.0)):
            fields[ours].append(unit.get(theirs, default))
    if len(modes) > 1:
        raise InvalidArgument(f"{where}.control_mode", "the units' control_mode differ; guess mode is one setting "
                              "for every ControlNet here", "send the same control_mode in every unit")
    if not images:
        return {}, []
    return {**fields, "guess_mode": modes.pop()}, images
