"""The torch-side reference for prompt_syntax='a1111': AUTOMATIC1111's chunking and "Original" emphasis
computed with diffusers' own tokenizer (transformers) and text encoder, for the tiny test models.

Prompts are given as explicit runs, (text, weight) pairs and BREAK, so the reference shares nothing with
the engine's parser (that is checked against A1111's documented examples and the community pipeline's
parser separately). A1111 semantics, where diffusers' community lpw_stable_diffusion differs:
- each chunk is rescaled to its own unweighted mean (lpw: one mean over all chunks of a prompt);
- chunks hold 75 tokens plus BOS/EOS, padding as the tokenizer pads (lpw puts EOS last, after padding);
- no limit on the number of chunks (lpw: max_embeddings_multiples, 3 by default);
- prompts of a call are padded with empty chunks (the encoding of "") to the longest;
- SDXL: both encoders chunked alike, the pooled embedding from the first chunk;
- an unweighted chunk keeps its scale (A1111 computes mean / mean, which is 0/0 where a zero-bias final norm
  makes the mean exactly 0), and so does a weighted one whose mean is lost in rounding (MEAN_FLOOR).
"""
from __future__ import annotations

import numpy as np

from inpaintrt.runtime.prompt_syntax import MEAN_FLOOR

BREAK = "BREAK"
CHUNK = 75


def prompt_text(runs: list) -> str:
    """The A1111 prompt of these runs: weight 1 as plain text, others as (text:weight)."""
    parts = []
    for run in runs:
        if run == BREAK:
            parts.append(" BREAK ")
        else:
            text, weight = run
            parts.append(text if weight == 1 else f"({text}:{weight})")
    return "".join(parts)


def _chunks(tokenizer, runs: list) -> list[list[tuple[int, float]]]:
    found = [[]]
    for run in runs:
        if run == BREAK:
            found.append([])
            continue
        text, weight = run
        for token in tokenizer(text).input_ids[1:-1]:
            if len(found[-1]) == CHUNK:
                found.append([])
            found[-1].append((token, weight))
    return found


def encoder_reference(tokenizer, encoder, prompts: list[list], sdxl: bool, count: int | None = None):
    """(hidden (len(prompts), chunks x 77, width), pooled of the first chunks or None) as float32 numpy."""
    import torch

    per_prompt = [_chunks(tokenizer, runs) for runs in prompts]
    count = count or max(len(c) for c in per_prompt)
    seq = tokenizer.model_max_length
    hidden, pooled = [], []
    with torch.no_grad():
        for chunks in per_prompt:
            states = []
            for i, chunk in enumerate(chunks + [[]] * (count - len(chunks))):
                ids = [tokenizer.bos_token_id] + [t for t, _ in chunk] + [tokenizer.eos_token_id]
                ids += [tokenizer.pad_token_id] * (seq - len(ids))
                weights = torch.tensor([1.0] + [w for _, w in chunk] + [1.0] * (seq - 1 - len(chunk)))
                out = encoder(torch.tensor([ids]), output_hidden_states=True)
                z = out.hidden_states[-2][0] if sdxl else out[0][0]
                if i == 0 and sdxl and hasattr(encoder, "text_projection"):
                    pooled.append(out[0][0].numpy())
                mean = z.double().mean()
                z = z * weights[:, None]
                weighted = z.double().mean()
                if bool((weights != 1).any()) and abs(weighted) > MEAN_FLOOR * z.double().abs().mean():
                    z = z * (mean / weighted).float()
                states.append(z)
            hidden.append(torch.cat(states).numpy())
    hidden = np.stack(hidden)
    if not np.isfinite(hidden).all():
        raise AssertionError("broken reference: the torch text encoder gave non-finite hidden states for "
                             f"{prompts!r}; fix the test model, not the engine")
    return hidden, (np.stack(pooled) if pooled else None)


def sd_reference(pipe, prompts: list[list]) -> np.ndarray:
    return encoder_reference(pipe.tokenizer, pipe.text_encoder, prompts, sdxl=False)[0]


def sdxl_reference(pipe, prompts: list[list], prompts_2: list[list] | None = None):
    """(hidden, pooled) of an SDXL pipeline: both encoders (or a refiner's one), padded to a common count."""
    pairs = [(pipe.tokenizer, pipe.text_encoder, prompts),
             (pipe.tokenizer_2, pipe.text_encoder_2, prompts_2 or prompts)]
    pairs = [p for p in pairs if p[1] is not None]
    count = max(len(_chunks(tok, runs)) for tok, _, texts in pairs for runs in texts)
    found = [encoder_reference(tok, enc, texts, True, count) for tok, enc, texts in pairs]
    return np.concatenate([h for h, _ in found], axis=-1), found[-1][1]
