"""A1111's prompt syntax: attention weights, BREAK, and prompts longer than CLIP's window.

Pure Python and numpy. What it reads, as AUTOMATIC1111's web UI does:

- `(text)` weighs text x1.1, `((text))` x1.21, `[text]` /1.1, `(text:1.3)` x1.3; brackets nest and multiply.
- `\\(`, `\\)`, `\\[`, `\\]`, `\\\\` are the literal characters; a backslash before anything else is dropped.
- An unclosed `(` or `[` weighs everything after it; a closing bracket with nothing open is plain text.
- `(text:abc)`: the weight is not a number, so `:abc` is text and the brackets are plain `( )`, i.e.
  "text:abc" x1.1. The same for a malformed number such as `(text:1.2.3)` (where A1111 itself raises).
- `BREAK` (uppercase, a word of its own) ends the current chunk; unlike A1111 it does so inside brackets too.

A prompt's tokens are read in chunks of 75 (77 with BOS and EOS); the encoder sees each chunk alone and the
hidden states are concatenated. A weighted chunk's hidden states are multiplied token-wise by the weights and
rescaled so that the chunk's mean is the unweighted one (A1111's default "Original" emphasis).
"""
from __future__ import annotations

import re
from typing import Callable, Optional

import numpy as np

from .errors import InvalidArgument

SYNTAXES = ("a1111", "plain")
CHUNK_TOKENS = 75  # prompt tokens per chunk: CLIP's 77 less BOS and EOS
ROUND, SQUARE = 1.1, 1 / 1.1
# A weighted chunk is rescaled to its unweighted mean only where its weighted mean stands above float32
# rounding (relative to the chunk's mean magnitude). Trained CLIPs sit far above it; a final norm with zero
# bias makes every token average to 0, and a ratio of two rounding errors is noise, or 0/0.
MEAN_FLOOR = 1e-4

# an escaped character, a lone backslash, an opening bracket, ":number)" closing a weight, a closing
# bracket, a run of ordinary text, or a colon that starts no weight
_PIECE = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|\]|[^\\()\[\]:]+|:")
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)

Part = Optional[tuple[str, float]]  # (text, weight), or None for BREAK


def check_syntax(value) -> str:
    if value not in SYNTAXES:
        raise InvalidArgument("prompt_syntax", f"prompt_syntax={value!r} is unknown; choose 'a1111' (weights like "
                              "(word:1.2), BREAK, prompts past 77 tokens) or 'plain' (diffusers': the text as is, "
                              "truncated to 77 tokens)", "use a1111 or plain")
    return value


def parse(text: str) -> list[Part]:
    """The prompt's text runs with their weights, BREAKs as None; neighbours of equal weight are merged."""
    parts: list = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for part in parts[start:]:
            if part is not None:
                part[1] *= factor

    for match in _PIECE.finditer(text):
        piece, number = match.group(0), match.group(1)
        weight = _number(number)
        if piece.startswith("\\"):
            parts.append([piece[1:], 1.0])
        elif piece == "(":
            round_open.append(len(parts))
        elif piece == "[":
            square_open.append(len(parts))
        elif weight is not None and round_open:
            scale(round_open.pop(), weight)
        elif number is not None and round_open:  # ":1.2.3)": text, then the bracket closes as a plain one
            parts.append([piece[:piece.rindex(")")], 1.0])
            scale(round_open.pop(), ROUND)
        elif piece == ")" and round_open:
            scale(round_open.pop(), ROUND)
        elif piece == "]" and square_open:
            scale(square_open.pop(), SQUARE)
        else:
            for i, run in enumerate(_BREAK.split(piece)):
                if i:
                    parts.append(None)
                parts.append([run, 1.0])
    for start in round_open:
        scale(start, ROUND)
    for start in square_open:
        scale(start, SQUARE)
    merged: list = []
    for part in parts or [["", 1.0]]:
        if part is not None and merged and merged[-1] is not None and merged[-1][1] == part[1]:
            merged[-1][0] += part[0]
        else:
            merged.append(part)
    return [None if part is None else (part[0], part[1]) for part in merged]


def _number(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def is_plain(parts: list[Part], text: str) -> bool:
    """Whether the prompt uses no syntax at all: one run, the whole text, weight 1."""
    return parts == [(text, 1.0)]


def chunks(parts: list[Part], tokenize: Callable[[str], list[int]]) -> list[tuple[list[int], list[float]]]:
    """(token ids, weights) per chunk of at most CHUNK_TOKENS tokens, without BOS/EOS; at least one chunk.
    A full chunk is closed when the next token comes; BREAK closes the current one (even when empty)."""
    found, ids, weights = [], [], []
    for part in parts:
        if part is None:
            found.append((ids, weights))
            ids, weights = [], []
            continue
        text, weight = part
        for token in tokenize(text):
            if len(ids) == CHUNK_TOKENS:
                found.append((ids, weights))
                ids, weights = [], []
            ids.append(token)
            weights.append(weight)
    if ids or not found:
        found.append((ids, weights))
    return found


def emphasize(hidden: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """hidden (chunks, tokens, width) times weights (chunks, tokens) token-wise, each weighted chunk then
    rescaled to its unweighted mean; chunks whose weights are all 1, or whose weighted mean is below
    MEAN_FLOOR of their magnitude, keep their scale."""
    out = hidden.copy()
    for i, (chunk, weight) in enumerate(zip(hidden, weights)):
        if np.all(weight == 1):
            continue
        scaled = chunk * weight.astype(hidden.dtype)[:, None]
        mean = scaled.mean(dtype=np.float64)
        well_defined = abs(mean) > MEAN_FLOOR * np.abs(scaled).mean(dtype=np.float64)
        out[i] = scaled * hidden.dtype.type(chunk.mean(dtype=np.float64) / mean) if well_defined else scaled
    return out
