"""Kandinsky 2.2 engines: Engine.load returns a KandinskyEngine when the manifest's family is
kandinsky22. `inpaint` takes KandinskyV22InpaintCombinedPipeline's arguments (prior first, then the
decoder); arguments of the Stable Diffusion families are refused by name."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..runtime import images as imaging
from ..runtime import kandinsky as kd
from ..runtime.errors import InvalidArgument
from ..runtime.inpaint import LoopModels, Request, decode_latents, denoise
from ..runtime.noise import as_generator
from ..runtime.prompt_syntax import check_syntax, is_plain, parse
from ..runtime.schedulers import make_scheduler
from ..runtime.tokenizer import PromptTokenizer
from ..runtime.xp import to_host
from . import arguments as check
from .argument_specs import INPAINT_DEFAULTS
from .base import EngineBase, first_output, progress_bar
from .outputs import InpaintOutput
from .safety import clip_input

SCHEDULERS = ("ddpm", "ddim")  # diffusers' Kandinsky loop never scales the model input: only these fit it


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

    def __init__(self, root, manifest: dict, opened):
        super().__init__(root, manifest, opened)
        sessions = self.sessions
        self.default_scheduler = "ddpm" if self.scheduler_config.get("_class_name") == "DDPMScheduler" else "ddim"
        self.embed_dim = self.model["image_embed_dim"]
        self._models = LoopModels(
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
        encoder = (info or {}).get("image_encoder")
        # pictures as prompts need the prior's image encoder, which older exports lack
        self.image_prompts = bool(self._prior is not None and encoder)
        self._image_encoder = (sessions[encoder["component"]].run, encoder["preprocessing"]) if self.image_prompts \
            else None

    def _need_prior(self, field: str) -> None:
        if self._prior is None:
            fix = ("export with `inpaint-export --model <decoder> --prior kandinsky-community/kandinsky-2-2-prior`, "
                   "or pass image_embeds to inpaint")
            raise InvalidArgument(field, f"this engine was exported without a prior; {fix}", fix)

    def prior(self, prompt, negative_prompt=None, num_images_per_prompt=1, num_inference_steps=25, guidance_scale=4.0,
              generator=None, latents=None, progress=True) -> PriorOutput:
        """KandinskyV22PriorPipeline: the prompt's CLIP image embedding and the negative one."""
        self._need_prior("prompt")
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

    def interpolate(self, images_and_prompts, weights, num_images_per_prompt=1, num_inference_steps=25,
                    generator=None, latents=None, negative_prior_prompt=None, negative_prompt="", guidance_scale=4.0,
                    progress=True, max_pixels=imaging.MAX_PIXELS) -> PriorOutput:
        """KandinskyV22PriorPipeline.interpolate: the weighted sum of each item's image embedding. A `str` item
        is a prompt (the prior runs on it, drawing from `generator`, in order); anything else is a picture
        (PIL image, numpy array, pathlib.Path or bytes) encoded by the prior's CLIP image encoder. The
        negative embedding is the prior's on `negative_prompt` (its negative output when that is "", i.e. the
        black picture's embedding unless negative_prior_prompt is given)."""
        self._need_prior("images_and_prompts")
        items = _conditions(images_and_prompts)
        if not isinstance(weights, (list, tuple)) or len(weights) != len(items):
            count = len(weights) if isinstance(weights, (list, tuple)) else type(weights).__name__
            fix = f"pass a list of {len(items)} numbers, one per item of images_and_prompts"
            raise InvalidArgument("weights", f"weights ({count}) must be a list with one number per item of "
                                  f"images_and_prompts ({len(items)}); {fix}", fix)
        weights = [_weight(w, "weights", f"weights[{i}]") for i, w in enumerate(weights)]
        pictures = {i: item for i, item in enumerate(items) if not isinstance(item, str)}
        if pictures and not self.image_prompts:
            fix = "re-export the engine with this inpaintrt (`inpaint-export --model <decoder> --prior <prior>`)"
            raise InvalidArgument("images_and_prompts", "this engine was exported without the prior's image "
                                  f"encoder, so it cannot read pictures as prompts; {fix}", fix)
        # every picture read and encoded before the prior runs: a bad one costs no steps (no draws either way)
        encoded = dict(zip(pictures, self.encode_images(list(pictures.values()), "images_and_prompts", max_pixels)))
        per_prompt = check.from_table("num_images_per_prompt", num_images_per_prompt)
        if not isinstance(negative_prompt, str):
            raise InvalidArgument("negative_prompt", f"negative_prompt must be a string, got "
                                  f"{type(negative_prompt).__name__}", 'pass a string ("" for none)')
        run = dict(negative_prompt=negative_prior_prompt, num_images_per_prompt=per_prompt,
                   num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                   generator=as_generator(generator), latents=latents, progress=progress)
        total = None
        for i, (item, weight) in enumerate(zip(items, weights)):
            if i in encoded:
                embeds = np.repeat(encoded[i][None], per_prompt, axis=0)
            else:
                embeds = self.prior(item, **run).image_embeds
            weighted = embeds * np.float32(weight)
            total = weighted if total is None else total + weighted
        zero = self.prior(negative_prompt, **run)  # diffusers runs it even for "" (its draws count)
        return PriorOutput(total.astype(np.float32),
                           zero.negative_image_embeds if negative_prompt == "" else zero.image_embeds)

    def encode_images(self, pictures, field: str = "image_prompts", max_pixels=imaging.MAX_PIXELS) -> np.ndarray:
        """(N, D) CLIP image embeddings of the pictures, through the prior's CLIPImageProcessor and image encoder."""
        if not pictures:
            return np.zeros((0, self.embed_dim), np.float32)
        run, preprocessing = self._image_encoder
        pixels = np.stack([clip_input(_to_pil(p, field, max_pixels), preprocessing) for p in pictures])
        return to_host(first_output(run({"pixel_values": pixels}))).astype(np.float32)

    def inpaint(
        self, image, mask_image=None, prompt=None, negative_prompt=None, negative_prior_prompt=None, image_embeds=None,
        negative_image_embeds=None, prior_guidance_scale=None, prior_num_inference_steps=None, prior_latents=None,
        guidance_scale=4.0, num_inference_steps=100, num_images_per_prompt=1, height=None, width=None,
        generator=None, latents=None, scheduler=None, scheduler_options=None, output_type="pil",
        callback_on_step_end=None, progress=True, max_pixels=imaging.MAX_PIXELS,
        callback_on_step_end_tensor_inputs=("latents",), image_prompts=None, prompt_weight=1.0, **others,
    ) -> InpaintOutput:
        """Repaint the white part of `mask_image`, as KandinskyV22InpaintCombinedPipeline does (with its
        defaults: 512x512, prior 25 steps at guidance 4, decoder 100 steps at guidance 4).

        The prior turns `prompt` (and `negative_prompt`, also accepted as `negative_prior_prompt`, the name
        of the prior's own pipeline) into image embeddings; or pass `image_embeds` and
        `negative_image_embeds` (B, D) yourself, as to KandinskyV22InpaintPipeline. `prior_latents` is
        the combined pipeline's `latents` (the prior's initial noise); `latents` here is the decoder's.
        height and width must be multiples of the manifest's size_multiple (64 for the real models).

        `image_prompts`, [(picture, weight), ...], mixes pictures into the embedding: the prior's
        `interpolate([prompt, *pictures], [prompt_weight, *weights], negative_prompt=negative_prompt or "")`
        (the prompt left out when empty), run with the prior's steps, guidance, generator and prior_latents."""
        _plain_prompts(others.pop("prompt_syntax", "plain"), prompt, negative_prompt, negative_prior_prompt)
        _refuse(check.refuse_needing(others, self.record), self.family)
        given = {name: value for name, value in dict(
            image_prompts=image_prompts, prompt=prompt, negative_prompt=negative_prompt,
            negative_prior_prompt=negative_prior_prompt,
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
        picture, mask = imaging.load_pair(image, mask_image, max_pixels)  # no mask_image: the picture's alpha
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
            negative = negative_prompt if negative_prompt is not None else negative_prior_prompt
            prior_steps = 25 if prior_num_inference_steps is None else prior_num_inference_steps
            prior_scale = 4.0 if prior_guidance_scale is None else prior_guidance_scale
            if image_prompts is None:
                _default_prompt_weight(prompt_weight)
                out = self.prior(prompt, negative, per_prompt, prior_steps, prior_scale, gen, prior_latents, progress)
            else:
                items, weights = self._mix(prompt, negative, image_prompts, prompt_weight, max_pixels)
                out = self.interpolate(items, weights, per_prompt, prior_steps, gen, prior_latents,
                                       negative_prompt=negative or "", guidance_scale=prior_scale, progress=progress,
                                       max_pixels=max_pixels)
            embeds, negative, per_prompt = out.image_embeds, out.negative_image_embeds, 1
        else:
            _default_prompt_weight(prompt_weight)
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

    def _mix(self, prompt, negative, image_prompts, prompt_weight, max_pixels) -> tuple[list, list[float]]:
        """interpolate's items and weights for inpaint's image_prompts, checked before the prior runs."""
        if not self.image_prompts:
            fix = ("re-export the engine with this inpaintrt (`inpaint-export --model <decoder> --prior <prior>`) to "
                   "add the prior's image encoder")
            raise InvalidArgument("image_prompts", "this engine was exported without the prior's image encoder, so it "
                                  f"cannot read pictures as prompts; {fix}", fix)
        pictures, weights = _image_prompt_pairs(image_prompts, max_pixels)
        if prompt is not None and not isinstance(prompt, str):
            fix = "pass one prompt (a string) with image_prompts, or call once per prompt"
            raise InvalidArgument("prompt", f"image_prompts mix into one prompt, but prompt is a "
                                  f"{type(prompt).__name__}; {fix}", fix)
        if negative is not None and not isinstance(negative, str):
            fix = "pass negative_prompt as one string with image_prompts"
            raise InvalidArgument("negative_prompt", f"negative_prompt is a {type(negative).__name__}; {fix}", fix)
        weight = _weight(prompt_weight, "prompt_weight", "prompt_weight")
        return ([prompt] if prompt else []) + pictures, ([weight] if prompt else []) + weights

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


def _conditions(items) -> list:
    if not isinstance(items, (list, tuple)) or not items:
        fix = "pass a non-empty list of prompts (str) and pictures"
        raise InvalidArgument("images_and_prompts", f"images_and_prompts must be {fix[5:]}, got "
                              f"{items!r:.60}", fix)
    return list(items)


def _to_pil(picture, field: str, max_pixels: int) -> Image.Image:
    """A picture as the PIL image diffusers' interpolate would be given: float arrays in [0, 1] become 8-bit."""
    loaded = imaging.load_picture(picture, field, max_pixels)
    if isinstance(loaded, Image.Image):
        return loaded
    pixels = (loaded * 255).round().astype(np.uint8)
    return Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)


def _image_prompt_pairs(image_prompts, max_pixels: int) -> tuple[list, list[float]]:
    """inpaint's image_prompts, [(picture, weight), ...], read (a str picture is a file path) and checked."""
    fix = "pass a non-empty list of (picture, weight) pairs, e.g. [(Image.open('style.png'), 1.0)], or None"
    if not isinstance(image_prompts, (list, tuple)) or not image_prompts:
        raise InvalidArgument("image_prompts", f"image_prompts must be {fix[5:]}, got {image_prompts!r:.60}", fix)
    pictures, weights = [], []
    for i, pair in enumerate(image_prompts):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise InvalidArgument("image_prompts", f"image_prompts[{i}] must be a (picture, weight) pair, got "
                                  f"{type(pair).__name__}", fix)
        picture, weight = pair
        pictures.append(_to_pil(picture, "image_prompts", max_pixels))
        weights.append(_weight(weight, "image_prompts", f"image_prompts[{i}]'s weight"))
    return pictures, weights


def _weight(value, field: str, label: str) -> float:
    """A finite real number; the refusal names `field` (what the server and CLI map) and says which one."""
    try:
        return check.real(value, field)
    except InvalidArgument:
        raise InvalidArgument(field, f"{label} is {value!r}; weights must be finite numbers (not bool, NaN or inf)",
                              "give every weight as a finite number, e.g. 1.0 or 0.5") from None


def _default_prompt_weight(prompt_weight) -> None:
    if not check.is_default(prompt_weight, 1.0):
        fix = "leave prompt_weight out, or give image_prompts to mix with"
        raise InvalidArgument("prompt_weight", f"prompt_weight={prompt_weight!r} weighs the prompt against "
                              f"image_prompts, and none were given; {fix}", fix)


def _refuse(others: dict, family: str) -> None:
    """Stable Diffusion arguments by name (ValueError), unknown ones as Python would (TypeError)."""
    if not others:
        return
    unknown = sorted(name for name in others if name not in INPAINT_DEFAULTS)
    if unknown:
        raise TypeError(f"inpaint() got an unexpected keyword argument {unknown[0]!r}")
    # at their defaults (as the inpaint CLI passes them) they change nothing: refused only when they would
    known = sorted(name for name, value in others.items() if not check.is_default(value, INPAINT_DEFAULTS[name]))
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

