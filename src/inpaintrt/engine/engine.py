"""Engine: load an engine directory and inpaint with diffusers' StableDiffusionInpaintPipeline arguments."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..runtime import images as imaging
from ..runtime.inpaint import Models, Request, decode_latents, denoise
from ..runtime.noise import as_generator
from ..runtime.schedulers import default_scheduler_name, make_scheduler
from ..runtime.tokenizer import PromptTokenizer
from .backends import create_backend, resolve_backend
from .manifest import COMPONENTS, read_manifest

OUTPUT_TYPES = ("pil", "np", "latent")


@dataclass
class InpaintOutput:
    images: list | np.ndarray  # PIL images, float (B, H, W, 3) in [0, 1], or latents (B, C, h, w)


class Engine:
    def __init__(self, root: Path, manifest: dict, backend: str):
        self.root, self.manifest, self.backend = root, manifest, backend
        self.model = manifest["model"]
        self.scheduler_config = manifest["scheduler"]
        self.default_scheduler = default_scheduler_name(self.scheduler_config)
        tok = manifest["tokenizer"]
        self.tokenizer = PromptTokenizer(root / tok["file"], tok["max_length"], tok["pad_id"])
        self.sessions = {name: create_backend(backend, root / manifest["components"][name]["file"])
                         for name in COMPONENTS}
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
    def load(cls, path: str | Path, backend: str = "auto", verify_hashes: bool = True) -> "Engine":
        """Open an engine directory written by `inpaint-export`; `engine.backend` says which backend runs."""
        root = Path(path)
        manifest = read_manifest(root, verify_hashes=verify_hashes)
        return cls(root, manifest, resolve_backend(backend))

    def encode_prompt(self, prompts: list[str]) -> np.ndarray:
        """CLIP text embeddings (len(prompts), seq, hidden)."""
        ids = self.tokenizer(prompts)
        return _single(self.sessions["text_encoder"].run({"input_ids": ids}))

    def inpaint(
        self, image, mask_image, prompt="", negative_prompt=None, num_inference_steps=50, guidance_scale=7.5,
        strength=1.0, scheduler=None, scheduler_options=None, generator=None, latents=None, height=None,
        width=None, num_images_per_prompt=1, output_type="pil", callback_on_step_end=None, progress=True,
    ) -> InpaintOutput:
        """Repaint the white part of `mask_image` in `image`, as StableDiffusionInpaintPipeline does."""
        height = self.model["default_height"] if height is None else height
        width = self.model["default_width"] if width is None else width
        prompts = _prompts(prompt, "prompt")
        steps = _check_args(self.model, image, mask_image, height, width, strength, num_inference_steps,
                            guidance_scale, num_images_per_prompt, output_type)
        sched = make_scheduler(scheduler or self.default_scheduler, self.scheduler_config, scheduler_options)
        gen = as_generator(generator)
        batch = len(prompts) * num_images_per_prompt

        embeddings = np.repeat(self.encode_prompt(prompts), num_images_per_prompt, axis=0)
        if guidance_scale > 1:
            negatives = _negatives(negative_prompt, len(prompts))
            uncond = np.repeat(self.encode_prompt(negatives), num_images_per_prompt, axis=0)
            embeddings = np.concatenate([uncond, embeddings])
        if latents is not None:
            latents = _check_latents(latents, self.model, batch, height, width)

        request = Request(
            image=imaging.preprocess_image(image, height, width),
            mask=imaging.preprocess_mask(mask_image, height, width),
            embeddings=embeddings.astype(np.float32), batch=batch, guidance_scale=float(guidance_scale),
            num_inference_steps=steps, strength=float(strength), latents=latents, callback=callback_on_step_end,
        )
        final = denoise(self._models, sched, request, gen, _progress(progress))
        if output_type == "latent":
            return InpaintOutput(final)
        return InpaintOutput(imaging.postprocess(decode_latents(self._models, final), output_type))


def _single(outputs: dict) -> np.ndarray:
    return next(iter(outputs.values()))


def _pair(outputs: dict) -> tuple[np.ndarray, np.ndarray]:
    return outputs["latent_mean"], outputs["latent_logvar"]


def _progress(enabled: bool):
    if not enabled:
        return iter
    from tqdm.auto import tqdm

    return lambda steps: tqdm(steps, desc="denoising", unit="step")


def _prompts(prompt, name: str) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    raise ValueError(f"{name} must be a string or a non-empty list of strings, got {type(prompt).__name__}")


def _negatives(negative_prompt, count: int) -> list[str]:
    if negative_prompt is None:
        return [""] * count
    negatives = _prompts(negative_prompt, "negative_prompt")
    if len(negatives) == 1:
        return negatives * count
    if len(negatives) != count:
        raise ValueError(f"negative_prompt has {len(negatives)} entries but prompt has {count}; give one or {count}")
    return negatives


def _check_args(model, image, mask_image, height, width, strength, steps, guidance, per_prompt, output_type) -> int:
    factor = model["vae_scale_factor"]
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, numbers.Integral) or value <= 0 or value % factor:
            raise ValueError(f"{name}={value!r} must be a positive multiple of {factor}, e.g. {max(factor, round(value / factor) * factor) if isinstance(value, numbers.Real) else 512}")
    image_size, mask_size = imaging.input_size(image, "image"), imaging.input_size(mask_image, "mask_image")
    if image_size != mask_size:
        raise ValueError(
            f"image is {image_size} (width, height) but mask_image is {mask_size}; pass a mask of the same size as the image"
        )
    if not isinstance(strength, numbers.Real) or not 0 < strength <= 1:
        raise ValueError(f"strength={strength!r} must be in (0, 1]: 1 repaints fully, smaller keeps more of the image")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"num_inference_steps={steps!r} must be an integer >= 1")
    if not isinstance(guidance, numbers.Real) or not math.isfinite(guidance):
        raise ValueError(f"guidance_scale={guidance!r} must be a finite number (<= 1 turns guidance off)")
    if isinstance(per_prompt, bool) or not isinstance(per_prompt, numbers.Integral) or per_prompt < 1:
        raise ValueError(f"num_images_per_prompt={per_prompt!r} must be an integer >= 1")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type={output_type!r} is unknown; choose one of {', '.join(OUTPUT_TYPES)}")
    return int(steps)


def _check_latents(latents, model, batch: int, height: int, width: int) -> np.ndarray:
    factor = model["vae_scale_factor"]
    expected = (batch, model["latent_channels"], height // factor, width // factor)
    latents = np.asarray(latents)
    if latents.shape != expected:
        raise ValueError(f"latents has shape {latents.shape}; for this call it must be {expected}")
    if not np.isfinite(latents).all():
        raise ValueError("latents contains NaN or infinite values")
    return latents.astype(np.float32)
