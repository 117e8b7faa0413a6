"""The denoising loop for both kinds of UNet, with diffusers' exact semantics
(docs/architecture.md, "One loop" and "Randomness").

- 9-channel (inpainting checkpoints): the UNet sees [latents, mask, masked-image latents].
- 4-channel (ordinary checkpoints): after each step the original latents, re-noised to the next
  timestep with the same initial noise, replace everything outside the mask.
The models are passed in as callables, so this file knows nothing of ONNX Runtime or TensorRT, and
the model family enters only as the UNet's conditioning feeds (SD: text hidden states; SDXL: also
pooled text embeddings and time ids), so SD 1.x/2.x and SDXL share this one loop.

Beyond diffusers, in the same loop:
- soft (differential) masks: a grey-level change map; after each step every pixel whose grey level
  says it is not yet free is put back to the original latents re-noised to the next timestep (the
  4-channel blend with a per-step mask). A pixel of grey level v is left to the model for the last
  ceil(v x steps) steps: white is repainted fully, black kept. Any UNet (9-channel ones keep their
  binary mask input and get the blend on top).
- masked content (what the masked area starts from): the image latents under the mask replaced by
  noise (`latent_noise`) or zeros (`latent_nothing`); `fill` happens on the pixels, in the engine.

Kandinsky 2.2 enters as `latent_masking`: its pipeline masks in latent space (the image's
MoVQ latents times a dilated keep mask) and feeds [latents, masked latents, keep mask] to its 9-channel
UNet, yet also blends the image back after every step as the 4-channel path does, and once more after
the loop. Those inputs are built by the engine (runtime/kandinsky.py); here they switch the blend on
and replace the SD mask channels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import InvalidArgument
from .images import area_resize, nearest_resize
from .noise import draw
from .xp import array_module


class StopDenoising(Exception):
    """Raise it from callback_on_step_end to finish early: the latents so far are decoded and returned."""


@dataclass
class LoopModels:
    encode: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # image -> latent mean, logvar
    unet: Callable[[np.ndarray, np.ndarray, dict], np.ndarray]  # sample, timestep, conditioning -> prediction
    decode: Callable[[np.ndarray], np.ndarray]  # latents -> image in [-1, 1]
    unet_in_channels: int
    latent_channels: int
    vae_scale_factor: int
    vae_scaling_factor: float
    vae_latents_mean: np.ndarray | None = None  # (1, C, 1, 1) for VAEs that normalise latents per channel
    vae_latents_std: np.ndarray | None = None


@dataclass
class Request:
    image: np.ndarray  # (N, 3, H, W) in [-1, 1]: N = 1 but for requests batched together (docs/batching.md)
    mask: np.ndarray  # (N, 1, H, W) of 0/1
    conditioning: dict  # the UNet's other feeds, e.g. encoder_hidden_states (B, seq, hidden); [uncond, cond] when guided
    batch: int  # B: prompts x images per prompt
    guidance_scale: float
    num_inference_steps: int
    strength: float
    latents: np.ndarray | None = None  # caller's initial noise (B, C, h, w)
    # (step, timestep, the loop's arrays by name) -> (arrays to replace, stop after this step): runtime/callbacks.py
    callback: Callable | None = None
    image_latents: np.ndarray | None = None  # the image already as scaled latents (1, C, h, w): not encoded again
    denoising_start: float | None = None  # fraction of the schedule already done (SDXL refiner hand-off)
    denoising_end: float | None = None  # fraction after which to stop, returning noisy latents
    change_map: np.ndarray | None = None  # soft mode: (1, 1, H, W) grey levels in [0, 1], white = change fully
    masked_content: str = "original"  # "latent_noise" / "latent_nothing": what the masked latents start from
    control: Callable | None = None  # ControlNets: (step, steps, 4-channel model input, timestep) -> extra UNet feeds
    # Kandinsky 2.2: (repaint mask (1, 1, h, w), UNet channels after the latents (1, C + 1, h, w)), in latent space
    latent_masking: tuple | None = None
    # batched requests: each picture's rows (sum = batch), guided conditioning [all uncond rows, all cond rows];
    # None: one picture with all `batch` rows
    counts: tuple[int, ...] | None = None

    @property
    def guided(self) -> bool:
        return next(iter(self.conditioning.values())).shape[0] == 2 * self.batch


def encode_latents(models: LoopModels, image: np.ndarray, generator) -> np.ndarray:
    """VAE encode and sample the latent distribution, scaled: diffusers' _encode_vae_image (one draw per picture)."""
    mean, logvar = models.encode(image)
    xp = array_module(mean)
    sample = mean + xp.exp(0.5 * logvar) * xp.asarray(draw(generator, mean.shape))
    return models.vae_scaling_factor * sample


