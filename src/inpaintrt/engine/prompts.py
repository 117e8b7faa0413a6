"""Prompts to the UNet's text conditioning, per model family (docs/architecture.md, "One loop").

SD 1.x/2.x: the text encoder's last hidden state is `encoder_hidden_states`.
SDXL (diffusers' StableDiffusionXLInpaintPipeline.encode_prompt): the penultimate hidden states of
both encoders are concatenated (`prompt` to the first, `prompt_2` to the second), and the second
encoder's projected pooled output is `text_embeds`; a refiner has only the second encoder. With
`force_zeros_for_empty_prompt` and no negative prompt, the negative conditioning is zeros.
Each distinct prompt (or prompt chunk) is encoded once per encoder and remembered.

prompt_syntax "a1111" (the default; runtime/prompt_syntax.py) reads weights and BREAK and encodes long
prompts in chunks of 77 tokens, every prompt of a call padded with empty chunks to the longest; SDXL's
pooled embedding is the first chunk's. A call whose prompts all fit in one chunk and use no syntax takes
diffusers' path unchanged, as "plain" always does (long prompts truncated with a warning).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..runtime.errors import InvalidArgument
from ..runtime.prompt_syntax import check_syntax, chunks, emphasize, is_plain, parse
from ..runtime.tokenizer import PromptTokenizer
from . import arguments as check
from .families import family
from .plans import text_token_limit

PROMPT_CACHE = 64  # distinct prompts (or chunks) per text encoder whose outputs are kept


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
    prompt_syntax: object = "a1111"


class TextConditioner:
    def __init__(self, root, manifest: dict, sessions: dict, backend: str | None = None):
        self.model = manifest["model"]
        self.sdxl = family(self.model["family"]).micro_conditioning  # pooled embeddings and time ids
        self.encoders = self.model.get("text_encoders", ["text_encoder"])
        tokenizers = manifest.get("tokenizers") or {"text_encoder": manifest["tokenizer"]}
        self.tokenizers = {name: PromptTokenizer(root / t["file"], t["max_length"], t["pad_id"])
                           for name, t in tokenizers.items()}
        self.sessions = sessions
        components = manifest["components"]
        text = components["unet"]["inputs"][2]["shape"]
        self.seq = self.tokenizers[self.encoders[-1]].max_length  # tokens per chunk
        self.text_shape = (self.seq, text[2])
        self.pooled_width = components["unet"]["inputs"][3]["shape"][1] if self.sdxl else None
        # the most text tokens the UNet takes: any multiple of seq where its graph's text axis is dynamic
        self.max_tokens, self._limit = None, ""
        if isinstance(text[1], int):
            self.max_tokens = text[1]
            self._limit = (f"this engine's UNet was exported with a fixed {text[1]}-token text input (re-export it "
                           "with this inpaintrt's inpaint-export to take longer prompts)")
        limit = text_token_limit(manifest["tensorrt"]["plans"]) if backend == "tensorrt" else None
        if limit is not None and (self.max_tokens is None or limit < self.max_tokens):
            self.max_tokens = limit
            self._limit = f"this engine's TensorRT plans take at most {limit} text tokens (static profiles)"
        self._cache: dict[tuple, dict] = {}
        self._parses: dict[tuple[str, str], tuple[list, bool]] = {}

    def _encode(self, component: str, prompts: list[str]) -> dict[str, np.ndarray]:
        """{output name: (len(prompts), ...)}, each distinct prompt run once and remembered."""
        missing = list(dict.fromkeys(p for p in prompts if (component, p) not in self._cache))
        if missing:
            outputs = self.sessions[component].run({"input_ids": self.tokenizers[component](missing)})
            self._remember(component, missing, outputs)
        return {name: np.stack([self._cache[(component, p)][name] for p in prompts])
                for name in self._cache[(component, prompts[0])]}

    def _encode_rows(self, component: str, rows: list[tuple[int, ...]]) -> dict[str, np.ndarray]:
        """As _encode, for chunks given as token-id rows."""
        missing = list(dict.fromkeys(r for r in rows if (component, r) not in self._cache))
        if missing:
            outputs = self.sessions[component].run({"input_ids": np.array(missing, dtype=np.int64)})
            self._remember(component, missing, outputs)
        return {name: np.stack([self._cache[(component, r)][name] for r in rows])
                for name in self._cache[(component, rows[0])]}

    def _remember(self, component: str, keys: list, outputs: dict) -> None:
        for i, key in enumerate(keys):
            self._cache[(component, key)] = {name: value[i] for name, value in outputs.items()}
        while len(self._cache) > PROMPT_CACHE * len(self.encoders):
            self._cache.pop(next(iter(self._cache)))

    def _per_encoder(self, first: list[str], second: list[str]):
        return zip(self.encoders, [first, second] if len(self.encoders) == 2 else [first])

    def _text(self, first: list[str], second: list[str], chunk_count: int | None) -> dict[str, np.ndarray]:
        """The conditioning of these prompts (one per image) before repetition; chunk_count None: diffusers' path."""
        if chunk_count is not None:
            hidden, pooled = zip(*(self._chunked(name, prompts, chunk_count)
                                   for name, prompts in self._per_encoder(first, second)))
            found = {"encoder_hidden_states": np.concatenate(hidden, axis=-1)}
            return dict(found, text_embeds=pooled[-1]) if self.sdxl else found
        if not self.sdxl:
            return {"encoder_hidden_states": next(iter(self._encode("text_encoder", first).values()))}
        hidden, pooled = [], None
        for name, prompts in self._per_encoder(first, second):
            out = self._encode(name, prompts)
            hidden.append(out["hidden_states"])
            pooled = out.get("text_embeds", pooled)
        return {"encoder_hidden_states": np.concatenate(hidden, axis=-1), "text_embeds": pooled}

    def _parsed(self, component: str, prompt: str) -> tuple[list, bool]:
        """(chunks of (token ids, weights), whether the prompt is one chunk without syntax)."""
        key = (component, prompt)
        if key not in self._parses:
            parts = parse(prompt)
            found = chunks(parts, self.tokenizers[component].tokens)
            self._parses[key] = (found, len(found) == 1 and is_plain(parts, prompt))
            while len(self._parses) > 4 * PROMPT_CACHE:
                self._parses.pop(next(iter(self._parses)))
        return self._parses[key]

    def _chunked(self, component: str, prompts: list[str], count: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(hidden states (len(prompts), count x seq, width), the first chunks' pooled output or None)."""
        tokenizer = self.tokenizers[component]
        rows, weights = [], []
        for prompt in prompts:
            found = self._parsed(component, prompt)[0]
            for ids, w in found + [([], [])] * (count - len(found)):  # empty chunks: the encoding of ""
                rows.append(tokenizer.chunk_row(ids))
                weights.append([1.0] + w + [1.0] * (self.seq - 1 - len(w)))
        weights = np.array(weights, np.float32).reshape(len(prompts), count, self.seq)
        hidden = pooled = None
        for value in self._encode_rows(component, rows).values():
            if value.ndim == 3:
                value = value.reshape(len(prompts), count, self.seq, -1)
                hidden = np.stack([emphasize(v, w) for v, w in zip(value, weights)])
                hidden = hidden.reshape(len(prompts), count * self.seq, -1)
            else:
                pooled = value.reshape(len(prompts), count, -1)[:, 0]
        return hidden, pooled

    def _chunk_count(self, syntax: str, texts: list[tuple], given: list[dict]) -> int | None:
        """The chunks every prompt of the call is padded to, or None for diffusers' path: plain syntax, or
        every prompt one chunk without syntax and no longer embeddings given."""
        if syntax == "plain":
            return None
        lengths = [g["encoder_hidden_states"].shape[1] // self.seq for g in given]
        simple = all(n == 1 for n in lengths)
        for first, second in texts:
            for name, prompts in self._per_encoder(first, second):
                for prompt in prompts:
                    found, plain = self._parsed(name, prompt)
                    lengths.append(len(found))
                    simple = simple and plain
        if simple:
            return None
        count = max(lengths)
        if self.max_tokens is not None and count * self.seq > self.max_tokens:
            fix = (f"shorten the prompts to {self.seq - 2} tokens without BREAK, or pass prompt_syntax='plain' to "
                   "truncate them as diffusers does")
            raise InvalidArgument("prompt", f"prompt needs {count} chunks of {self.seq} tokens ({count * self.seq} "
                                  f"tokens, the negative prompt padded to the same); {self._limit}. {fix[0].upper()}"
                                  f"{fix[1:]}", fix)
        return count

    def __call__(self, a: PromptArgs, per_prompt: int, guided: bool) -> tuple[dict, dict | None]:
        """(cond, uncond or None): {UNet input name: (prompts x per_prompt, ...)}."""
        self._check_family_arguments(a)
        syntax = check_syntax(a.prompt_syntax)
        if a.prompt is not None and a.prompt_embeds is not None:
            raise InvalidArgument("prompt", "pass either prompt or prompt_embeds, not both",
                                  "leave out prompt or prompt_embeds")
        if a.negative_prompt is not None and a.negative_prompt_embeds is not None:
            raise InvalidArgument("negative_prompt", "pass either negative_prompt or negative_prompt_embeds, not both",
                                  "leave out negative_prompt or negative_prompt_embeds")
        cond = uncond = cond_texts = uncond_texts = None
        if a.prompt_embeds is None:
            first = check.prompts("" if a.prompt is None else a.prompt, "prompt")
            cond_texts = (first, first if a.prompt_2 is None else _matching(a.prompt_2, "prompt_2", len(first)))
        else:
            cond = self._given(a.prompt_embeds, a.pooled_prompt_embeds, "prompt_embeds", "pooled_prompt_embeds")
        count = len(cond_texts[0]) if cond is None else len(cond["encoder_hidden_states"])
        zeros = False
        if not guided:
            pass
        elif a.negative_prompt_embeds is not None:
            uncond = self._given(a.negative_prompt_embeds, a.negative_pooled_prompt_embeds, "negative_prompt_embeds",
                                 "negative_pooled_prompt_embeds", count)
        elif self.sdxl and a.negative_prompt is None and self.model.get("force_zeros_for_empty_prompt"):
            zeros = True
        else:
            negative = check.negatives(a.negative_prompt, count)
            negative_2 = negative if a.negative_prompt_2 is None else _matching(a.negative_prompt_2, "negative_prompt_2", count)
            uncond_texts = (negative, negative_2)
        chunk_count = self._chunk_count(syntax, [t for t in (cond_texts, uncond_texts) if t is not None],
                                        [g for g in (cond, uncond) if g is not None])
        if cond is None:
            cond = self._text(*cond_texts, chunk_count)
        if uncond_texts is not None:
            uncond = self._text(*uncond_texts, chunk_count)
        elif zeros:
            uncond = {name: np.zeros_like(value) for name, value in cond.items()}
        if uncond is not None:
            _same_length(cond, uncond, a)
        repeat = lambda parts: {k: np.repeat(v, per_prompt, axis=0) for k, v in parts.items()}  # noqa: E731
        return repeat(cond), None if uncond is None else repeat(uncond)

    def _given(self, embeds, pooled, name: str, pooled_name: str, batch: int | None = None) -> dict:
        found = {"encoder_hidden_states": check.embeddings(embeds, name, *self.text_shape, batch=batch)}
        tokens = found["encoder_hidden_states"].shape[1]
        if self.max_tokens is not None and tokens > self.max_tokens:
            fix = f"pass at most {self.max_tokens} tokens"
            raise InvalidArgument(name, f"{name} has {tokens} tokens; {self._limit}: {fix}", fix)
        if self.sdxl:
            if pooled is None:
                raise InvalidArgument(pooled_name, f"{name} was given without {pooled_name}; an SDXL UNet needs both "
                                      f"(engine.encode_prompt returns them together)", f"pass {pooled_name} too")
            found["text_embeds"] = check.pooled(pooled, pooled_name, self.pooled_width, len(found["encoder_hidden_states"]))
        elif pooled is not None:
            raise InvalidArgument(pooled_name, f"{pooled_name} is for SDXL engines; this engine is "
                                  f"{self.model['family']}: leave it out", "leave it out")
        return found

    def _check_family_arguments(self, a: PromptArgs) -> None:
        for name in ("prompt_2", "negative_prompt_2"):
            if getattr(a, name) is None:
                continue
            if not self.sdxl:
                raise InvalidArgument(name, f"{name} is for SDXL engines; this engine is {self.model['family']}: "
                                      f"use {name[:-2]} only", f"leave it out; pass {name[:-2]} only")
            if len(self.encoders) == 1:
                raise InvalidArgument(name, f"{name} is for SDXL engines with two text encoders; this refiner engine "
                                      f"has one, which reads {name[:-2]}: pass {name[:-2]} only",
                                      f"leave it out; pass {name[:-2]} only")


def _same_length(cond: dict, uncond: dict, a: PromptArgs) -> None:
    """The guided halves run as one UNet batch, so their text conditioning must be equally long."""
    mine, theirs = cond["encoder_hidden_states"].shape[1], uncond["encoder_hidden_states"].shape[1]
    if mine == theirs:
        return
    name = "prompt" if a.prompt_embeds is None else "prompt_embeds"
    negative = "negative_prompt" if a.negative_prompt_embeds is None else "negative_prompt_embeds"
    fix = ("pass embeddings of the same length (engine.encode_prompt returns matching ones), or prompts with "
           "prompt_syntax='a1111', which pads the shorter with empty chunks")
    raise InvalidArgument(negative, f"{negative} gives {theirs} tokens of text conditioning but {name} gives {mine}; "
                          f"they must be equally long: {fix}", fix)


def _matching(value, name: str, count: int) -> list[str]:
    found = check.prompts(value, name)
    if len(found) == 1:
        return found * count
    if len(found) != count:
        raise InvalidArgument(name, f"{name} has {len(found)} entries but prompt has {count}; give one or {count}",
                              f"give one {name} or {count}")
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
            raise InvalidArgument(wrong[0], f"{', '.join(wrong)} do not apply to this engine, which is {kind} SDXL "
                                  "model; leave them out", "leave them out")
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
    return default if value is None else check.real(value, name, meaning=f"diffusers' default is {default}")
