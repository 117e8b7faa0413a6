"""Prompts to the UNet's text conditioning, per model family (DESIGN.md §9).

SD 1.x/2.x: the text encoder's last hidden state is `encoder_hidden_states`.
SDXL (diffusers' StableDiffusionXLInpaintPipeline.encode_prompt): the penultimate hidden states of
both encoders are concatenated (`prompt` to the first, `prompt_2` to the second), and the second
encoder's projected pooled output is `text_embeds`; a refiner has only the second encoder. With
`force_zeros_for_empty_prompt` and no negative prompt, the negative conditioning is zeros.
Each distinct prompt is encoded once per encoder and remembered.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..runtime.tokenizer import PromptTokenizer
from . import arguments as check

PROMPT_CACHE = 64  # distinct prompts per text encoder whose outputs are kept


@dataclass
class PromptArgs:
    """The prompt arguments of one call, as Engine.inpaint takes them."""
    prompt: object = None
    prompt_2: object = None
    negative_prompt: object = None
    negative_prompt_2: object = None
    prompt_embeds: object = None
    negative_prompt_embeds: object = None
    pooled_prompt_embeds: object = None
    negative_pooled_prompt_embeds: object = None


class TextConditioner:
    def __init__(self, root, manifest: dict, sessions: dict):
        self.model = manifest["model"]
        self.sdxl = self.model["family"] == "sdxl"
        self.encoders = self.model.get("text_encoders", ["text_encoder"])
        tokenizers = manifest.get("tokenizers") or {"text_encoder": manifest["tokenizer"]}
        self.tokenizers = {name: PromptTokenizer(root / t["file"], t["max_length"], t["pad_id"])
                           for name, t in tokenizers.items()}
        self.sessions = sessions
        components = manifest["components"]
        self.text_shape = (components["unet"]["inputs"][2]["shape"][1], components["unet"]["inputs"][2]["shape"][2])
        self.pooled_width = components["unet"]["inputs"][3]["shape"][1] if self.sdxl else None
        self._cache: dict[tuple[str, str], dict] = {}

    def _encode(self, component: str, prompts: list[str]) -> dict[str, np.ndarray]:
        """{output name: (len(prompts), ...)}, each distinct prompt run once and remembered."""
        missing = list(dict.fromkeys(p for p in prompts if (component, p) not in self._cache))
        if missing:
            outputs = self.sessions[component].run({"input_ids": self.tokenizers[component](missing)})
            for i, p in enumerate(missing):
                self._cache[(component, p)] = {name: value[i] for name, value in outputs.items()}
            while len(self._cache) > PROMPT_CACHE * len(self.encoders):
                self._cache.pop(next(iter(self._cache)))
        return {name: np.stack([self._cache[(component, p)][name] for p in prompts])
                for name in self._cache[(component, prompts[0])]}

    def _text(self, first: list[str], second: list[str]) -> dict[str, np.ndarray]:
        """The conditioning of these prompts (one per image) before repetition."""
        if not self.sdxl:
            return {"encoder_hidden_states": next(iter(self._encode("text_encoder", first).values()))}
        hidden, pooled = [], None
        for name, prompts in zip(self.encoders, [first, second] if len(self.encoders) == 2 else [first]):
            out = self._encode(name, prompts)
            hidden.append(out["hidden_states"])
            pooled = out.get("text_embeds", pooled)
        return {"encoder_hidden_states": np.concatenate(hidden, axis=-1), "text_embeds": pooled}

    def __call__(self, a: PromptArgs, per_prompt: int, guided: bool) -> tuple[dict, dict | None]:
        """(cond, uncond or None): {UNet input name: (prompts x per_prompt, ...)}."""
        self._check_family_arguments(a)
        if a.prompt is not None and a.prompt_embeds is not None:
            raise ValueError("pass either prompt or prompt_embeds, not both")
        if a.negative_prompt is not None and a.negative_prompt_embeds is not None:
            raise ValueError("pass either negative_prompt or negative_prompt_embeds, not both")
        if a.prompt_embeds is None:
            first = check.prompts("" if a.prompt is None else a.prompt, "prompt")
            second = first if a.prompt_2 is None else _matching(a.prompt_2, "prompt_2", len(first))
            cond = self._text(first, second)
        else:
            cond = self._given(a.prompt_embeds, a.pooled_prompt_embeds, "prompt_embeds", "pooled_prompt_embeds")
        count = len(cond["encoder_hidden_states"])
        uncond = None
        if not guided:
            pass
        elif a.negative_prompt_embeds is not None:
            uncond = self._given(a.negative_prompt_embeds, a.negative_pooled_prompt_embeds, "negative_prompt_embeds",
                                 "negative_pooled_prompt_embeds", count)
        elif self.sdxl and a.negative_prompt is None and self.model.get("force_zeros_for_empty_prompt"):
            uncond = {name: np.zeros_like(value) for name, value in cond.items()}
        else:
            negative = check.negatives(a.negative_prompt, count)
            negative_2 = negative if a.negative_prompt_2 is None else _matching(a.negative_prompt_2, "negative_prompt_2", count)
            uncond = self._text(negative, negative_2)
        repeat = lambda parts: {k: np.repeat(v, per_prompt, axis=0) for k, v in parts.items()}  # noqa: E731
        return repeat(cond), None if uncond is None else repeat(uncond)

    def _given(self, embeds, pooled, name: str, pooled_name: str, batch: int | None = None) -> dict:
        found = {"encoder_hidden_states": check.embeddings(embeds, name, *self.text_shape, batch=batch)}
        if self.sdxl:
            if pooled is None:
                raise ValueError(f"{name} was given without {pooled_name}; an SDXL UNet needs both "
                                 f"(engine.encode_prompt returns them together)")
            found["text_embeds"] = check.pooled(pooled, pooled_name, self.pooled_width, len(found["encoder_hidden_states"]))
        elif pooled is not None:
            raise ValueError(f"{pooled_name} is for SDXL engines; this engine is {self.model['family']}: leave it out")
        return found

    def _check_family_arguments(self, a: PromptArgs) -> None:
        for name in ("prompt_2", "negative_prompt_2"):
            if getattr(a, name) is None:
                continue
            if not self.sdxl:
                raise ValueError(f"{name} is for SDXL engines; this engine is {self.model['family']}: use "
                                 f"{name[:-2]} only")
            if len(self.encoders) == 1:
                raise ValueError(f"{name} is for SDXL engines with two text encoders; this refiner engine has one, "
                                 f"which reads {name[:-2]}: pass {name[:-2]} only")


def _matching(value, name: str, count: int) -> list[str]:
    found = check.prompts(value, name)
    if len(found) == 1:
        return found * count
    if len(found) != count:
        raise ValueError(f"{name} has {len(found)} entries but prompt has {count}; give one or {count}")
    return found


@dataclass
class SizeConditioning:
    """SDXL's micro-conditioning (diffusers' _get_add_time_ids); None means diffusers' default."""
    original_size: object = None
    target_size: object = None
    crops_coords_top_left: object = None
    negative_original_size: object = None
    negative_target_size: object = None
    negative_crops_coords_top_left: object = None
    aesthetic_score: object = None
    negative_aesthetic_score: object = None

    def given(self) -> list[str]:
        return [name for name, value in vars(self).items() if value is not None]

    def time_ids(self, model: dict, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """(time ids, negative time ids), each (1, n) float32, for an output of height x width."""
        aesthetic = model.get("requires_aesthetics_score", False)
        wrong = ["aesthetic_score", "negative_aesthetic_score"] if not aesthetic else ["target_size", "negative_target_size"]
        wrong = [name for name in wrong if getattr(self, name) is not None]
        if wrong:
            kind = "an aesthetic-score (refiner-style)" if aesthetic else "a size-conditioned (base/inpainting)"
            raise ValueError(f"{', '.join(wrong)} do not apply to this engine, which is {kind} SDXL model; leave them out")
        original = check.size_pair(self.original_size, "original_size") or (height, width)
        target = check.size_pair(self.target_size, "target_size") or (height, width)
        crop = check.size_pair(self.crops_coords_top_left, "crops_coords_top_left") or (0, 0)
        negative_original = check.size_pair(self.negative_original_size, "negative_original_size") or original
        negative_target = check.size_pair(self.negative_target_size, "negative_target_size") or target
        negative_crop = check.size_pair(self.negative_crops_coords_top_left, "negative_crops_coords_top_left") or (0, 0)
        if aesthetic:
            score = _score(self.aesthetic_score, "aesthetic_score", 6.0)
            negative_score = _score(self.negative_aesthetic_score, "negative_aesthetic_score", 2.5)
            ids, negative = original + crop + (score,), negative_original + negative_crop + (negative_score,)
        else:  # diffusers pairs the negative sizes with the positive crop here
            ids, negative = original + crop + target, negative_original + crop + negative_target
        return np.array([ids], np.float32), np.array([negative], np.float32)


def _score(value, name: str, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise ValueError(f"{name}={value!r} must be a finite number (diffusers' default is {default})")
    return float(value)