def run_timesteps(scheduler, steps: int, strength: float, denoising_start: float | None = None,
                  denoising_end: float | None = None) -> tuple[int, np.ndarray]:
    """diffusers' get_timesteps (SDXL's, with denoising_start) and its denoising_end cut: the begin
    index and the timesteps still to run."""
    scheduler.set_timesteps(steps)
    train_steps = scheduler.config["num_train_timesteps"]
    if denoising_start is None:
        init = min(int(steps * strength), steps)
        t_start = max(steps - init, 0)
        if steps - t_start < 1:
            fix = f"raise strength to at least {1 / steps:.3g} or use more steps"
            raise InvalidArgument("strength", f"strength={strength} with num_inference_steps={steps} leaves no "
                                  f"denoising step; {fix}", fix)
        begin = t_start * scheduler.order
    else:  # strength is replaced by the fraction already denoised
        cutoff = int(round(train_steps - denoising_start * train_steps))
        remaining = int((scheduler.timesteps < cutoff).sum())
        if scheduler.order == 2 and remaining % 2 == 0:
            remaining += 1  # never stop between a second-order scheduler's two halves
        begin = len(scheduler.timesteps) - remaining
    scheduler.begin_index = begin
    timesteps = scheduler.timesteps[begin:]
    if denoising_end is not None:
        cutoff = int(round(train_steps - denoising_end * train_steps))
        timesteps = timesteps[timesteps >= cutoff]
    if len(timesteps) < 1:
        fix = "use more steps or move them apart"
        raise InvalidArgument("denoising_end" if denoising_end is not None else "denoising_start",
                              f"denoising_start={denoising_start} / denoising_end={denoising_end} with "
                              f"num_inference_steps={steps} leave no denoising step; {fix}", fix)
    return begin, timesteps


@dataclass
class LoopState:
    """What the denoising loop carries from step to step; the step callback may replace its arrays."""
    latents: np.ndarray
    conditioning: dict  # the UNet's feeds besides the sample and timestep
    image_latents: np.ndarray | None  # the picture's latents, blended back outside the mask
    noise: np.ndarray  # the initial noise, re-used to noise image_latents to each step's level
    blend_mask: np.ndarray  # (B, 1, h, w): 1 = repaint; the 4-channel and soft blends, Kandinsky's paste
    unet_mask: np.ndarray | None = None  # 9-channel UNet inputs: the mask and the masked image's latents
    unet_masked: np.ndarray | None = None
    unet_extra: np.ndarray | None = None  # Kandinsky: [masked image latents, keep mask]
    free_after: list | None = None  # soft masks: after step i, where the model's latents are kept


