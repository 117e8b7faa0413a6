"""Kandinsky 2.2 host math, with diffusers' semantics (pipeline_kandinsky2_2_prior.py and
pipeline_kandinsky2_2_inpainting.py, 0.42):

- the prior loop: prompt -> CLIP image embedding, UnCLIP scheduler, classifier-free guidance over
  [negative, prompt]; with a negative prompt the prior runs it as extra prompts and its outputs are the
  negative image embeddings, without one the negative is the image encoder's embedding of a black
  picture (stored at export). Random draws: the latents (B, D), then one per step while t > 0.
- the decoder's inputs: the picture resized with bicubic (reducing_gap=1), the mask with Lanczos and cut
  at 0.5, inverted to a keep mask, brought to latent size with nearest-neighbour, then grown by one
  latent pixel towards six of its eight neighbours (diffusers' prepare_mask, reproduced as it is);
  the masked image is the MoVQ latents times that keep mask. The denoising itself is inpaint.denoise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from . import images as imaging
from .noise import draw
from .schedulers import UnCLIP
from .xp import to_host


def preprocess_image(picture, height: int, width: int) -> np.ndarray:
    """(1, 3, H, W) in [-1, 1]: PIL pictures as diffusers resizes them (bicubic, reducing_gap=1)."""
    if isinstance(picture, Image.Image):
        resized = picture.resize((width, height), resample=Image.BICUBIC, reducing_gap=1).convert("RGB")
        pixels = np.asarray(resized, dtype=np.float32) / np.float32(127.5) - 1
        return pixels.transpose(2, 0, 1)[None].astype(np.float32)
    return imaging.preprocess_image(picture, height, width)


# a repaint pixel at (i, j) clears the keep mask at (i + dy, j + dx) for these offsets (not the other two diagonals)
GROW = ((-1, 0), (0, -1), (-1, -1), (1, 0), (0, 1), (1, 1))


def prepare_mask(keep: np.ndarray) -> np.ndarray:
    """diffusers' prepare_mask on a (1, 1, h, w) 0/1 keep mask."""
    _, _, h, w = keep.shape
    repaint = np.pad(keep[0, 0] != 1, 1, constant_values=False)
    out = keep.copy()
    for dy, dx in GROW:
        out[0, 0][repaint[1 - dy: 1 - dy + h, 1 - dx: 1 - dx + w]] = 0
    return out


def latent_masking(repaint_pixels: np.ndarray, image_latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(repaint mask, UNet channels after the latents) at latent size, from the (1, 1, H, W) repaint mask."""
    h, w = image_latents.shape[2:]
    keep = prepare_mask(imaging.nearest_resize(1 - repaint_pixels, h, w).astype(np.float32))
    masked = image_latents * keep
    return (1 - keep).astype(np.float32), np.concatenate([masked, keep], axis=1).astype(np.float32)


@dataclass
class Prior:
    """The exported prior: its two graphs (callables over feeds), tokenizer and constants."""
    text_encoder: Callable[[dict], dict]
    transformer: Callable[[dict], dict]
    tokenizer: object  # runtime.tokenizer.PromptTokenizer
    scheduler_config: dict
    zero_image_embeds: np.ndarray  # (1, D)
    clip_mean: np.ndarray  # (1, D)
    clip_std: np.ndarray

    def encode(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(text_embeds, last_hidden_state, attention mask) as diffusers' _encode_prompt makes them."""
        ids = self.tokenizer(prompts)
        eos = ids == self.tokenizer.eos_id
        mask = (np.cumsum(eos, axis=1) - eos == 0).astype(np.int64)  # up to and including the first end token
        out = self.text_encoder({"input_ids": ids})  # host arrays: the prior loop is small and runs on numpy
        return to_host(out["text_embeds"]), to_host(out["last_hidden_state"]), mask

    def __call__(self, prompts: list[str], negatives: list[str] | None, per_prompt: int, steps: int,
                 guidance_scale: float, generator, latents: np.ndarray | None = None,
                 progress: Callable = iter) -> tuple[np.ndarray, np.ndarray]:
        """(image_embeds, negative_image_embeds), each (len(prompts) x per_prompt, D)."""
        scheduler = UnCLIP(self.scheduler_config)
        scheduler.set_timesteps(steps)  # before any draw, so a bad step count costs nothing
        guided = guidance_scale > 1
        if negatives is not None:  # diffusers runs the negative prompts as prompts too and splits at the end
            prompts, negatives = prompts + negatives, 2 * negatives
        embeds, hidden, mask = (np.repeat(a, per_prompt, axis=0) for a in self.encode(prompts))
        if guided:
            uncond = (np.repeat(a, per_prompt, axis=0) for a in self.encode(negatives or [""] * len(prompts)))
            embeds, hidden, mask = (np.concatenate([u, c]) for u, c in zip(uncond, (embeds, hidden, mask)))
        shape = (len(prompts) * per_prompt, self.clip_mean.shape[1])
        if latents is None:
            latents = draw(generator, shape)
        elif latents.shape != shape:
            raise ValueError(f"prior_latents has shape {latents.shape}; for this call it must be {shape}")
        latents = latents.astype(np.float32) * np.float32(scheduler.init_noise_sigma)
        for i in progress(range(len(scheduler.timesteps))):
            model_input = np.concatenate([latents] * 2) if guided else latents
            timestep = np.full((len(model_input),), scheduler.timesteps[i], np.float32)
            pred = self.transformer({"hidden_states": model_input, "timestep": timestep, "proj_embedding": embeds,
                                     "encoder_hidden_states": hidden, "attention_mask": mask})
            pred = to_host(next(iter(pred.values()))).astype(np.float32)
            if guided:
                uncond_pred, cond_pred = np.split(pred, 2)
                pred = uncond_pred + np.float32(guidance_scale) * (cond_pred - uncond_pred)
            latents = scheduler.step(pred, i, latents, generator).astype(np.float32)
        image_embeds = latents * self.clip_std + self.clip_mean
        if negatives is None:
            return image_embeds, np.repeat(self.zero_image_embeds, len(image_embeds), axis=0)
        return tuple(np.split(image_embeds, 2))
