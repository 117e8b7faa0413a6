"""Engine: load an engine directory and inpaint with diffusers' StableDiffusionInpaintPipeline arguments."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..runtime import images as imaging
from ..runtime import masking
from ..runtime.inpaint import Models, Request, StopDenoising, decode_latents, denoise
from ..runtime.noise import as_generator
from ..runtime.schedulers import default_scheduler_name, make_scheduler
from ..runtime.tokenizer import PromptTokenizer
from . import arguments as check
from .backends import open_backend
from .manifest import read_manifest
from .plans import select_plan

__all__ = ["Engine", "InpaintOutput", "StopDenoising"]
PROMPT_CACHE = 64  # distinct prompts whose embeddings are kept


@dataclass
class InpaintOutput:
    images: list | np.ndarray  # PIL images, float (B, H, W, 3) in [0, 1], or latents (B, C, h, w)


class Engine:
    def __init__(self, root: Path, manifest: dict, backend: str, sessions: dict):
        self.root, self.manifest, self.backend, self.sessions = root, manifest, backend, sessions
        self.model = manifest["model"]
        self.scheduler_config = manifest["scheduler"]
        self.default_scheduler = default_scheduler_name(self.scheduler_config)
        tok = manifest["tokenizer"]
        self.tokenizer = PromptTokenizer(root / tok["file"], tok["max_length"], tok["pad_id"])
        self.text_shape = tuple(manifest["components"]["text_encoder"]["outputs"][0]["shape"][1:])
        self._prompt_cache: dict[str, np.ndarray] = {}
        self._models = Models(
            encode=lambda x: _pair(self.sessions["vae_encoder"].run({"image": x})),
            unet=lambda s, t, e: _single(self.sessions["unet"].run(
                {"sample": s, "timestep": t, "encoder_hidden_states": e})),
            decode=lambda z: _single(self.sessions["vae_decoder"].run({"latent": z})),
            unet_in_channels=self.model["unet_in_channels"],
            latent_channels=self.model["latent_channels"],
            vae_scale_factor=self.model["vae_scale_factor"],
            vae_scaling_factor=self.model["vae_scaling_factor"],
        )

    @classmethod
    def load(cls, path: str | Path, backend: str = "auto", verify_hashes: bool = True,
             cuda_graph: bool = False) -> "Engine":
        """Open an engine directory written by `inpaint-export`; `engine.backend` says which backend runs.

        backend: "auto" (TensorRT when the directory has plans that run here, else ONNX Runtime on the
        CPU, with a warning), "tensorrt" or "ort-cpu". cuda_graph: TensorRT replays the UNet call as a
        CUDA graph."""
        root = Path(path)
        manifest = read_manifest(root, verify_hashes=verify_hashes)
        return cls(root, manifest, *open_backend(backend, root, manifest, cuda_graph))

    def _embed(self, prompts: list[str]) -> np.ndarray:
        """Text embeddings, each distinct prompt encoded once and remembered (the last PROMPT_CACHE)."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._prompt_cache))
        if missing:
            fresh = _single(self.sessions["text_encoder"].run({"input_ids": self.tokenizer(missing)}))
            self._prompt_cache.update(zip(missing, fresh))
            while len(self._prompt_cache) > PROMPT_CACHE:
                self._prompt_cache.pop(next(iter(self._prompt_cache)))
        return np.stack([self._prompt_cache[p] for p in prompts])

    def encode_prompt(self, prompt, negative_prompt=None, num_images_per_prompt=1, guidance_scale=7.5):
        """(prompt_embeds, negative_prompt_embeds or None), as diffusers' encode_prompt returns them."""
        found = check.prompts(prompt, "prompt")
        per_prompt = check.integer(num_images_per_prompt, "num_images_per_prompt", 1)
        embeds = np.repeat(self._embed(found), per_prompt, axis=0)
        if guidance_scale <= 1:
            return embeds, None
        return embeds, np.repeat(self._embed(check.negatives(negative_prompt, len(found))), per_prompt, axis=0)

    def inpaint(
        self, image, mask_image, prompt=None, negative_prompt=None, num_inference_steps=50, guidance_scale=7.5,
        strength=1.0, scheduler=None, scheduler_options=None, generator=None, latents=None, height=None,
        width=None, num_images_per_prompt=1, padding_mask_crop=None, blur_factor=0, keep_unmasked=False,
        keep_input_size=False, prompt_embeds=None, negative_prompt_embeds=None, output_type="pil",
        callback_on_step_end=None, progress=True, max_pixels=imaging.MAX_PIXELS,
    ) -> InpaintOutput:
        """Repaint the white part of `mask_image` in `image`, as StableDiffusionInpaintPipeline does.

        Beyond diffusers' arguments: `keep_unmasked` pastes the result over the input so unmasked
        pixels are unchanged (output at the input's size); `keep_input_size` sets height/width from
        the input (rounded down to multiples of 8); `image` may be latents (1, 4, h, w) from an
        earlier `output_type="latent"` call; `callback_on_step_end(step, timestep, latents)` may
        return new latents or raise StopDenoising to finish early.
        """
        steps = check.integer(num_inference_steps, "num_inference_steps", 1)
        per_prompt = check.integer(num_images_per_prompt, "num_images_per_prompt", 1)
        check.check_numbers(strength, guidance_scale, output_type, blur_factor, padding_mask_crop)
        if output_type == "latent" and (keep_unmasked or padding_mask_crop is not None):
            raise ValueError("keep_unmasked and padding_mask_crop paste pixels; use output_type 'pil' or 'np'")
        sched = make_scheduler(scheduler or self.default_scheduler, self.scheduler_config, scheduler_options)
        gen = as_generator(generator)
        factor = self.model["vae_scale_factor"]

        given_latents = check.latent_image(image, self.model["latent_channels"])
        if given_latents is not None:
            given_latents = given_latents.astype(np.float32)
        picture = None if given_latents is not None else imaging.load_picture(image, "image", max_pixels)
        mask = imaging.load_picture(mask_image, "mask_image", max_pixels)
        if picture is not None and imaging.picture_size(picture) != imaging.picture_size(mask):
            raise ValueError(f"image is {imaging.picture_size(picture)} (width, height) but mask_image is "
                             f"{imaging.picture_size(mask)}; pass a mask of the same size as the image")
        if given_latents is not None and (keep_unmasked or padding_mask_crop is not None or keep_input_size):
            raise ValueError("image is latents: keep_unmasked, padding_mask_crop and keep_input_size need a picture")
        height, width = self._size(height, width, picture, given_latents, keep_input_size)
        if self.backend == "tensorrt":  # static plans: refuse other sizes before any work
            select_plan(self.manifest["tensorrt"]["plans"]["unet"], height, width, "unet")
        if blur_factor:
            mask = masking.blur(mask, blur_factor)
        crop = masking.crop_region(mask, width, height, padding_mask_crop) if padding_mask_crop is not None else None
        mask_pixels = imaging.preprocess_mask(mask, height, width, crop)
        if not mask_pixels.any():
            raise ValueError("mask_image is all black (below 0.5 everywhere), so there is nothing to repaint; "
                             "paint white where the picture should change")

        cond, uncond = self._embeddings(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                        per_prompt, guidance_scale)
        batch = cond.shape[0]
        if latents is not None:
            latents = check.latents(latents, "latents", (batch, self.model["latent_channels"], height // factor,
                                                         width // factor))
        if given_latents is not None and self.model["unet_in_channels"] == 4:
            pixels = np.zeros((1, 3, height, width), np.float32)  # the blend needs only the latents
        elif given_latents is not None:  # the 9-channel UNet also sees the masked image's latents
            pixels = np.clip(decode_latents(self._models, given_latents), -1, 1)
        else:
            pixels = imaging.preprocess_image(picture, height, width, crop)
        request = Request(
            image=pixels, mask=mask_pixels,
            embeddings=cond if uncond is None else np.concatenate([uncond, cond]), batch=batch,
            guidance_scale=float(guidance_scale), num_inference_steps=steps, strength=float(strength),
            latents=latents, callback=callback_on_step_end,
            image_latents=given_latents,
        )
        final = denoise(self._models, sched, request, gen, _progress(progress))
        if output_type == "latent":
            return InpaintOutput(final)
        images = imaging.postprocess(decode_latents(self._models, final))
        if crop is None and not keep_unmasked:
            return InpaintOutput(imaging.to_pil(images) if output_type == "pil" else images)
        pasted = [masking.overlay(mask, picture, result, crop) for result in imaging.to_pil(images)]
        if output_type == "pil":
            return InpaintOutput(pasted)
        return InpaintOutput(np.stack([np.asarray(p, np.float32) / 255.0 for p in pasted]))

    def _size(self, height, width, picture, given_latents, keep_input_size) -> tuple[int, int]:
        factor = self.model["vae_scale_factor"]
        if keep_input_size:
            if height is not None or width is not None:
                raise ValueError("keep_input_size=True sets height and width from the image; do not pass them too")
            w, h = imaging.picture_size(picture)
            height, width = max(factor, h // factor * factor), max(factor, w // factor * factor)
        elif given_latents is not None:
            own = (given_latents.shape[2] * factor, given_latents.shape[3] * factor)
            if (height or own[0], width or own[1]) != own:
                raise ValueError(f"image latents {given_latents.shape} mean {own[0]}x{own[1]} pixels (height x width); "
                                 "leave height and width unset or match them")
            height, width = own
        height = self.model["default_height"] if height is None else height
        width = self.model["default_width"] if width is None else width
        return check.check_size(height, width, factor)

    def _embeddings(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, per_prompt, guidance):
        """(cond, uncond or None), each (B, seq, hidden) with B = prompts x images per prompt."""
        if prompt is not None and prompt_embeds is not None:
            raise ValueError("pass either prompt or prompt_embeds, not both")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("pass either negative_prompt or negative_prompt_embeds, not both")
        if prompt_embeds is None:
            cond, uncond = self.encode_prompt("" if prompt is None else prompt, negative_prompt, per_prompt, guidance)
            if negative_prompt_embeds is None or uncond is None:
                return cond, uncond
            count = cond.shape[0] // per_prompt
        else:
            given = check.embeddings(prompt_embeds, "prompt_embeds", *self.text_shape)
            count = given.shape[0]
            cond = np.repeat(given, per_prompt, axis=0)
            if guidance <= 1:
                return cond, None
            if negative_prompt_embeds is None:
                return cond, np.repeat(self._embed(check.negatives(negative_prompt, count)), per_prompt, axis=0)
        negative = check.embeddings(negative_prompt_embeds, "negative_prompt_embeds", *self.text_shape, batch=count)
        return cond, np.repeat(negative, per_prompt, axis=0)


def _single(outputs: dict) -> np.ndarray:
    return next(iter(outputs.values()))


def _pair(outputs: dict) -> tuple[np.ndarray, np.ndarray]:
    return outputs["latent_mean"], outputs["latent_logvar"]


def _progress(enabled: bool):
    if not enabled:
        return iter
    from tqdm.auto import tqdm

    return lambda steps: tqdm(steps, desc="denoising", unit="step")
