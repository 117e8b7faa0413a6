"""One table of the engines' call arguments, a row each: name, kind, range, default, help, which
families take it, whether it keeps a request out of a shared batch, why outpaint refuses it, and its
command-line flag. Written once, read by every surface.

The engines check their arguments against it (engine/arguments.py, engine/preflight.py), the `inpaint`
command line makes its flags and groups from it (cli.py), the server its request fields
(serve/inputs.py) and its batching rule (engine/preflight.py `batchable`), outpaint its refusals, so a
limit such as mask_grow's 4096 has one home. `Engine.inpaint` keeps diffusers' flat keyword signature; a
test checks that its arguments and defaults are the rows written here.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..runtime.images import MAX_PIXELS

OUTPUT_TYPES = ("pil", "np", "latent")
MASK_MODES = ("binary", "soft")
MASKED_CONTENTS = ("original", "fill", "latent_noise", "latent_nothing", "eraser")
PROMPT_SYNTAXES = ("a1111", "plain")
FILLS = ("edge", "mirror", "noise")
HD_STRATEGIES = ("crop", "resize", "original")  # IOPaint's names for where an eraser runs on a big picture
SIDES = ("left", "right", "top", "bottom")


@dataclass(frozen=True)
class Spec:
    name: str
    kind: str = "other"  # whole | real | choice | flag | other (checked where it is used)
    default: object = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is refused (strength > 0)
    high_open: bool = False
    choices: tuple = ()
    unit: str = ""  # the thing counted, e.g. "pixels", in messages
    meaning: str = ""  # what the value does, appended to messages, e.g. "0 = unchanged"
    help: str = ""  # the CLI's and the server's description
    serve_low: float | None = None  # tighter bounds for a public server's requests
    serve_high: float | None = None
    flag: str = ""  # the `inpaint` command line's flag when it is not --name-with-dashes
    cli: str = ""  # how `inpaint` takes it: "" no flag, "flag" typed by kind, "real" one number, "reals" one per
    # ControlNet (repeated), "pictures" files (repeated), "image_prompts" FILE[:WEIGHT] (repeated)
    group: str = ""  # the command line's help group ("" = the main one)
    per_family: bool = False  # left out, the engine's family default applies (engine/families.py)
    needs: str = ""  # the engine family's attribute that must be set for it (engine/families.py), e.g. "prior"
    alone: bool = False  # a request with it runs in a loop of its own: cross-request batching cannot share it
    not_outpaint: str = ""  # why Engine.outpaint refuses it ("": outpaint passes it to each inpaint pass)
    metavar: str = ""  # the command line's placeholder, where not N
    serve: str = ""  # the server's request field: "both" (inpaint and outpaint), "inpaint", "outpaint"; "": none
    multiple_of: int | None = None  # the server's fields take multiples of it
    serve_note: str = ""  # appended to the help in the server's schema
    erasers: bool = False  # eraser engines (LaMa, MI-GAN) take it too; rows with needs="eraser" only they take

    def range_text(self) -> str:
        return range_text(self.low, self.high, self.low_open, self.high_open)

    def served(self) -> "Spec":
        """This spec with the bounds a public server narrows it to."""
        return replace(self, low=self.low if self.serve_low is None else self.serve_low,
                       high=self.high if self.serve_high is None else self.serve_high)

    def wanted(self) -> str:
        """What a valid value is, in words: "a whole number of pixels from 0 to 4096", "one of binary, soft"."""
        if self.kind == "choice":
            return f"one of {', '.join(self.choices)}"
        if self.kind == "flag":
            return "true or false"
        bounds = self.range_text()
        noun = "a whole number" if self.kind == "whole" else "a number" if bounds else "a finite number"
        return " ".join(part for part in (noun, f"of {self.unit}" if self.unit else "", bounds) if part)


def range_text(low=None, high=None, low_open=False, high_open=False) -> str:
    """The allowed values in words: "from 0 to 4096", ">= 1", "in (0, 1]" ("" without bounds)."""
    if low is not None and high is not None:
        if low_open or high_open:
            return f"in {'(' if low_open else '['}{_num(low)}, {_num(high)}{')' if high_open else ']'}"
        return f"from {_num(low)} to {_num(high)}"
    if low is not None:
        return f"{'>' if low_open else '>='} {_num(low)}"
    return f"{'<' if high_open else '<='} {_num(high)}" if high is not None else ""


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _whole(name, default, low, high=None, unit="", meaning="", help="", **more) -> Spec:
    return Spec(name, "whole", default, low, high, unit=unit, meaning=meaning, help=help, **more)


def _real(name, default, low=None, high=None, meaning="", help="", **more) -> Spec:
    return Spec(name, "real", default, low, high, meaning=meaning, help=help, **more)


def _choice(name, default, choices, help="", **more) -> Spec:
    return Spec(name, "choice", default, choices=tuple(choices), help=help, **more)


def _flag(name, help="", **more) -> Spec:
    return Spec(name, "flag", False, help=help, **more)


def _other(name, default=None, help="", **more) -> Spec:
    return Spec(name, "other", default, help=help, **more)


MASKS, OUTPAINTING, SDXL = "masks (beyond diffusers)", "outpainting", "SDXL"
CONTROLNET = "ControlNet (engines exported with --controlnet)"
KANDINSKY22 = "Kandinsky 2.2 image prompts (engines exported with --prior)"
SIZE_CONDITIONING = dict(needs="micro_conditioning")


# Engine.inpaint's keyword arguments after image and mask_image, in its order
INPAINT = [
    _other("prompt", help="What to paint into the masked area.", cli="flag"),
    _other("negative_prompt", help="What to steer away from.", cli="flag"),
    _whole("num_inference_steps", 50, 1, serve_high=1000, flag="--steps", cli="flag", per_family=True,
           serve_note=" The server's max_steps caps it; its max_megapixel_steps bounds steps x pixels.",
           help="Denoising steps; default: the model family's (50; Kandinsky 100).", serve="both"),
    _real("guidance_scale", 7.5, meaning="<= 1 turns guidance off", serve_low=0, serve_high=50, flag="--guidance",
          cli="flag", per_family=True,
          help="Classifier-free guidance; <= 1 turns it off. Default: the family's (7.5; Kandinsky 4).", serve="both"),
    _real("strength", None, 0, 1, meaning="1 repaints fully, smaller keeps more of the image", low_open=True,
          cli="flag", help="1 repaints the masked area fully; smaller keeps more of the picture. Default: "
                           "diffusers' for the family (1.0; SDXL 0.9999).", serve="both"),
    _other("scheduler", help="Sampler; default: the checkpoint's own."),
    _other("scheduler_options", help="Scheduler settings to override, e.g. {\"use_karras_sigmas\": true}."),
    _other("generator"), _other("latents", not_outpaint="each pass draws its own noise"),
    _whole("height", None, 8, cli="flag", help="Output height, a multiple of 8; default: the model's.", serve="both", multiple_of=8),
    _whole("width", None, 8, cli="flag", help="Output width, a multiple of 8; default: the model's.", serve="both", multiple_of=8),
    _whole("num_images_per_prompt", 1, 1, flag="--num-images", cli="flag", help="Images per prompt.",
           not_outpaint="outpaint makes one picture per call; call it again with another seed"),
    _whole("padding_mask_crop", None, 0, unit="pixels", cli="flag", not_outpaint="each pass is already a crop",
           help="Inpaint only the mask's box padded by N pixels.", serve="inpaint"),
    _real("blur_factor", 0, 0, 10000, unit="pixels", high_open=True, meaning="0 = no blur", flag="--blur", cli="flag",
          not_outpaint="the overlap band is already feathered", help="Blur radius of the mask edge (pixels).", serve="inpaint"),
    _flag("keep_unmasked", "Paste the result over the input: unmasked pixels stay as sent.", cli="flag",
          not_outpaint="outpaint always keeps the existing pixels outside the overlap band", serve="inpaint"),
    _flag("keep_input_size", "Output at the input's size (rounded down to multiples of 8).", cli="flag",
          not_outpaint="the output is the grown canvas", serve="inpaint"),
    _other("prompt_embeds"), _other("negative_prompt_embeds"),
    _choice("output_type", "pil", OUTPUT_TYPES, erasers=True),
    _other("callback_on_step_end"), _other("progress", True, erasers=True), _other("max_pixels", MAX_PIXELS, erasers=True),
    _other("callback_on_step_end_tensor_inputs", ("latents",)),
    # SDXL (StableDiffusionXLInpaintPipeline's arguments)
    _other("prompt_2", help="Prompt for the second text encoder (default: prompt).", cli="flag", group=SDXL),
    _other("negative_prompt_2", help="Negative prompt for the second text encoder.", cli="flag", group=SDXL),
    _other("pooled_prompt_embeds"), _other("negative_pooled_prompt_embeds"),
    Spec("denoising_start", "real", None, 0, 1, True, True, meaning="the fraction of the schedule already done",
         help="Fraction of the schedule already done (refiner hand-off).", cli="flag", group=SDXL),
    Spec("denoising_end", "real", None, 0, 1, True, True, meaning="the fraction of the schedule to stop after",
         help="Stop after this fraction of the schedule.", cli="flag", group=SDXL),
    *[_other(name, **SIZE_CONDITIONING) for name in (
        "original_size", "target_size", "crops_coords_top_left", "negative_original_size", "negative_target_size",
        "negative_crops_coords_top_left")],
    _real("aesthetic_score", None, help="Refiner-style checkpoints (default 6.0).", cli="flag", group=SDXL,
          **SIZE_CONDITIONING),
    _real("negative_aesthetic_score", None, help="Refiner-style checkpoints (default 2.5).", cli="flag", group=SDXL,
          **SIZE_CONDITIONING),
    # beyond diffusers
    _choice("mask_mode", "binary", MASK_MODES,
            "binary: the mask is cut at 0.5 (diffusers); soft: grey levels say for how many steps a pixel may change "
            "(differential diffusion; white = fully, black = kept).", cli="flag", group=MASKS, alone=True, serve="both"),
    _choice("masked_content", "original", MASKED_CONTENTS,
            "What the masked area starts from when strength < 1: the picture (diffusers), colours filled in from "
            "around it, pure noise, nothing, or the fill of the eraser loaded beside the engine (--eraser).", cli="flag", group=MASKS, serve="both"),
    _whole("mask_grow", 0, 0, 4096, unit="pixels", meaning="0 = unchanged", cli="flag", group=MASKS,
           not_outpaint="use overlap", help="Grow the mask (its white part) by this many pixels before use.", serve="inpaint",
           erasers=True),
    _whole("mask_shrink", 0, 0, 4096, unit="pixels", meaning="0 = unchanged", cli="flag", group=MASKS,
           not_outpaint="use overlap", help="Shrink the mask (its white part) by this many pixels before use.", serve="inpaint",
           erasers=True),
    _flag("mask_invert", "Repaint the black part of the mask instead of the white.", cli="flag", group=MASKS,
          not_outpaint="the new area is what is painted", serve="inpaint", erasers=True),
    _choice("prompt_syntax", "a1111", PROMPT_SYNTAXES,
            "a1111 (the default): (word:1.3), (word), [word], BREAK and prompts past 75 tokens; plain: diffusers' "
            "reading, truncated at 77 tokens. Kandinsky reads prompts as plain text.", cli="flag", per_family=True, serve="both"),
    _flag("color_match", "Before the paste-back (keep_unmasked or padding_mask_crop), shift the repainted colours so "
          "their mean and spread match the original's on a band just outside the mask: no colour seam.", cli="flag",
          not_outpaint="each pass pastes through its feathered overlap already", serve="inpaint"),
    # ControlNet (StableDiffusionControlNetInpaintPipeline's arguments)
    # kind "other": each may also be a list, one per ControlNet (engine/control.py checks them); the bounds are
    # the server's request fields' (the scale's 2: where A1111's ControlNet weight slider ends). Pictures of
    # their own and per-ControlNet state keep a request out of a shared batch.
    _other("control_image", cli="pictures", group=CONTROLNET, alone=True, metavar="FILE|none",
           help="Control picture, one per ControlNet in export order ('none': an inpaint ControlNet builds it from "
                "the image and mask, a plain one stays off); default: none for all."),
    Spec("controlnet_conditioning_scale", serve_low=0, serve_high=2, flag="--controlnet-scale", cli="reals",
         group=CONTROLNET, alone=True, metavar="SCALE",
         help="ControlNet: how strongly it steers, one or one per ControlNet; default: the family's (0.5; SDXL 1.0)."),
    Spec("control_guidance_start", default=0.0, serve_low=0, serve_high=1, flag="--control-start", cli="real",
         group=CONTROLNET, alone=True,
         help="ControlNet: the fraction of the steps after which it starts steering."),
    Spec("control_guidance_end", default=1.0, serve_low=0, serve_high=1, flag="--control-end", cli="real",
         group=CONTROLNET, alone=True,
         help="ControlNet: the fraction of the steps after which it stops steering."),
    Spec("guess_mode", default=False, cli="flag", group=CONTROLNET, alone=True, kind="flag",
         help="ControlNet: it reads the control image's content without relying on the prompt "
              "(diffusers' guess mode)."),
]

# Engine.outpaint's own arguments (the rest go to each inpaint pass)
OUTPAINT = [
    *[_whole(side, 0, 0, unit="pixels", meaning="to add on that side; to cut the picture, crop it before",
             help=f"Pixels to add on the {side}.", serve="outpaint") for side in SIDES],
    _whole("overlap", 32, 0, 1024, unit="pixels", cli="flag", group=OUTPAINTING,
           meaning="how far the repaint reaches into the existing picture; 0 = a hard seam",
           help="How far (pixels) the repaint reaches into the existing picture, feathered; 0 = a hard seam.", serve="outpaint"),
    _choice("fill", "edge", FILLS, "Pre-fill of the new area: edge (the border stretched and blurred), mirror, noise.",
            cli="flag", group=OUTPAINTING, serve="outpaint"),
]

# KandinskyEngine.inpaint's arguments that the Stable Diffusion engines do not have
PRIOR = dict(needs="prior")
KANDINSKY = [
    _other("negative_prior_prompt", help="Kandinsky 2.2: the prior's negative prompt.", **PRIOR, serve="inpaint"),
    _other("image_embeds", **PRIOR), _other("negative_image_embeds", **PRIOR),
    _real("prior_guidance_scale", None, meaning="<= 1 turns guidance off", serve_low=0, serve_high=50,
          help="Kandinsky 2.2: the prior's guidance (default 4).", **PRIOR, serve="inpaint"),
    _whole("prior_num_inference_steps", None, 2, serve_high=1000, help="Kandinsky 2.2: the prior's steps (default 25).",
           **PRIOR, serve="inpaint"),
    _other("prior_latents", **PRIOR),
    Spec("image_prompts", flag="--image-prompt", cli="image_prompts", group=KANDINSKY22, alone=True,
         metavar="FILE[:WEIGHT]", help="Kandinsky 2.2: pictures mixed into the prompt's image embedding, as "
         "(picture, weight) pairs (the prior's interpolate); on the command line FILE[:WEIGHT], weight 1 by default.",
         **PRIOR),
    _real("prompt_weight", 1.0, help="Kandinsky 2.2 with image prompts: the prompt's weight in the mix.", cli="flag",
          group=KANDINSKY22, alone=True, **PRIOR),
]

# EraserEngine.inpaint's own arguments (IOPaint's names and defaults); it also takes the rows marked `erasers`
ERASING = "erasers (LaMa, MI-GAN engines)"
# the server's inpaint requests carry them for every engine; a diffusion engine refuses them off their defaults
ERASER = dict(needs="eraser", cli="flag", group=ERASING, serve="inpaint",
              serve_note=" Eraser engines only (GET /v1/info `models[].kind` \"eraser\"): a diffusion engine "
                         "refuses any value but the default.")
ERASE = [
    _choice("hd_strategy", "crop", HD_STRATEGIES, "Big pictures: crop runs each masked region with a margin around "
            "it (pictures longer than the trigger size), resize scales the picture down to the limit and back, "
            "original runs the whole picture.", **ERASER),
    _whole("hd_strategy_crop_margin", 128, 0, 4096, unit="pixels", help="crop: context around each masked region.",
           **ERASER),
    _whole("hd_strategy_crop_trigger_size", 800, 8, unit="pixels",
           help="crop: only pictures whose longer side is above this are cut into regions.", **ERASER),
    _whole("hd_strategy_resize_limit", 1280, 8, unit="pixels",
           help="resize: the longer side the eraser runs at, for pictures longer than this.", **ERASER),
]

SPECS: dict[str, Spec] = {spec.name: spec for spec in INPAINT + OUTPAINT + KANDINSKY + ERASE}

# the mask makers' `segment` arguments after image (engine/segmenter.py); needs: the family's prompt kind
SEGMENTING = "mask makers (Segment Anything, CLIPSeg engines)"
CLICKS, PHRASES = dict(needs="clicks", group=SEGMENTING), dict(needs="phrases", group=SEGMENTING)
MAX_POINTS = 64  # clicks per call: SAM was trained with a few; the decoder's cost grows with each
SEGMENT = [
    _other("points", help="Segment Anything: clicks as [x, y] pixels of the picture (origin top left).", **CLICKS),
    _other("labels", help="Segment Anything: one per point, 1 adds the object under it, 0 takes it away; "
                          "default all 1.", **CLICKS),
    _other("box", help="Segment Anything: [x0, y0, x1, y1] in pixels around the object.", **CLICKS),
    _flag("multimask_output", "Segment Anything: three candidate masks instead of one (an ambiguous click).",
          **CLICKS),
    _other("mask_input", help="Segment Anything: the low-resolution logits of an earlier call on the same picture, "
                              "to refine (its low_res_logits[i]).", **CLICKS),
    _other("text", help="CLIPSeg: what to mask, in words (\"the sky\").", **PHRASES),
    _real("threshold", 0.5, 0, 1, low_open=True, high_open=True, meaning="of the mask's probability",
          help="CLIPSeg: a pixel is in the mask where its probability (sigmoid of the logit) is above this.",
          **PHRASES),
    _other("max_pixels", MAX_PIXELS),
]
SEGMENT_SPECS: dict[str, Spec] = {spec.name: spec for spec in SEGMENT}
INPAINT_DEFAULTS = {spec.name: spec.default for spec in INPAINT}
ALONE = tuple(name for name, spec in SPECS.items() if spec.alone)
PER_FAMILY = tuple(name for name, spec in SPECS.items() if spec.per_family)


ERASER_ARGUMENTS = tuple(spec.name for spec in INPAINT if spec.erasers) + tuple(spec.name for spec in ERASE)


def needing(attribute: str) -> tuple[str, ...]:
    """The arguments only engines whose family has `attribute` take (engine/families.py)."""
    return tuple(name for name, spec in SPECS.items() if spec.needs == attribute)
