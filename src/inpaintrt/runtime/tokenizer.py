"""CLIP tokenization with the `tokenizers` library on the exported tokenizer.json (no transformers)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Tokenizer

from . import notices


class PromptTokenizer:
    def __init__(self, path: str | Path, max_length: int, pad_id: int):
        self.max_length = max_length
        self.pad_id = pad_id
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # the tokenizers library raises plain Exceptions for a damaged file
            raise ValueError(f"tokenizer file {path} cannot be read ({str(e)[:200]}); the engine directory is "
                             "damaged: re-export it with `inpaint-export`") from None
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.eos_id = self._tokenizer.token_to_id("<|endoftext|>")  # Kandinsky's prior masks what follows it
        self.bos_id = self._tokenizer.token_to_id("<|startoftext|>")
        self._vectors: dict[int, list[int]] = {}  # a multi-vector embedding's first id -> all its ids

    def knows(self, token: str) -> bool:
        return self._tokenizer.token_to_id(token) is not None

    def add_embedding(self, tokens: list[str]) -> list[int]:
        """Add a textual-inversion embedding's tokens (`tok`, `tok_1`, ...) as transformers' add_tokens does
        (matched in the normalized, lowercased text); its ids. The prompt's `tok` then reads as all of them."""
        self._tokenizer.add_tokens([AddedToken(token, normalized=True) for token in tokens])
        ids = [self._tokenizer.token_to_id(token) for token in tokens]
        if len(ids) > 1:
            self._vectors[ids[0]] = ids
        return ids

    def _expand(self, ids: list[int]) -> list[int]:
        """Each multi-vector embedding's first id followed by the rest (diffusers' maybe_convert_prompt)."""
        if not self._vectors:
            return ids
        return [i for first in ids for i in self._vectors.get(first, (first,))]

    def tokens(self, text: str) -> list[int]:
        """The ids of text alone: no BOS, EOS or padding, never truncated."""
        return self._expand(self._tokenizer.encode(text).ids[1:-1])

    def chunk_row(self, ids: list[int]) -> tuple[int, ...]:
        """One chunk as the encoder reads it: BOS, at most max_length - 2 ids, EOS, padding (a short
        prompt's row from __call__)."""
        row = [self.bos_id] + ids[: self.max_length - 2] + [self.eos_id]
        return tuple(row + [self.pad_id] * (self.max_length - len(row)))

    def __call__(self, prompts: list[str]) -> np.ndarray:
        """(len(prompts), max_length) int64 ids: BOS, tokens, EOS, padded; long prompts truncated with a warning."""
        rows = []
        for prompt, enc in zip(prompts, self._tokenizer.encode_batch(prompts)):
            ids = self._expand(enc.ids)
            if len(ids) > self.max_length:
                dropped = len(ids) - self.max_length
                notices.warn(
                    f"prompt {prompt[:40]!r}... is {len(ids)} tokens; CLIP reads {self.max_length}, "
                    f"so the last {dropped} were dropped",
                    stacklevel=3,
                )
                ids = ids[: self.max_length - 1] + ids[-1:]  # keep the end-of-text token
            rows.append(ids + [self.pad_id] * (self.max_length - len(ids)))
        return np.array(rows, dtype=np.int64)