def denoise(models: LoopModels, scheduler, request: Request, generator, progress: Callable = iter, xp=np) -> np.ndarray:
    """Final latents (B, C, h, w), as diffusers returns them with output_type='latent'.

    The request holds host (numpy) arrays; the loop runs on the array module `xp` (docs/architecture.md, "One loop"): numpy,
    or cupy, where the latents, masks and text embeddings stay on the GPU for the whole loop and the
    result is a device array. The noise is drawn on the host generator in diffusers' order and moved."""
    r = request
    begin, timesteps = run_timesteps(scheduler, r.num_inference_steps, r.strength, r.denoising_start,
                                     r.denoising_end)
    state = prepare_latents(models, scheduler, r, generator, begin, len(timesteps), xp)
    # 10. Denoising loop
    for i in progress(range(len(timesteps))):
        index, t = begin + i, timesteps[i]
        noise_pred = predict_noise(models, scheduler, r, state, i, len(timesteps), index, t, xp)
        state.latents = scheduler.step(noise_pred, index, state.latents, generator).astype(np.float32)
        blend_known(models, scheduler, r, state, i, len(timesteps), index, xp)
        if r.callback is not None and run_callback(models, r, state, i, t, xp):
            break
    if r.latent_masking is not None:  # KandinskyV22InpaintPipeline pastes the image latents once more after the loop
        state.latents = ((1 - state.blend_mask) * state.image_latents + state.blend_mask * state.latents
                         ).astype(np.float32)
    return state.latents


def _blends(models: LoopModels, r: Request) -> bool:
    """The 4-channel way: the picture's latents put back outside the mask after each step (also Kandinsky's)."""
    return models.unet_in_channels == 4 or r.latent_masking is not None


