"""Kandinsky 2.2 engines: Engine.load returns a KandinskyEngine when the manifest's family is
kandinsky22. `inpaint` takes KandinskyV22InpaintCombinedPipeline's arguments (prior first, then the
decoder); arguments of the Stable Diffusion families are refused by name."""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

from ..runtime import images as imaging
from ..runtime import kandinsky as kd
from ..runtime.errors import InvalidArgument
from ..runtime.inpaint import Models, Request, decode_latents, denoise
from ..runtime.noise import as_generator
from ..runtime.prompt_syntax import check_syntax, is_plain, parse
from ..runtime.schedulers import make_scheduler
from ..runtime.tokenizer import PromptTokenizer
from ..runtime.xp import to_host
from . import arguments as check
from .argument_specs import INPAINT_DEFAULTS
from .base import EngineBase, first_output, progress_bar
from .outputs import InpaintOutput

SCHEDULERS = ("ddpm", "ddim")  # diffusers' Kandinsky loop never scales the model input: only these fit it
PRIOR_ARGUMENTS = ("prompt", "negative_prompt", "negative_prior_prompt", "prior_guidance_scale",
                   "prior_num_inference_steps", "prior_latents")


@dataclass
class PriorOutput:
    image_embeds: np.ndarray  # (B, D)
    negative_image_embeds: np.ndarray


