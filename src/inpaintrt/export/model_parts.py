"""The pieces every random-weight model shares: openai's CLIP tokenizer, a CLIP text encoder, the SD VAE.

Kept apart from models.py so the SD 1.x, SDXL and Kandinsky builders import them without importing
each other.
"""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path


def clip_bpe_path() -> Path:
    """Where openai's CLIP BPE merges file lies, inside the clip-anytorch wheel (not imported: it needs torchvision)."""
    spec = importlib.util.find_spec("clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "bpe_simple_vocab_16e6.txt.gz"
        if path.exists():
            return path
    raise RuntimeError(
        "openai's CLIP vocabulary was not found: install it with `pip install --no-deps clip-anytorch` "
        "(it ships bpe_simple_vocab_16e6.txt.gz)"
    )


def build_clip_tokenizer(model_max_length: int = 77):
    """openai's CLIP tokenizer (49408 tokens), built from the BPE merges the way CLIP's own code builds it."""
    from transformers import CLIPTokenizer

    merges = gzip.open(clip_bpe_path()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in merges]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = CLIPTokenizer(vocab={tok: i for i, tok in enumerate(vocab)}, merges=merges)
    tokenizer.model_max_length = model_max_length
    return tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def build_vae(a: dict, scaling_factor: float = 0.18215, force_upcast: bool = True):
    """The SD VAE layout (SD 1.x, 2.x and SDXL share it; SDXL scales latents by 0.13025)."""
    from diffusers import AutoencoderKL

    blocks = a["vae_blocks"]
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=blocks,
        down_block_types=("DownEncoderBlock2D",) * len(blocks),
        up_block_types=("UpDecoderBlock2D",) * len(blocks),
        latent_channels=4,
        layers_per_block=a["layers"],
        norm_num_groups=a["groups"],
        sample_size=a["sample_size"] * 8,
        scaling_factor=scaling_factor,
        force_upcast=force_upcast,
    ).eval()


def build_clip(hidden: int, layers: int, heads: int, projection: int | None = None, act: str = "quick_gelu"):
    """A CLIP text encoder with openai's vocabulary size; with `projection`, the pooled-output projection
    model SDXL's second encoder is (CLIPTextModelWithProjection)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden, intermediate_size=hidden * 4, hidden_act=act,
        num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=1, projection_dim=projection or hidden,
    )
    return (CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)).eval()