def prepare_latents(models: LoopModels, scheduler, r: Request, generator, begin: int, steps: int, xp) -> LoopState:
    """diffusers' "Prepare latent variables" and "Prepare mask latent variables", draws in its order."""
    noise_of = lambda shape: xp.asarray(draw(generator, shape))  # noqa: E731
    rows = _rows_of(r, xp)
    pictures = r.image.shape[0]
    image = xp.asarray(r.image)
    _, _, height, width = r.image.shape
    shape = (r.batch, models.latent_channels, height // models.vae_scale_factor, width // models.vae_scale_factor)
    full_strength = r.strength == 1.0
    latent_masked = r.latent_masking is not None  # Kandinsky: a 9-channel UNet and the blend
    blend = _blends(models, r)
    continuing = r.denoising_start is not None  # the latents are already partly denoised: no noise added

    # draw 1: the image's own latents, when the 4-channel blend, a partial strength or a hand-off needs them
    image_latents = None
    if r.image_latents is not None:
        image_latents = rows(xp.asarray(r.image_latents))
    elif blend or continuing or (r.latents is None and not full_strength):
        image_latents = rows(encode_latents(models, image, generator))
    # draw 2: the initial noise, unless the caller gave it (a hand-off draws it and starts from the image)
    noise = noise_of(shape) if continuing or r.latents is None else xp.asarray(r.latents, dtype=np.float32)
    mask = xp.asarray(r.latent_masking[0] if latent_masked else nearest_resize(r.mask, shape[2], shape[3]))
    copies = 2 if r.guided else 1
    state = LoopState(None, {name: xp.asarray(value) for name, value in r.conditioning.items()}, None, noise,
                      rows(mask))
    # draw 3: the masked image's latents. diffusers also computes them for 4-channel UNets and throws
    # them away (drawing the same noise without the VAE encode keeps the draws in step), except when the
    # image came as latents, which cannot be masked.
    if blend:
        if r.image_latents is None:
            draw(generator, (pictures, *shape[1:]))
        if latent_masked:
            state.unet_extra = rows(xp.asarray(r.latent_masking[1]), copies)
    else:
        masked_latents = encode_latents(models, xp.asarray(r.image * (r.mask < 0.5)), generator)
        state.unet_mask, state.unet_masked = rows(mask, copies), rows(masked_latents, copies)
    # beyond diffusers, drawn after diffusers' draws so the defaults keep them: draw 4, the image
    # latents a soft mask blends back (9-channel at strength 1 has none yet); draw 5, latent noise
    soft = r.change_map is not None
    if soft and image_latents is None:
        image_latents = rows(encode_latents(models, image, generator))
    if image_latents is not None and r.masked_content in ("latent_noise", "latent_nothing"):
        fresh = noise_of((pictures, *shape[1:])) if r.masked_content == "latent_noise" else 0.0
        fresh = rows(fresh) if pictures > 1 else fresh
        image_latents = ((1 - state.blend_mask) * image_latents + state.blend_mask * fresh).astype(np.float32)
    if continuing:
        latents = image_latents
    elif r.latents is None and not full_strength:
        latents = scheduler.add_noise(image_latents, noise, begin)
    else:
        latents = noise * scheduler.init_noise_sigma
    state.latents, state.image_latents = latents.astype(np.float32), image_latents
    if soft:  # after step i, free = left to the model from step i + 1 on (and at the end)
        change = area_resize(r.change_map, models.vae_scale_factor)
        state.free_after = [xp.asarray(change > max(steps - i - 2, 0) / steps) for i in range(steps)]
    return state


def predict_noise(models: LoopModels, scheduler, r: Request, state: LoopState, i: int, steps: int, index: int, t,
                  xp) -> np.ndarray:
    """The UNet's prediction for step i, guided: the model input scaled, the mask channels or ControlNet
    residuals fed, classifier-free guidance mixed."""
    model_input = xp.concatenate([state.latents] * 2) if r.guided else state.latents
    model_input = scheduler.scale_model_input(model_input, index)
    timestep = xp.full((model_input.shape[0],), t, dtype=np.float32)
    feeds = state.conditioning
    if r.control is not None:  # ControlNet residuals (runtime/control.py), in the loop's module
        feeds = {**feeds, **r.control(i, steps, model_input.astype(np.float32), timestep)}
    if state.unet_extra is not None:
        model_input = xp.concatenate([model_input, state.unet_extra], axis=1)
    elif state.unet_mask is not None:
        model_input = xp.concatenate([model_input, state.unet_mask, state.unet_masked], axis=1)
    pred = models.unet(model_input.astype(np.float32), timestep, feeds).astype(np.float32, copy=False)
    # a UNet that also predicts its variance (Kandinsky): guidance mixes the prediction; the variance is the
    # conditional half's, as diffusers takes it
    variance = pred[:, models.latent_channels:] if pred.shape[1] == 2 * models.latent_channels else None
    pred = pred[:, :models.latent_channels] if variance is not None else pred
    if r.guided:
        uncond, cond = xp.split(pred, 2)
        pred = uncond + r.guidance_scale * (cond - uncond)
        variance = None if variance is None else xp.split(variance, 2)[1]
    if variance is not None and getattr(scheduler, "reads_variance", False):
        pred = xp.concatenate([pred, variance], axis=1)
    return pred


def blend_known(models: LoopModels, scheduler, r: Request, state: LoopState, i: int, steps: int, index: int,
                xp) -> None:
    """The 4-channel blend (and soft masks'): outside the mask, the picture's latents noised to the next
    step's level replace what the model made."""
    soft = state.free_after is not None
    if not (_blends(models, r) or soft):
        return
    proper = state.image_latents
    if i < steps - 1:
        proper = scheduler.add_noise(state.image_latents, state.noise, index + 1)
    if soft:  # where(), so what the model made for a kept pixel cannot leak in, even as NaN
        state.latents = xp.where(state.free_after[i], state.latents, proper).astype(np.float32)
    else:
        state.latents = ((1 - state.blend_mask) * proper + state.blend_mask * state.latents).astype(np.float32)


def run_callback(models: LoopModels, r: Request, state: LoopState, i: int, t, xp) -> bool:
    """callback_on_step_end with the loop's arrays by diffusers' names, what it returns written back;
    True: stop after this step (StopDenoising, or diffusers' pipe._interrupt)."""
    arrays = {"latents": state.latents, **state.conditioning}
    if state.unet_extra is not None:
        arrays["extra"] = state.unet_extra
    elif _blends(models, r):  # diffusers' 4-channel mask has the guided batch's rows too: a copy, made only when asked
        if _wants(r.callback, "mask"):
            arrays["mask"] = xp.concatenate([state.blend_mask] * (2 if r.guided else 1))
    else:
        arrays.update(mask=state.unet_mask, masked_image_latents=state.unet_masked)
    try:
        changed, stop = r.callback(i, t, arrays)
    except StopDenoising:
        return True
    for name, value in changed.items():
        _write_back(state, name, value, arrays, _blends(models, r), r.batch, xp)
    return stop


def _write_back(state: LoopState, name: str, value, arrays: dict, blend: bool, batch: int, xp) -> None:
    """One array the step callback returned, checked, in its place in the loop's state."""
    if name == "latents":
        state.latents = _checked_callback_array(value, state.latents, name, xp)
    elif name in state.conditioning:
        state.conditioning = {**state.conditioning,
                              name: _checked_callback_array(value, state.conditioning[name], name, xp)}
    elif name == "extra":  # Kandinsky: the masked image latents and the keep mask
        old = state.unet_extra
        state.unet_extra = xp.concatenate([_checked_callback_array(v, o, n, xp) for v, o, n in zip(
            value, (old[:, :-1], old[:, -1:]), ("masked_image", "mask_image"))], axis=1)
        state.blend_mask = xp.repeat(1 - state.unet_extra[:1, -1:], batch, axis=0)
    elif name == "mask" and blend:
        state.blend_mask = _checked_callback_array(value, arrays["mask"], name, xp)[:batch]
    elif name == "mask":
        state.unet_mask = _checked_callback_array(value, state.unet_mask, name, xp)
    else:
        state.unet_masked = _checked_callback_array(value, state.unet_masked, name, xp)


def _rows_of(r: Request, xp) -> Callable:
    """Per-picture arrays (N, ...) -> the loop's rows: each picture's own rows in order, and with `copies`
    = 2 the whole block twice (the guided batch's uncond and cond halves)."""
    counts = r.counts or (r.batch,)
    if len(counts) != r.image.shape[0] or sum(counts) != r.batch:
        raise ValueError(f"Request.counts {counts} must give each of the {r.image.shape[0]} pictures its rows, "
                         f"{r.batch} in all")
    if len(counts) > 1 and (r.latent_masking is not None or r.control is not None or r.change_map is not None):
        raise ValueError("Kandinsky inputs, ControlNets and soft masks run one picture at a time; batch only "
                         "binary-mask requests without them")
    if len(counts) == 1:  # one picture: exactly the arrays of a single request
        return lambda x, copies=1: xp.repeat(x, counts[0] * copies, axis=0)
    return lambda x, copies=1: xp.concatenate([xp.repeat(x, list(counts), axis=0)] * copies)


def _wants(callback, name: str) -> bool:
    """Whether the step callback reads `name` (a plain callable: assume it does)."""
    wants = getattr(callback, "wants", None)
    return True if wants is None else wants(name)


def _checked_callback_array(changed, current, name: str, xp=np) -> np.ndarray:
    changed = xp.asarray(changed, dtype=np.float32)
    if changed.shape != current.shape or not bool(xp.isfinite(changed).all()):
        raise ValueError(f"callback_on_step_end returned {name} of shape {changed.shape}; return finite "
                         f"{current.shape} or None")
    return changed


def decode_latents(models: LoopModels, latents: np.ndarray) -> np.ndarray:
    """The VAE decode of latents of any array module, in that module (one host read: the NaN check)."""
    xp = array_module(latents)
    if models.vae_latents_mean is not None:
        mean, std = xp.asarray(models.vae_latents_mean), xp.asarray(models.vae_latents_std)
        latents = latents * std / models.vae_scaling_factor + mean
    else:
        latents = latents / models.vae_scaling_factor
    image = models.decode(latents.astype(np.float32))
    if not bool(array_module(image).isfinite(image).all()):
        raise FloatingPointError("the VAE decoder produced NaN or infinite values; the image would be garbage")
    return image
