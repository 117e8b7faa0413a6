"""callback_on_step_end in both of its forms.

- diffusers' form, `callback(pipe, step, timestep, callback_kwargs) -> dict`: `pipe` is the engine,
  `callback_kwargs` holds the tensors named in `callback_on_step_end_tensor_inputs` (diffusers' names,
  as arrays of the loop's module: numpy, or cupy on ort-cuda) and the returned dict replaces them;
  setting `pipe._interrupt = True` ends the loop after this step, as in diffusers.
- the earlier short form, `callback(step, timestep, latents) -> latents or None`.
A callable that accepts four positional arguments is taken as diffusers' form, one that accepts at most
three as the short form: the two cannot be confused, since each form's calls fail on the other.
Either may raise StopDenoising to finish early.

The loop hands over its own arrays under its own names (conditioning feeds, `mask` / `masked_image_latents`
of the 9-channel UNet, `blend_mask` of the 4-channel blend, Kandinsky's `extra` channels); this file
translates them to diffusers' names and back.
"""
from __future__ import annotations

import inspect
from typing import Callable

from .errors import InvalidArgument

NAMES = "callback_on_step_end_tensor_inputs"

# diffusers' _callback_tensor_inputs of the pipeline each kind of engine stands in for (a family's `callback`)
TENSOR_INPUTS = {
    "sd": ("latents", "prompt_embeds", "negative_prompt_embeds", "mask", "masked_image_latents"),
    "controlnet": ("latents", "prompt_embeds", "negative_prompt_embeds", "control_image", "mask",
                   "masked_image_latents"),
    "sdxl": ("latents", "prompt_embeds", "add_text_embeds", "add_time_ids", "mask", "masked_image_latents"),
    "kandinsky": ("latents", "image_embeds", "negative_image_embeds", "masked_image", "mask_image"),
}
# diffusers' name -> the loop's conditioning feed
FEEDS = {"prompt_embeds": "encoder_hidden_states", "add_text_embeds": "text_embeds", "add_time_ids": "time_ids",
         "image_embeds": "image_embeds"}
# negatives are shown but, as in diffusers (which concatenated them into the feeds already), not read back
NEGATIVES = {"negative_prompt_embeds": "encoder_hidden_states", "negative_image_embeds": "image_embeds"}


def diffusers_form(function) -> bool:
    """Whether `function` takes diffusers' four arguments (pipe, step, timestep, callback_kwargs)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # no signature to read (some builtins): the drop-in's form
        return True
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return True
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters) >= 4


def check_tensor_inputs(names, kind: str) -> None:
    """callback_on_step_end_tensor_inputs: a list of the names diffusers' pipeline of this kind allows."""
    valid = list(TENSOR_INPUTS[kind])
    if isinstance(names, str) or not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise InvalidArgument(NAMES, f"{NAMES}={names!r} must be a list of names from {valid}",
                              f"pass a list of names from {valid}")
    unknown = [n for n in names if n not in valid]
    if unknown:  # diffusers' check_inputs wording
        raise InvalidArgument(NAMES, f"{NAMES} has to be in {valid}, but found {unknown}",
                              f"leave out {unknown}; use names from {valid}")


class StepCallback:
    """Wraps the caller's callback for the denoising loop: `(step, timestep, loop arrays) -> replacements`."""

    def __init__(self, function: Callable, pipe, tensor_inputs, kind: str, missing: dict | None = None):
        if not callable(function):
            raise InvalidArgument("callback_on_step_end", f"callback_on_step_end must be a function, got "
                                  f"{type(function).__name__}", "pass a function (pipe, step, timestep, "
                                  "callback_kwargs) or (step, timestep, latents)")
        self.function, self.pipe, self.diffusers = function, pipe, diffusers_form(function)
        valid = TENSOR_INPUTS[kind]
        names = getattr(function, "tensor_inputs", None) or tensor_inputs  # diffusers' PipelineCallback carries them
        check_tensor_inputs(names, kind)
        if self.diffusers:
            for name in names:
                if name in (missing or {}):
                    raise InvalidArgument(NAMES, f"{NAMES}: {name!r} {missing[name]}; leave it out",
                                          f"leave {name!r} out")
        self.names, self.valid = list(names), valid
        if self.diffusers:
            pipe._interrupt = False  # diffusers resets it at the start of each call

    def wants(self, name: str) -> bool:
        """Whether this callback reads the loop's array `name` (the short form reads only the latents)."""
        return name in self.names if self.diffusers else name == "latents"

    def __call__(self, step: int, timestep, arrays: dict) -> tuple[dict, bool]:
        """(the loop's arrays to replace, whether to stop after this step)."""
        if not self.diffusers:
            changed = self.function(step, timestep, arrays["latents"])
            return ({} if changed is None else {"latents": changed}), False
        shown = {name: _view(name, arrays) for name in self.names}
        handed = dict(shown)  # the callback may assign into `shown` and return it
        returned = self.function(self.pipe, step, timestep, shown)
        if returned is None:
            returned = {}
        if not isinstance(returned, dict):
            raise InvalidArgument("callback_on_step_end", f"callback_on_step_end returned a "
                                  f"{type(returned).__name__}; diffusers' form returns the callback_kwargs dict "
                                  "(changed or not)", "return callback_kwargs from the callback")
        # diffusers ignores other keys too; what comes back as it was handed out (`return callback_kwargs`) is kept
        returned = {k: v for k, v in returned.items() if k in self.valid and v is not handed.get(k)}
        return _back(returned, arrays), bool(getattr(self.pipe, "_interrupt", False))


def _rows(arrays: dict) -> tuple[int, bool]:
    """(images made, whether the feeds hold [negative, positive] rows)."""
    batch = len(arrays["latents"])
    feed = next(iter(v for k, v in arrays.items() if k in FEEDS.values()), None)
    return batch, feed is not None and len(feed) == 2 * batch


def _view(name: str, arrays: dict):
    if name == "latents" or name in ("mask", "masked_image_latents"):
        return arrays[name]
    if name in FEEDS:
        return arrays[FEEDS[name]]
    if name in NEGATIVES:
        batch, guided = _rows(arrays)
        return arrays[NEGATIVES[name]][:batch] if guided else None
    if name == "masked_image":
        return arrays["extra"][:, :-1]
    if name == "mask_image":
        return arrays["extra"][:, -1:]
    raise InvalidArgument(NAMES, f"{NAMES}: {name!r} is not available from this engine", f"leave {name!r} out")


def _back(returned: dict, arrays: dict) -> dict:
    """The returned tensors under the loop's names; negatives (unused by diffusers after this point) dropped."""
    out = {}
    for name, value in returned.items():
        if value is None or name in NEGATIVES:
            continue
        if name in FEEDS and FEEDS[name] in arrays:
            out[FEEDS[name]] = value
        elif name in ("mask", "masked_image_latents", "latents"):
            out[name] = value
    masked, keep = returned.get("masked_image"), returned.get("mask_image")
    if "extra" in arrays and (masked is not None or keep is not None):  # Kandinsky's UNet channels after the latents
        out["extra"] = (arrays["extra"][:, :-1] if masked is None else masked,
                        arrays["extra"][:, -1:] if keep is None else keep)
    return out


def step_callback(function, pipe, tensor_inputs, kind: str, missing: dict | None = None) -> StepCallback | None:
    """The loop's callback for Engine.inpaint's callback_on_step_end (None: none), the names checked either way."""
    if function is None:
        check_tensor_inputs(tensor_inputs, kind)
        return None
    return StepCallback(function, pipe, tensor_inputs, kind, missing)
