"""IOPaint's request fields and tables (its iopaint/schema.py, read, not imported: IOPaint imports torch), mapped
onto this server's: which of its ~40 inpaint settings reach the engine, which are ignored as IOPaint itself
ignores them, and which ask for something this server does not do (refused, naming the field, unless they hold
IOPaint's default). docs/iopaint.md tells the same in prose.
"""
from __future__ import annotations

import io
import re
from typing import Literal, Optional

from PIL import Image
from pydantic import ConfigDict, Field

from ..engine.families import SD1, SD2, SDXL, family
from .errors import MAX_PROMPT
from .numbers import NumbersOnly

# IOPaint's sampler name (its SDSampler) -> (our scheduler, scheduler_options); IOPaint builds each from the
# checkpoint's scheduler config with use_karras_sigmas popped, so only its "Karras" names turn them on
SAMPLERS: dict[str, tuple[str, dict | None]] = {
    "DPM++ 2M": ("dpmpp_2m", None), "DPM++ 2M Karras": ("dpmpp_2m_karras", None),
    "Euler": ("euler", None), "Euler a": ("euler_a", None), "Heun": ("heun", None), "LMS": ("lms", None),
    "LMS Karras": ("lms", {"use_karras_sigmas": True}), "DDIM": ("ddim", None), "PNDM": ("pndm", None),
    "UniPC": ("unipc", None), "LCM": ("lcm", None),
}
# IOPaint's other samplers, which have no scheduler here: refused by name
UNMAPPED_SAMPLERS = ("DPM++ 2M SDE", "DPM++ 2M SDE Karras", "DPM++ SDE", "DPM++ SDE Karras", "DPM2", "DPM2 Karras",
                     "DPM2 a", "DPM2 a Karras")

# features of IOPaint's diffusion models this server does not have: field -> (IOPaint's default, what it asks for)
DEFAULT_ONLY = {
    "sd_match_histograms": (False, "histogram matching of the repainted area"),
    "sd_lcm_lora": (False, "the LCM LoRA"),
    "use_croper": (False, "the cropper (a chosen rectangle inpainted alone)"),
    "use_extender": (False, "outpainting with the extender"),
    "enable_controlnet": (False, "IOPaint's ControlNet methods"),
    "enable_brushnet": (False, "BrushNet"),
    "enable_powerpaint_v2": (False, "PowerPaint v2"),
    "paint_by_example_example_image": (None, "Paint by Example's example picture"),
}
# our field (Engine.inpaint's, as the native routes name it) -> the IOPaint field that set it
MAPPED = {"prompt": "prompt", "negative_prompt": "negative_prompt", "seed": "sd_seed",
          "num_inference_steps": "sd_steps", "guidance_scale": "sd_guidance_scale", "strength": "sd_strength",
          "scheduler": "sd_sampler", "scheduler_options": "sd_sampler", "blur_factor": "sd_mask_blur",
          "keep_unmasked": "sd_keep_unmasked_area", "image": "image", "mask_image": "mask", "height": "sd_scale",
          "width": "sd_scale", "hd_strategy": "hd_strategy", "hd_strategy_crop_margin": "hd_strategy_crop_margin",
          "hd_strategy_crop_trigger_size": "hd_strategy_crop_trigger_size",
          "hd_strategy_resize_limit": "hd_strategy_resize_limit"}
# of those, the fields computed from the IOPaint field (sd_scale -> height and width, sd_sampler -> the scheduler,
# sd_mask_blur -> blur_factor), so a refusal's `name=value` would not read right under the IOPaint name
COMPUTED = ("height", "width", "scheduler", "scheduler_options", "blur_factor")
PLUGIN = "InteractiveSeg"  # IOPaint's click-to-mask plugin: a Segment Anything engine here


