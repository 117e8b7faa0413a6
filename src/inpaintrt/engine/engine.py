"""Engine: load an engine directory and inpaint with diffusers' StableDiffusion(XL)InpaintPipeline arguments."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..runtime import images as imaging
from ..runtime import masking
from ..runtime.inpaint import LoopModels, Request, StopDenoising, decode_latents
from ..runtime.errors import InvalidArgument
from ..runtime.noise import as_generator
from ..runtime.schedulers import default_scheduler_name, make_scheduler
from ..runtime.xp import to_host
from . import arguments as check
from .base import EngineBase, first_output, progress_bar, read_family
from .batch import inpaint_batch, run_loop
from .families import family as family_record, families_with
from .load_options import LoadOptions
from .outpaint import outpaint
from .outputs import InpaintOutput
from .plans import select_plan
from .control import ControlNets
from .preflight import default_strength, generated_size, prepare_mask
from .prompts import PromptArgs, SizeConditioning, TextConditioner
from .safety import screen

__all__ = ["Engine", "InpaintOutput", "StopDenoising"]


class Engine(EngineBase):
    """Stable Diffusion 1.x / 2.x / SDXL; `Engine.load` opens any family's directory (engine/families.py)."""
    def __init__(self, root: Path, manifest: dict, opened):
        super().__init__(root, manifest, opened)
        self.default_scheduler = default_scheduler_name(self.scheduler_config)
        self.text = TextConditioner(root, manifest, self.sessions, self.backend)
        if opened.embeddings:  # new prompt tokens, their vectors already in the text encoders' tables
            self.embeddings = opened.embeddings.install(self.text.tokenizers)
        self.controlnets = ControlNets(manifest, self.sessions)  # empty without --controlnet at export
        channels = (1, self.model["latent_channels"], 1, 1)
        mean, std = self.model.get("vae_latents_mean"), self.model.get("vae_latents_std")
        self._models = LoopModels(
            encode=lambda x: _pair(self.sessions["vae_encoder"].run({"image": x})),
            unet=lambda s, t, c: first_output(self.sessions["unet"].run({"sample": s, "timestep": t, **c})),
            decode=lambda z: first_output(self.sessions["vae_decoder"].run({"latent": z})),
            unet_in_channels=self.model["unet_in_channels"],
            latent_channels=self.model["latent_channels"],
            vae_scale_factor=self.model["vae_scale_factor"],
            vae_scaling_factor=self.model["vae_scaling_factor"],
            vae_latents_mean=None if mean is None else np.array(mean, np.float32).reshape(channels),
            vae_latents_std=None if std is None else np.array(std, np.float32).reshape(channels),
        )

    @classmethod
    def load(cls, path: str | Path, backend: str = "auto", verify_hashes: bool = True,
             cuda_graph: bool = False, precision: str | None = None, cuda_options: dict | None = None,
             loras=None, embeddings=None, safety_checker: bool = True, eraser=None) -> "EngineBase":
        """Open an engine directory written by `inpaint-export`; `engine.backend` says which backend runs.

        backend: "auto" (TensorRT when the directory has plans that run here, else ONNX Runtime on the
        CPU, with a warning), "tensorrt", "ort-cuda" or "ort-cpu". cuda_graph: TensorRT / ort-cuda replay
        the UNet call as a CUDA graph. precision: ort-cuda's graphs, "fp16" (default where exported
        with --fp16) or "fp32"; "bf16" runs OpenVINO on the CPU (backend "openvino", which also runs
        "fp32", its default; "auto" takes it only when bf16 is asked for). `engine.precision` says
        what the UNet runs in. cuda_options: ONNX Runtime CUDA provider options for ort-cuda, e.g.
        {"prefer_nhwc": "1", "cudnn_conv_algo_search": "HEURISTIC"} (engine/cuda_options.py lists them),
        over those the manifest records. loras: [(file, scale), ...] fused into the UNet's and text
        encoders' weights at load (engine/lora.py; ort-cpu and ort-cuda), nothing on disk changes;
        `engine.loras` lists them and those baked in at export. embeddings: textual-inversion files,
        [file or (file, token), ...] (A1111 .pt/.safetensors, diffusers learned_embeds, SDXL clip_l/clip_g),
        each a new prompt token as diffusers' load_textual_inversion gives (engine/textual_inversion.py);
        `engine.embeddings` lists them. The manifest's family picks the class
        (engine/families.py): a Kandinsky 2.2 directory gives a KandinskyEngine. safety_checker: where the directory
        has diffusers' safety checker it runs (flagged images come back black, `nsfw_content_detected` says
        which); False skips it (docs/safety-checker.md). eraser: an eraser engine directory (LaMa, MI-GAN) opened
        beside a diffusion engine on the same device; masked_content="eraser" then fills the mask with it before
        the VAE encode (docs/eraser.md)."""
        options = LoadOptions(backend, precision, cuda_graph, cuda_options, loras, embeddings, safety_checker,
                              verify_hashes, None if eraser is None else str(eraser))
        root = Path(path)
        manifest, family = read_family(root)
        return family_record(family, str(root)).engine_class().open(root, manifest, options)

    def encode_prompt(self, prompt, negative_prompt=None, num_images_per_prompt=1, guidance_scale=7.5,
                      prompt_2=None, negative_prompt_2=None, prompt_syntax="a1111"):
        """As diffusers' encode_prompt: SD gives (prompt_embeds, negative_prompt_embeds or None); SDXL gives
        (prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds)."""
        per_prompt = check.from_table("num_images_per_prompt", num_images_per_prompt)
        args = PromptArgs(prompt=prompt, prompt_2=prompt_2, negative_prompt=negative_prompt,
                          negative_prompt_2=negative_prompt_2, prompt_syntax=prompt_syntax)
        cond, uncond = self.text(args, per_prompt, guidance_scale > 1)
        uncond = uncond or {}
        found = (cond["encoder_hidden_states"], uncond.get("encoder_hidden_states"))
        return found + (cond["text_embeds"], uncond.get("text_embeds")) if self.record.micro_conditioning else found

    def inpaint(
        self, image, mask_image=None, prompt=None, negative_prompt=None, num_inference_steps=50, guidance_scale=7.5,
        strength=None, scheduler=None, scheduler_options=None, generator=None, latents=None, height=None,
        width=None, num_images_per_prompt=1, padding_mask_crop=None, blur_factor=0, keep_unmasked=False,
        keep_input_size=False, prompt_embeds=None, negative_prompt_embeds=None, output_type="pil",
        callback_on_step_end=None, progress=True, max_pixels=imaging.MAX_PIXELS,
        callback_on_step_end_tensor_inputs=("latents",),
        # SDXL (StableDiffusionXLInpaintPipeline's arguments)
        prompt_2=None, negative_prompt_2=None, pooled_prompt_embeds=None, negative_pooled_prompt_embeds=None,
        denoising_start=None, denoising_end=None, original_size=None, target_size=None,
        crops_coords_top_left=None, negative_original_size=None, negative_target_size=None,
        negative_crops_coords_top_left=None, aesthetic_score=None, negative_aesthetic_score=None,
        # beyond diffusers
        mask_mode="binary", masked_content="original", mask_grow=0, mask_shrink=0, mask_invert=False,
        prompt_syntax="a1111", color_match=False,
        # ControlNet (StableDiffusion(XL)ControlNetInpaintPipeline's arguments, engine/control.py; the scale's
        # default is the family's: 0.5 SD, 1.0 SDXL)
        control_image=None, controlnet_conditioning_scale=None, control_guidance_start=0.0,
        control_guidance_end=1.0, guess_mode=False, **kandinsky,
    ) -> InpaintOutput:
        """Repaint the white part of `mask_image` in `image`, as StableDiffusion(XL)InpaintPipeline does.

        `strength` defaults to diffusers' per family: 1.0 for SD 1.x/2.x, 0.9999 for SDXL. The SDXL
        arguments (size micro-conditioning, aesthetic scores, second prompts, pooled embeddings,
        denoising_start/end) have diffusers' meanings and defaults; denoising_start/end also work on SD.
        Beyond diffusers' arguments: `keep_unmasked` pastes the result over the input so unmasked
        pixels are unchanged (output at the input's size); `keep_input_size` sets height/width from
        the input (rounded down to multiples of 8); `image` may be latents (1, 4, h, w) from an
        earlier `output_type="latent"` call. `callback_on_step_end` takes diffusers' form,
        `(pipe, step, timestep, callback_kwargs) -> dict` with `callback_on_step_end_tensor_inputs` (pipe is
        this engine; `pipe._interrupt = True` stops after the step), or the short `(step, timestep, latents)
        -> latents or None`; either may raise StopDenoising to finish early (on ort-cuda the arrays are cupy:
        the loop stays on the GPU).

        Beyond diffusers (the defaults keep diffusers' results): `mask_mode="soft"` reads the mask's
        grey levels as a change map (Differential Diffusion: white is repainted for every step, black
        kept, grey changed for that fraction of the steps); `masked_content` is what the masked area
        starts from when strength < 1 ("original", "fill", "latent_noise", "latent_nothing");
        `mask_invert`, `mask_grow` / `mask_shrink` (pixels) edit the mask before `blur_factor`.
        `prompt_syntax="a1111"` (the default) reads A1111's weights, `(word:1.3)` `(word)` `[word]`, and
        BREAK, and encodes prompts past 75 tokens in chunks instead of truncating them; a short prompt
        without syntax gives diffusers' embeddings exactly. "plain" is diffusers' reading in every case.
        `color_match` (with keep_unmasked or padding_mask_crop) matches the repainted colours to the
        original's around the mask before pasting back (runtime/masking.py `match_colours`).
        """
        self._refuse_kandinsky_arguments(kandinsky)
        steps = check.from_table("num_inference_steps", num_inference_steps)
        per_prompt = check.from_table("num_images_per_prompt", num_images_per_prompt)
        callback = self._step_callback(callback_on_step_end, callback_on_step_end_tensor_inputs)
        strength = default_strength(strength, self.family)
        check.check_numbers(strength, guidance_scale, output_type, blur_factor, padding_mask_crop)
        check.mask_options(mask_mode, masked_content, mask_grow, mask_shrink, mask_invert)
        check.eraser_loaded(masked_content, self.eraser)
        start, end = check.schedule_window(denoising_start, denoising_end, masked_content)
        sizes = SizeConditioning(original_size, target_size, crops_coords_top_left, negative_original_size,
                                 negative_target_size, negative_crops_coords_top_left, aesthetic_score,
                                 negative_aesthetic_score)
        self._refuse_sdxl_arguments(sizes)
        check.pasting(output_type, keep_unmasked, padding_mask_crop, color_match)
        sched = make_scheduler(scheduler or self.default_scheduler, self.scheduler_config, scheduler_options)
        gen = as_generator(generator)
        factor = self.model["vae_scale_factor"]

        given_latents, picture, mask = self._load_inputs(image, mask_image, max_pixels, keep_unmasked,
                                                         padding_mask_crop, keep_input_size, masked_content)
        height, width = self._size(height, width, picture, given_latents, keep_input_size)
        if self.backend == "tensorrt":  # static plans: refuse other sizes before any work
            select_plan(self.manifest["tensorrt"]["plans"]["unet"], height, width, "unet")
        mask, crop, mask_pixels, soft = prepare_mask(mask, height, width, mask_mode, mask_invert, mask_grow,
                                                     mask_shrink, blur_factor, padding_mask_crop)

        prompts = PromptArgs(prompt, prompt_2, negative_prompt, negative_prompt_2, prompt_embeds,
                             negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds, prompt_syntax)
        cond, uncond, batch = self._prepare_conditioning(prompts, per_prompt, guidance_scale > 1, sizes, height, width)
        if latents is not None:
            latents = check.latents(latents, "latents", (batch, self.model["latent_channels"], height // factor,
                                                         width // factor))
        pixels = self._prepare_image(picture, given_latents, height, width, crop, masked_content, mask_pixels)
        control = self.controlnets.prepare(
            control_image, controlnet_conditioning_scale, control_guidance_start, control_guidance_end, guess_mode,
            picture=picture, pixels=pixels, mask_pixels=mask_pixels, crop=crop, height=height, width=width,
            batch=batch, cond=cond, uncond=uncond, max_pixels=max_pixels)
        request = Request(
            image=pixels, mask=mask_pixels,
            conditioning=cond if uncond is None else {k: np.concatenate([uncond[k], cond[k]]) for k in cond},
            batch=batch, guidance_scale=float(guidance_scale), num_inference_steps=steps, strength=float(strength),
            latents=latents, callback=callback, image_latents=given_latents,
            denoising_start=start, denoising_end=end, change_map=soft, masked_content=masked_content, control=control,
        )
        final = run_loop(self._models, sched, request, gen, progress_bar(progress, "denoising"), self.xp)
        if output_type == "latent":
            return InpaintOutput(to_host(final))
        images = imaging.postprocess(to_host(decode_latents(self._models, final)))
        images, nsfw = screen(self.safety_checker, images)  # where diffusers runs it: before the crop overlay
        if crop is None and not keep_unmasked:
            return InpaintOutput(imaging.to_pil(images) if output_type == "pil" else images, nsfw)
        pasted = [masking.overlay(mask, picture, result, crop, color_match) for result in imaging.to_pil(images)]
        if output_type == "pil":
            return InpaintOutput(pasted, nsfw)
        return InpaintOutput(np.stack([np.asarray(p, np.float32) / 255.0 for p in pasted]), nsfw)

    def outpaint(self, image, left=0, right=0, top=0, bottom=0, prompt=None, overlap=32, fill="edge", height=None,
                 width=None, generator=None, output_type="pil", max_pixels=imaging.MAX_PIXELS,
                 **inpaint_arguments) -> InpaintOutput:
        """Grow the picture by left/right/top/bottom pixels and paint the new area.

        The new area is pre-filled (`fill`: "edge" — the border stretched outwards and blurred, the
        default: it continues the picture's colours without repeating its shapes —, "mirror" or
        "noise"), then inpainted in passes of at most height x width (default: the model's size), each
        on a window half made of pixels that already exist; the mask reaches `overlap` pixels into them,
        feathered. Existing pixels farther than `overlap` from the new area keep their bytes. Any size
        works (not only multiples of 8: each pass runs the model at the nearest multiple of 8). Other
        arguments (prompt, steps, strength, scheduler, mask_mode, masked_content, ...) go to each
        `inpaint` pass; the pre-fill matters where the start comes from the picture (strength < 1, and
        the 4-channel blend). Returns one picture of (width + left + right) x (height + top + bottom)."""
        sides = dict(left=left, right=right, top=top, bottom=bottom)
        return outpaint(self, image, sides, overlap, fill, height, width, generator, output_type, max_pixels,
                        dict(inpaint_arguments, prompt=prompt))

    def inpaint_batch(self, members: list[dict], on_done=None) -> list:
        """`inpaint(**member)` for each member, their denoising loops run as one batch where they agree
        (docs/batching.md); each member's Outcome holds its output or the error it raised alone."""
        return inpaint_batch(self, members, on_done)

    def _callback_kind(self) -> str:
        return "controlnet" if self.controlnets and self.record.callback == "sd" else self.record.callback

    def _unavailable_tensors(self) -> dict[str, str]:
        missing = {}
        if self.controlnets:
            missing["control_image"] = "stays inside the engine's ControlNet step"
        if self.model["unet_in_channels"] == 4:
            missing["masked_image_latents"] = "is not made for a 4-channel UNet (diffusers makes it and leaves it unused)"
        return missing

    def _load_inputs(self, image, mask_image, max_pixels, keep_unmasked, padding_mask_crop, keep_input_size,
                     masked_content):
        """(image latents or None, picture or None, mask picture), checked against each other; without
        mask_image, the mask is the picture's transparent pixels (runtime/images.py load_pair)."""
        given_latents = check.latent_image(image, self.model["latent_channels"])
        if given_latents is not None:
            given_latents = given_latents.astype(np.float32)
            check.latent_input(keep_unmasked, padding_mask_crop, keep_input_size, masked_content)
            if mask_image is None:
                fix = "pass mask_image (white = repaint), or a picture with transparent pixels as image"
                raise InvalidArgument("mask_image", f"image is latents, which have no alpha channel to take a mask "
                                      f"from; {fix}", fix)
            return given_latents, None, imaging.load_picture(mask_image, "mask_image", max_pixels)
        picture, mask = imaging.load_pair(image, mask_image, max_pixels)
        check.same_size(imaging.picture_size(picture), imaging.picture_size(mask))
        return given_latents, picture, mask

    def _prepare_conditioning(self, prompts: PromptArgs, per_prompt: int, guided: bool, sizes: SizeConditioning,
                              height: int, width: int):
        """(cond, uncond or None, batch): the text encoders' feeds, SDXL's time ids with them."""
        cond, uncond = self.text(prompts, per_prompt, guided)
        batch = len(cond["encoder_hidden_states"])
        if self.record.micro_conditioning:
            ids, negative_ids = sizes.time_ids(self.model, height, width)
            cond["time_ids"] = np.repeat(ids, batch, axis=0)
            if uncond is not None:
                uncond["time_ids"] = np.repeat(negative_ids, batch, axis=0)
        return cond, uncond, batch

    def _prepare_image(self, picture, given_latents, height: int, width: int, crop, masked_content: str,
                       mask_pixels: np.ndarray) -> np.ndarray:
        """The (1, 3, H, W) image in [-1, 1] the loop starts from and the 9-channel UNet sees."""
        if given_latents is not None and self.model["unet_in_channels"] == 4:
            pixels = np.zeros((1, 3, height, width), np.float32)  # the blend needs only the latents
        elif given_latents is not None:  # the 9-channel UNet also sees the masked image's latents
            pixels = np.clip(decode_latents(self._models, given_latents), -1, 1)
        else:
            pixels = imaging.preprocess_image(picture, height, width, crop)
        if masked_content == "eraser":  # the eraser's fill, in [-1, 1]: a strength below 1 keeps its colours
            filled = self.eraser.erase((pixels[0].transpose(1, 2, 0) + 1) / 2, mask_pixels[0, 0] >= 0.5)
            return (filled.transpose(2, 0, 1)[None] * 2 - 1).astype(np.float32)
        return masking.fill(pixels, mask_pixels) if masked_content == "fill" else pixels

    def _refuse_kandinsky_arguments(self, others: dict) -> None:
        """Other kinds' arguments (Kandinsky's prior, an eraser's) by name, unknown ones as Python would."""
        rest = check.refuse_needing(others, self.record)
        if rest:
            raise TypeError(f"inpaint() got an unexpected keyword argument {sorted(rest)[0]!r}")

    def _refuse_sdxl_arguments(self, sizes: SizeConditioning) -> None:
        given = sizes.given()
        if not self.record.micro_conditioning and given:
            raise InvalidArgument(given[0], f"{', '.join(given)} are SDXL micro-conditioning; this engine is "
                                  f"{self.family}: leave them out", "leave them out")

    def _size(self, height, width, picture, given_latents, keep_input_size) -> tuple[int, int]:
        factor = self.model["vae_scale_factor"]
        if given_latents is not None and not keep_input_size:
            own = (given_latents.shape[2] * factor, given_latents.shape[3] * factor)
            if (height or own[0], width or own[1]) != own:
                raise InvalidArgument("height" if (height or own[0]) != own[0] else "width",
                                      f"image latents {given_latents.shape} mean {own[0]}x{own[1]} pixels (height x "
                                      "width); leave height and width unset or match them",
                                      "leave height and width unset or match them")
            height, width = own
        size = imaging.picture_size(picture) if keep_input_size else None
        return generated_size(height, width, size, keep_input_size, factor,
                              (self.model["default_height"], self.model["default_width"]))


def _pair(outputs: dict) -> tuple[np.ndarray, np.ndarray]:
    return outputs["latent_mean"], outputs["latent_logvar"]
