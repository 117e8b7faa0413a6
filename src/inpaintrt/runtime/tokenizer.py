"""CLIP tokenization with the `tokenizers` library on the exported tokenizer.json (no transformers)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer


class PromptTokenizer:
    def __init__(self, path: str | Path, max_length: int, pad_id: int):
        self.max_length = max_length
        self.pad_id = pad_id
        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.eos_id = self._tokenizer.token_to_id("<|endoftext|>")  # Kandinsky's prior masks what follows it

    def __call__(self, prompts: list[str]) -> np.ndarray:
        """(len(prompts), max_length) int64 ids: BOS, tokens, EOS, padded; long prompts truncated with a warning."""
        rows = []
        for prompt, enc in zip(prompts, self._tokenizer.encode_batch(prompts)):
            ids = enc.ids
            if len(ids) > self.max_length:
                dropped = len(ids) - self.max_length
                warnings.warn(
                    f"prompt {prompt[:40]!r}... is {len(ids)} tokens; CLIP reads {self.max_length}, "
                    f"so the last {dropped} were dropped",
                    stacklevel=3,
                )
                ids = ids[: self.max_length - 1] + ids[-1:]  # keep the end-of-text token
            rows.append(ids + [self.pad_id] * (self.max_length - len(ids)))
        return np.array(rows, dtype=np.int64)
