"""Textual inversion at load: new prompt tokens whose vectors extend the text encoders' token tables.

As diffusers' load_textual_inversion: each file gives one token (its vectors `tok`, `tok_1`, ... when it
holds several, and the prompt's `tok` stands for all of them, as maybe_convert_prompt does); the
tokens join the tokenizer after its vocabulary and their vectors are appended to the token-embedding
table, which reaches ONNX Runtime as an initializer override of a larger table (the exported Gather
takes any row count). Nothing on disk changes.

Files: A1111's `.pt` (`string_to_param`) and `.safetensors` (`emb_params`), diffusers' `learned_embeds`
(`{token: vectors}`), a bare tensor, and SDXL's `clip_l` / `clip_g` pairs (one table per encoder).
`.pt`/`.bin` are read by engine/torch_pickle.py, which refuses any pickle beyond tensors. The token is
the one given, else a diffusers file's own key, else the file's name without extension (as A1111 names
embeddings).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..runtime.errors import InvalidArgument
from ..runtime.tokenizer import PromptTokenizer
from .families import Family, families_with, family
from .manifest import file_digest
from .onnx_weights import float_initializers
from .safetensors_io import SafetensorsError, read_file
from .torch_pickle import read_torch_file

FIELD = "embeddings"
SUFFIXES = (".pt", ".bin", ".safetensors")
TABLE = "token_embedding.weight"  # the exported CLIP text encoders' token table ends so
SDXL_KEYS = {"text_encoder": "clip_l", "text_encoder_2": "clip_g"}


class EmbeddingError(InvalidArgument):
    """An embedding this engine cannot take: the message names the file and ends with the fix."""

    def __init__(self, message: str, fix: str):
        super().__init__(FIELD, f"{message}; {fix}", fix)


@dataclass
class Embedding:
    path: Path
    token: str
    vectors: dict  # text encoder -> (n, width) float32
    sha256: str

    @property
    def tokens(self) -> list[str]:
        count = len(next(iter(self.vectors.values())))
        return [self.token] + [f"{self.token}_{i}" for i in range(1, count)]

    def describe(self) -> dict:
        return {"name": self.path.name, "token": self.token, "vectors": len(self.tokens), "sha256": self.sha256}


def parse_spec(spec) -> tuple[str, str | None]:
    """A (path, token) pair, a path, or "FILE[:TOKEN]" (the command lines' form) -> (path, token or None)."""
    if isinstance(spec, (tuple, list)):
        if len(spec) != 2 or not isinstance(spec[1], (str, type(None))):
            raise EmbeddingError(f"an embedding is a path or (path, token), got {spec!r}",
                                 "pass [\"file.pt\", (\"file.safetensors\", \"mytoken\")]")
        return str(spec[0]), spec[1] or None
    text = str(spec)
    head, sep, tail = text.rpartition(":")
    if sep and head and tail and "/" not in tail and "\\" not in tail and not Path(text).is_file():
        return head, tail
    return text, None


def read_embedding(path: Path, token: str | None, widths: dict[str, int], record: Family) -> Embedding:
    """One file's token and vectors per text encoder ({encoder: table width}), checked."""
    own_token, found = read_vectors(path)
    token = token or own_token or path.stem
    if record.micro_conditioning:  # SDXL's text encoders: one set of vectors each
        if set(found) != {"clip_l", "clip_g"}:
            raise EmbeddingError(f"embedding {path.name} holds one set of vectors; an SDXL engine needs an "
                                 "SDXL embedding with clip_l and clip_g vectors (one per text encoder)",
                                 "use the SDXL version of the embedding")
        vectors = {encoder: found[SDXL_KEYS[encoder]] for encoder in widths}
    elif "clip_l" in found or "clip_g" in found:
        raise EmbeddingError(f"embedding {path.name} is an SDXL embedding (clip_l/clip_g vectors); this "
                             f"engine is {record.name}", "use the SD 1.x/2.x version of the embedding")
    else:
        vectors = {encoder: found[""] for encoder in widths}
    for encoder, array in vectors.items():
        _check_width(path, encoder, array, widths[encoder])
    digest = file_digest(path)
    return Embedding(path, token, {e: np.ascontiguousarray(v.reshape(-1, v.shape[-1])) for e, v in vectors.items()},
                     digest)


def read_vectors(path: Path) -> tuple[str | None, dict[str, np.ndarray]]:
    """(the token the file names or None, its vectors: {"": ...} or {"clip_l": ..., "clip_g": ...}), each
    checked for what needs no engine: a readable file of float, finite, (vectors, width) tensors."""
    if not path.is_file():
        raise EmbeddingError(f"embedding file {str(path)!r} does not exist",
                             f"pass an existing {', '.join(SUFFIXES)} textual-inversion file")
    if path.suffix.lower() not in SUFFIXES:
        raise EmbeddingError(f"embedding file {path.name} is a {path.suffix or 'suffix-less'} file; "
                             f"textual-inversion files here are {', '.join(SUFFIXES)}",
                             "convert it to .safetensors (PNG-embedded embeddings are not read)")
    token, found = _vectors(path, _read_file(path))
    for array in found.values():
        if array.ndim not in (1, 2) or array.size == 0:
            raise EmbeddingError(f"embedding {path.name} has vectors of shape {list(array.shape)}; a textual "
                                 "inversion is (vectors, width)", "the file is damaged or of another kind")
        if not np.isfinite(array).all():
            raise EmbeddingError(f"embedding {path.name} has NaN or infinite values", "the file is damaged")
    return token, found


def _read_file(path: Path):
    if path.suffix.lower() != ".safetensors":
        return read_torch_file(path, FIELD)
    try:
        return read_file(path)[0]
    except SafetensorsError as e:  # every header claim is checked before anything is read (safetensors_io.py)
        raise EmbeddingError(f"embedding file {path.name} cannot be read as safetensors: {e}",
                             "the file is damaged or of another kind; download or save it again") from None
    except OSError as e:
        raise EmbeddingError(f"embedding file {path} cannot be read ({e})", "check the path and its permissions") from None


def _vectors(path: Path, content) -> tuple[str | None, dict[str, np.ndarray]]:
    """(the token the file names or None, {"": vectors} or {"clip_l": ..., "clip_g": ...})."""
    if isinstance(content, np.ndarray):
        return None, {"": content}
    if isinstance(content, dict):
        if "clip_l" in content or "clip_g" in content:
            return None, {k: _array(path, content, k) for k in ("clip_l", "clip_g") if k in content}
        if "string_to_param" in content:  # A1111's .pt
            params = content["string_to_param"]
            if isinstance(params, dict) and len(params) == 1:
                return None, {"": _array(path, params, next(iter(params)))}
        elif "emb_params" in content:  # A1111's .safetensors
            return None, {"": _array(path, content, "emb_params")}
        elif len(content) == 1:  # diffusers' learned_embeds: {token: vectors}
            key = next(iter(content))
            return str(key), {"": _array(path, content, key)}
    keys = sorted(map(str, content))[:6] if isinstance(content, dict) else type(content).__name__
    raise EmbeddingError(f"embedding {path.name} is no textual-inversion file this engine reads (it holds "
                         f"{keys})", "pass an A1111 (.pt, .safetensors), diffusers (learned_embeds) or SDXL "
                         "(clip_l/clip_g) embedding")


def _array(path: Path, content: dict, key) -> np.ndarray:
    value = content[key]
    if not isinstance(value, np.ndarray):
        raise EmbeddingError(f"embedding {path.name}: {key} is a {type(value).__name__}, not a tensor",
                             "the file is damaged or of another kind")
    if not np.issubdtype(value.dtype, np.floating):
        raise EmbeddingError(f"embedding {path.name}: {key} is {value.dtype}; embedding vectors are float",
                             "the file is damaged or of another kind")
    return value.astype(np.float32)


def _check_width(path: Path, encoder: str, array: np.ndarray, width: int) -> None:
    if array.shape[-1] != width:
        raise EmbeddingError(f"embedding {path.name} has vectors {array.shape[-1]} wide, but this engine's "
                             f"{encoder} takes {width}", "use the embedding made for this model family "
                             "(SD 1.x: 768, SD 2.x: 1024, SDXL: 768 + 1280)")


class Embeddings:
    """The loaded embeddings: their tokens per tokenizer and each text-encoder graph's larger token table."""

    def __init__(self, root: Path, manifest: dict, loaded: list[Embedding]):
        self.root, self.manifest, self.loaded = root, manifest, loaded
        tokenizers = manifest.get("tokenizers") or {"text_encoder": manifest["tokenizer"]}
        self.ids: dict[str, list[int]] = {}
        for encoder in loaded[0].vectors:
            info = tokenizers[encoder]
            scratch = PromptTokenizer(root / info["file"], info["max_length"], info["pad_id"])
            self.ids[encoder] = self._add(scratch, encoder)
        self._tables: dict[str, tuple[str, np.ndarray]] = {}

    def _add(self, tokenizer: PromptTokenizer, encoder: str) -> list[int]:
        """Add every embedding's tokens to `tokenizer`, refusing those it knows; the ids, in order."""
        ids = []
        for embedding in self.loaded:
            known = [t for t in embedding.tokens if tokenizer.knows(t)]
            if known:
                raise EmbeddingError(f"embedding {embedding.path.name}: token {known[0]!r} is already in the "
                                     f"{encoder} vocabulary (or given by another embedding)",
                                     "give the embedding another token: FILE:TOKEN, or (path, token)")
            ids += tokenizer.add_embedding(embedding.tokens)
        return ids

    def install(self, tokenizers: dict) -> list[dict]:
        """Add the tokens to the engine's own tokenizers (the ids the tables were built for); what
        `engine.embeddings` reports."""
        for encoder, ids in self.ids.items():
            if self._add(tokenizers[encoder], encoder) != ids:
                raise RuntimeError(f"{encoder}'s tokenizer gave other ids than planned")
        return self.describe()

    def for_graph(self, component: str, graph_file: str) -> dict[str, np.ndarray]:
        """{token table initializer: the table with the embeddings' rows} for a text-encoder graph."""
        if component not in self.ids:
            return {}
        name, table = self._table(graph_file)
        ids = self.ids[component]
        grown = np.zeros((max(table.shape[0], max(ids) + 1), table.shape[1]), table.dtype)
        grown[: table.shape[0]] = table
        rows = np.concatenate([e.vectors[component] for e in self.loaded])
        if rows.shape[1] != table.shape[1]:
            raise EmbeddingError(f"{graph_file}'s token table is {table.shape[1]} wide, the embeddings "
                                 f"{rows.shape[1]}", "re-export the engine")
        grown[ids] = rows.astype(table.dtype)
        return {name: grown}

    def _table(self, graph_file: str) -> tuple[str, np.ndarray]:
        if graph_file not in self._tables:
            found = [(n, a) for n, _, a in float_initializers(self.root, graph_file, lambda n: n.endswith(TABLE))]
            if len(found) != 1 or found[0][1].ndim != 2:
                raise EmbeddingError(f"{graph_file} holds no single token-embedding table "
                                     f"(*{TABLE}) to extend", "re-export the engine with this inpaintrt's "
                                     "inpaint-export")
            self._tables[graph_file] = found[0]
        return self._tables[graph_file]

    def describe(self) -> list[dict]:
        return [e.describe() for e in self.loaded]


def prepare_embeddings(root: Path, manifest: dict, specs) -> Embeddings | None:
    """The checked embeddings of `specs` ([path or (path, token) or "FILE:TOKEN", ...]), or None for none."""
    if not specs:
        return None
    if isinstance(specs, (str, Path)):
        raise EmbeddingError(f"embeddings is one path ({specs!r}); it is a list",
                             f"pass embeddings=[{str(specs)!r}]")
    record = family(manifest["model"]["family"])
    if not record.loras:
        raise EmbeddingError(f"textual-inversion embeddings apply to {', '.join(families_with('loras'))} engines; "
                             f"this engine is {record.name}", "leave embeddings out")
    widths = {encoder: _width(manifest["components"][encoder])
              for encoder in manifest["model"].get("text_encoders", ["text_encoder"])}
    loaded = [read_embedding(Path(path), token, widths, record) for path, token in map(parse_spec, specs)]
    return Embeddings(root, manifest, loaded)


def _width(component: dict) -> int:
    """A CLIP text encoder's token vectors are as wide as its hidden states."""
    hidden = next(o for o in component["outputs"] if o["name"] in ("last_hidden_state", "hidden_states"))
    return int(hidden["shape"][-1])


class WeightOverrides:
    """LoRA-fused weights and the embeddings' grown token tables, as one source of initializer overrides
    per graph (what open_backend takes as `lora`)."""

    def __init__(self, lora, embeddings: Embeddings):
        self.lora, self.embeddings = lora, embeddings

    def for_graph(self, component: str, graph_file: str) -> dict[str, np.ndarray]:
        found = dict(self.lora.for_graph(component, graph_file)) if self.lora is not None else {}
        found.update(self.embeddings.for_graph(component, graph_file))
        return found


def with_embeddings(lora, embeddings: Embeddings | None):
    """What open_backend takes as its weight overrides: the LoRAs', plus the embeddings' tables if any."""
    return lora if embeddings is None else WeightOverrides(lora, embeddings)


def embedding_pairs(specs: list[str]) -> list[list]:
    """[[absolute path, token or None], ...] from FILE[:TOKEN] (absolute: Ray replicas may run elsewhere);
    a missing or damaged file is refused here, before any engine loads."""
    pairs = []
    for path, token in map(parse_spec, specs or []):
        read_vectors(Path(path))  # a damaged file is refused here too, before any engine loads
        pairs.append([str(Path(path).resolve()), token])
    return pairs