class KandinskyEngine(EngineBase):
    missing_methods = {
        "encode_prompt": "Kandinsky 2.2 conditions on image embeddings, not text embeddings: use engine.prior(prompt) "
                         "for (image_embeds, negative_image_embeds)",
        "outpaint": "grow the canvas yourself and call inpaint with a mask over the new area",
    }

    def __init__(self, root, manifest: dict, backend: str, sessions: dict):
        super().__init__(root, manifest, backend, sessions)
        self.default_scheduler = "ddpm" if self.scheduler_config.get("_class_name") == "DDPMScheduler" else "ddim"
        self.controlnets = None
        self.embed_dim = self.model["image_embed_dim"]
        self._models = Models(
            encode=None,  # the MoVQ encode is deterministic: the engine calls it and passes image latents
            unet=lambda s, t, c: first_output(self.sessions["unet"].run({"sample": s, "timestep": t, **c})),
            decode=lambda z: first_output(self.sessions["movq_decoder"].run({"latents": z})),
            unet_in_channels=self.model["unet_in_channels"], latent_channels=self.model["latent_channels"],
            vae_scale_factor=self.model["vae_scale_factor"], vae_scaling_factor=1.0,
        )
        self._prior = None
        info = manifest.get("prior")
        if info:
            tokenizer = info["tokenizer"]
            constants = np.load(root / info["constants"])
            self._prior = kd.Prior(
                text_encoder=sessions["prior_text_encoder"].run, transformer=sessions["prior"].run,
                tokenizer=PromptTokenizer(root / tokenizer["file"], tokenizer["max_length"], tokenizer["pad_id"]),
                scheduler_config=info["scheduler"], zero_image_embeds=constants["zero_image_embeds"],
                clip_mean=constants["clip_mean"], clip_std=constants["clip_std"])

    def prior(self, prompt, negative_prompt=None, num_images_per_prompt=1, num_inference_steps=25, guidance_scale=4.0,
              generator=None, latents=None, progress=True) -> PriorOutput:
        """KandinskyV22PriorPipeline: the prompt's CLIP image embedding and the negative one."""
        if self._prior is None:
            fix = ("export with `inpaint-export --model <decoder> --prior kandinsky-community/kandinsky-2-2-prior`, "
                   "or pass image_embeds to inpaint")
            raise InvalidArgument("prompt", f"this engine was exported without a prior; {fix}", fix)
        prompts = check.prompts("" if prompt is None else prompt, "prompt")
        negatives = None if negative_prompt is None else check.negatives(negative_prompt, len(prompts))
        steps = check.from_table("prior_num_inference_steps", num_inference_steps)
        per_prompt = check.from_table("num_images_per_prompt", num_images_per_prompt)
        scale = check.from_table("prior_guidance_scale", guidance_scale)
        if latents is not None:
            latents = np.asarray(latents, dtype=np.float32)
        embeds, negative = self._prior(prompts, negatives, per_prompt, steps, scale, as_generator(generator), latents,
                                       progress_bar(progress, "prior"))
        return PriorOutput(embeds, negative)

    def inpaint(
        self, image, mask_image, prompt=None, negative_prompt=None, negative_prior_prompt=None, image_embeds=None,
        negative_image_embeds=None, prior_guidance_scale=None, prior_num_inference_steps=None, prior_latents=None,
        guidance_scale=4.0, num_inference_steps=100, num_images_per_prompt=1, height=None, width=None,
        generator=None, latents=None, scheduler=None, scheduler_options=None, output_type="pil",
        callback_on_step_end=None, progress=True, max_pixels=imaging.MAX_PIXELS,
        callback_on_step_end_tensor_inputs=("latents",), **others,
    ) -> InpaintOutput:
        """Repaint the white part of `mask_image`, as KandinskyV22InpaintCombinedPipeline does (with its
        defaults: 512x512, prior 25 steps at guidance 4, decoder 100 steps at guidance 4).

        The prior turns `prompt` (and `negative_prompt`, also accepted as `negative_prior_prompt`, the name
        of the prior's own pipeline) into image embeddings; or pass `image_embeds` and
        `negative_image_embeds` (B, D) yourself, as to KandinskyV22InpaintPipeline. `prior_latents` is
        the combined pipeline's `latents` (the prior's initial noise); `latents` here is the decoder's.
        height and width must be multiples of the manifest's size_multiple (64 for the real models)."""
        _plain_prompts(others.pop("prompt_syntax", "plain"), prompt, negative_prompt, negative_prior_prompt)
        _refuse(others, self.family)
        given = {name: value for name, value in dict(
            prompt=prompt, negative_prompt=negative_prompt, negative_prior_prompt=negative_prior_prompt,
            prior_guidance_scale=prior_guidance_scale, prior_num_inference_steps=prior_num_inference_steps,
            prior_latents=prior_latents).items() if value is not None}
        if negative_prompt is not None and negative_prior_prompt is not None:
            raise InvalidArgument("negative_prior_prompt", "negative_prompt and negative_prior_prompt name the same "
                                  "thing (the prior's negative prompt); pass one of them", "pass one of them")
        steps = check.from_table("num_inference_steps", num_inference_steps)
        per_prompt = check.from_table("num_images_per_prompt", num_images_per_prompt)
        callback = self._step_callback(callback_on_step_end, callback_on_step_end_tensor_inputs)
        scale = check.from_table("guidance_scale", guidance_scale)
        check.from_table("output_type", output_type)
        height, width = self._kandinsky_size(height, width)
        name = scheduler or self.default_scheduler
        if name not in SCHEDULERS:
            fix = f"choose one of {', '.join(SCHEDULERS)}"
            raise InvalidArgument("scheduler", f"scheduler={name!r} does not fit Kandinsky 2.2's loop (it never "
                                  f"scales the model input); {fix}", fix)
        config = self.scheduler_config if name == "ddpm" else {k: v for k, v in self.scheduler_config.items()
                                                                if k != "variance_type"}
        sched = make_scheduler(name, config, scheduler_options)
        picture = imaging.load_picture(image, "image", max_pixels)
        mask = imaging.load_picture(mask_image, "mask_image", max_pixels)
        check.same_size(imaging.picture_size(picture), imaging.picture_size(mask))
        gen = as_generator(generator)

        if image_embeds is None:  # the prior first: its draws come before the decoder's
            if self._prior is None:
                fix = ("pass image_embeds and negative_image_embeds (e.g. from another engine's prior), or export "
                       "with --prior kandinsky-community/kandinsky-2-2-prior")
                raise InvalidArgument(next(iter(given), "prompt"), f"this engine was exported without a prior, so "
                                      f"{', '.join(given) or 'a prompt'} cannot be used; {fix}", fix)
            if negative_image_embeds is not None:
                raise InvalidArgument("negative_image_embeds", "negative_image_embeds was given without image_embeds; "
                                      "pass both, or neither (the prior then makes them from prompt)",
                                      "pass image_embeds too, or neither")
            out = self.prior(prompt, negative_prompt if negative_prompt is not None else negative_prior_prompt,
                             per_prompt, 25 if prior_num_inference_steps is None else prior_num_inference_steps,
                             4.0 if prior_guidance_scale is None else prior_guidance_scale, gen, prior_latents, progress)
            embeds, negative, per_prompt = out.image_embeds, out.negative_image_embeds, 1
        else:
            if given:
                fix = "leave them out, or pass prompt instead of image_embeds"
                raise InvalidArgument(next(iter(given)), f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} "
                                      f"for the prior, which image_embeds replaces; {fix}", fix)
            embeds = self._embeds(image_embeds, "image_embeds")
            negative = None
            if scale > 1:
                if negative_image_embeds is None:
                    raise InvalidArgument("negative_image_embeds", "guidance_scale > 1 needs negative_image_embeds "
                                          "with image_embeds (engine.prior returns both); pass it, or set "
                                          "guidance_scale=1", "pass negative_image_embeds, or set guidance_scale=1")
                negative = self._embeds(negative_image_embeds, "negative_image_embeds", len(embeds))
        embeds = np.repeat(embeds, per_prompt, axis=0)
        batch = len(embeds)
        conditioning = {"image_embeds": embeds}
        if scale > 1:
            conditioning = {"image_embeds": np.concatenate([np.repeat(negative, per_prompt, axis=0), embeds])}
        factor = self.model["vae_scale_factor"]
        if latents is not None:
            latents = check.latents(latents, "latents", (batch, self.model["latent_channels"], height // factor,
                                                         width // factor))
        pixels = kd.preprocess_image(picture, height, width)
        repaint = imaging.preprocess_mask(mask, height, width)
        image_latents = to_host(first_output(self.sessions["movq_encoder"].run({"image": pixels}))).astype(np.float32)
        request = Request(
            image=pixels, mask=repaint, conditioning=conditioning, batch=batch, guidance_scale=scale,
            num_inference_steps=steps, strength=1.0, latents=latents, callback=callback,
            image_latents=image_latents, latent_masking=kd.latent_masking(repaint, image_latents))
        final = denoise(self._models, sched, request, gen, progress_bar(progress, "denoising"), self.xp)
        if output_type == "latent":
            return InpaintOutput(to_host(final))
        images = imaging.postprocess(to_host(decode_latents(self._models, final)))
        return InpaintOutput(imaging.to_pil(images) if output_type == "pil" else images)

    def _kandinsky_size(self, height, width) -> tuple[int, int]:
        multiple = self.model.get("size_multiple", 64)
        height = self.model["default_height"] if height is None else height
        width = self.model["default_width"] if width is None else width
        factor = self.model["vae_scale_factor"]
        why = (f" for this Kandinsky 2.2 engine: diffusers makes latents of ceil(size / {multiple}) x {factor} while "
               f"the MoVQ encodes the image to a size / {factor}, and the two agree only there")
        return check.check_size(height, width, multiple, why)

    def _embeds(self, value, name: str, batch: int | None = None) -> np.ndarray:
        value = np.asarray(value) if hasattr(value, "__array__") else value
        if isinstance(value, np.ndarray) and value.ndim == 1:
            value = value[None]
        want = f"({batch if batch else 'batch'}, {self.embed_dim})"
        if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.floating) or value.ndim != 2:
            got = f"shape {value.shape} of dtype {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__
            raise InvalidArgument(name, f"{name} must be a float array of shape {want} (CLIP image embeddings), got "
                                  f"{got}", f"pass {name} as float32 of shape {want}")
        if value.shape[1] != self.embed_dim:
            fix = "pass embeddings of the prior that belongs to this decoder"
            raise InvalidArgument(name, f"{name} has shape {value.shape}, but this engine's decoder reads "
                                  f"{self.embed_dim}-wide image embeddings {want}; {fix}", fix)
        if batch is not None and len(value) not in (1, batch):
            raise InvalidArgument(name, f"{name} has {len(value)} rows but image_embeds has {batch}; give 1 or {batch}",
                                  f"give 1 or {batch} rows")
        check.finite(value, name)
        value = value.astype(np.float32)
        return np.repeat(value, batch, axis=0) if batch and len(value) == 1 else value


def _parameters(function) -> set[str]:
    return {name for name, p in inspect.signature(function).parameters.items() if p.kind != p.VAR_KEYWORD}


def _refuse(others: dict, family: str) -> None:
    """Stable Diffusion arguments by name (ValueError), unknown ones as Python would (TypeError)."""
    if not others:
        return
    unknown = sorted(name for name in others if name not in INPAINT_DEFAULTS)
    if unknown:
        raise TypeError(f"inpaint() got an unexpected keyword argument {unknown[0]!r}")
    # at their defaults (as the inpaint CLI passes them) they change nothing: refused only when they would
    known = sorted(name for name, value in others.items() if not _is_default(value, INPAINT_DEFAULTS[name]))
    if known:
        kind = "is an argument" if len(known) == 1 else "are arguments"
        raise InvalidArgument(known[0], f"{', '.join(known)} {kind} of the Stable Diffusion engines; this engine is "
                              f"{family} (KandinskyV22InpaintCombinedPipeline's arguments): leave them out",
                              "leave them out")


def _plain_prompts(syntax, *prompts) -> None:
    """The prior reads prompts as plain text, as diffusers does: with prompt_syntax='a1111', prompts using
    that syntax are refused rather than read differently from what was asked."""
    if check_syntax(syntax) == "plain":
        return
    for value in prompts:
        for text in [value] if isinstance(value, str) else value if isinstance(value, (list, tuple)) else []:
            if isinstance(text, str) and not is_plain(parse(text), text):
                fix = "pass prompt_syntax='plain' to read it as plain text, or remove the syntax"
                raise InvalidArgument("prompt", f"prompt {text[:40]!r} uses A1111 prompt syntax (weights, BREAK), "
                                      f"which Kandinsky 2.2's prior does not read; {fix}", fix)


def _is_default(value, default) -> bool:
    try:
        return value is default or bool(value == default)
    except (ValueError, TypeError):  # arrays
        return False


def kandinsky_only_arguments() -> set[str]:
    """What a Stable Diffusion engine refuses by name."""
    return _parameters(KandinskyEngine.inpaint) - set(INPAINT_DEFAULTS) - {"self", "image", "mask_image"}