class InpaintRequest(NumbersOnly):
    """POST /api/v1/inpaint: IOPaint's InpaintRequest, its defaults; a field it does not have is refused."""
    model_config = ConfigDict(extra="forbid")
    text_numbers = False  # JSON only: numbers come as numbers

    image: Optional[str] = Field(None, description="data: URL or base64 of the picture")
    mask: Optional[str] = Field(None, description="data: URL or base64 of the mask: pixels whose grey level "
                                "(alpha ignored) is above 127 are repainted, as IOPaint reads it")
    # other IOPaint models' settings (LDM, ZITS, OpenCV): ignored, as IOPaint ignores them for these models
    ldm_steps: int = 20
    ldm_sampler: str = "plms"
    zits_wireframe: bool = True
    cv2_flag: Literal["INPAINT_NS", "INPAINT_TELEA"] = "INPAINT_NS"
    cv2_radius: int = 4
    # eraser engines' big-picture strategy (IOPaint's names and defaults); diffusion engines ignore them, as IOPaint
    hd_strategy: str = "Crop"
    hd_strategy_crop_trigger_size: int = 800
    hd_strategy_crop_margin: int = 128
    hd_strategy_resize_limit: int = 1280
    # IOPaint 1.6's page sends these two misspelt; IOPaint ignores them (no such fields), so does this server
    hd_strategy_crop_triger_size: Optional[int] = None
    hd_trategy_resize_imit: Optional[int] = None
    prompt: str = Field("", max_length=MAX_PROMPT)
    negative_prompt: str = Field("", max_length=MAX_PROMPT)
    use_croper: bool = False
    croper_x: int = 0  # the croper's and extender's rectangles: unused while use_croper / use_extender are false
    croper_y: int = 0
    croper_height: int = 512
    croper_width: int = 512
    use_extender: bool = False
    extender_x: int = 0
    extender_y: int = 0
    extender_height: int = 640
    extender_width: int = 640
    sd_scale: float = Field(1.0, gt=0, le=1, allow_inf_nan=False,
                            description="generate at the picture's size times this, pasted back at full size")
    sd_mask_blur: int = Field(11, ge=0, le=1000, description="IOPaint's blur kernel half-size: blur_factor (a "
                              "standard deviation) 0.3 * (sd_mask_blur - 1) + 0.8, OpenCV's sigma for that kernel")
    sd_strength: float = Field(1.0, le=1, allow_inf_nan=False)
    sd_steps: int = 50
    sd_guidance_scale: float = Field(7.5, allow_inf_nan=False)
    sd_sampler: str = "UniPC"
    sd_seed: int = Field(42, ge=-1, le=2**63 - 1, description="-1: a random seed, answered in X-Seed")
    sd_match_histograms: bool = False
    sd_outpainting_softness: float = Field(20.0, allow_inf_nan=False)  # the extender's: unused without it
    sd_outpainting_space: float = Field(20.0, allow_inf_nan=False)
    sd_lcm_lora: bool = False
    sd_keep_unmasked_area: bool = True
    paint_by_example_example_image: Optional[str] = None
    p2p_image_guidance_scale: float = Field(1.5, allow_inf_nan=False)  # InstructPix2Pix's: no such engine here
    enable_controlnet: bool = False
    controlnet_conditioning_scale: float = Field(0.4, ge=0, le=1, allow_inf_nan=False)
    controlnet_method: str = "lllyasviel/control_v11p_sd15_canny"  # the methods: unused while their switch is off
    enable_brushnet: bool = False
    brushnet_method: str = "Sanster/brushnet_random_mask"
    brushnet_conditioning_scale: float = Field(1.0, ge=0, le=1, allow_inf_nan=False)
    enable_powerpaint_v2: bool = False
    powerpaint_task: Literal["text-guided", "context-aware", "shape-guided", "object-remove", "outpainting"] = \
        "text-guided"
    fitting_degree: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)


def mask_blur_factor(sd_mask_blur: int) -> float:
    """IOPaint blurs the mask with cv2.GaussianBlur(ksize=2b+1, sigma 0): OpenCV's sigma for that kernel, which is
    the standard deviation PIL's GaussianBlur (the engine's blur_factor) takes."""
    return 0.0 if sd_mask_blur == 0 else round(0.3 * (sd_mask_blur - 1) + 0.8, 6)


def model_type(facts: dict) -> str:
    """IOPaint's ModelType for an engine: the eraser's `inpaint`, SD / SDXL inpainting, or `diffusers_other`."""
    record = family(facts["family"])
    if record.eraser:
        return "inpaint"
    return {SD1: "diffusers_sd_inpaint", SD2: "diffusers_sd_inpaint",
            SDXL: "diffusers_sdxl_inpaint"}.get(record.name, "diffusers_other")


def model_info(name: str, facts: dict) -> dict:
    """IOPaint's ModelInfo with its computed fields, each saying what this server does with the engine (not what
    IOPaint's own model of that type would): no ControlNet methods, BrushNet, PowerPaint, LCM LoRA or extender."""
    kind = model_type(facts)
    diffusion = kind != "inpaint"
    return {"name": name, "path": name, "model_type": kind, "is_single_file_diffusers": False,
            "need_prompt": diffusion, "controlnets": [], "brushnets": [], "support_strength": diffusion,
            "support_outpainting": False, "support_lcm_lora": False, "support_controlnet": False,
            "support_brushnet": False, "support_powerpaint_v2": False}


def features_asked(params: InpaintRequest) -> list[tuple[str, object]]:
    """The (field, value) pairs off IOPaint's default that ask a diffusion engine for what it lacks."""
    return [(name, getattr(params, name)) for name, (default, _) in DEFAULT_ONLY.items()
            if getattr(params, name) != default]


PARAMETERS_SETTINGS = re.compile(r"^Steps: ", re.MULTILINE)


def prompts_from_png(data: bytes) -> tuple[str, str]:
    """(prompt, negative_prompt) from a picture's A1111 "parameters" text, as IOPaint's gen-info reads it: the text
    before "Negative prompt: " and the rest of that line; A1111's settings line ("Steps: ...") is not prompt."""
    text = Image.open(io.BytesIO(data)).info.get("parameters", "")
    if not isinstance(text, str):
        return "", ""
    settings = list(PARAMETERS_SETTINGS.finditer(text))
    if settings:  # A1111 writes its settings on the last line; IOPaint keeps it in the prompt without a negative one
        text = text[:settings[-1].start()]
    parts = text.split("Negative prompt: ")
    return parts[0].strip(), parts[1].split("\n")[0].strip() if len(parts) > 1 else ""
