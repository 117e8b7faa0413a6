"""Read .safetensors files with numpy alone, believing nothing the header says before checking it.

The format: 8 bytes (little-endian) giving the header's length N, N bytes of JSON
`{name: {"dtype", "shape", "data_offsets": [start, end]}, "__metadata__": {str: str}}`, then the data.
A damaged or hostile file may claim anything, so each claim is checked against the file before it is
used: the header's length against the file's size (a header claiming 10 GB is refused, not
allocated), each key once, each tensor's byte range inside the data and equal to its shape times its
dtype's size. Tensors are then read one at a time from their own byte range.

Read here rather than with safetensors' numpy API, which refuses bf16 (the dtype many LoRAs are saved
in; safetensors' BF16 is the top 16 bits of a float32). LoRA files (engine/lora.py), embeddings
(engine/textual_inversion.py) and single-file checkpoints before export (export/loading.py) use it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .manifest import DuplicateKey, unique_keys

MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header
# safetensors dtype -> numpy dtype ("bf16": decoded to float32)
DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "bf16", "I64": "<i8", "I32": "<i4", "I16": "<i2",
          "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}
SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4,
         "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1}
FLOATS = ("F64", "F32", "F16", "BF16")


class SafetensorsError(ValueError):
    """What is wrong with a file (the caller's error names the file and the fix)."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOATS


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict]:
    """({name: TensorInfo}, metadata) of a safetensors file, every claim checked against its size."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SafetensorsError(f"it has {size} bytes, fewer than a safetensors header's 8")
        length = int.from_bytes(head, "little")
        if length > size - 8:
            raise SafetensorsError(f"its header claims {length} bytes but the file has {size} (truncated, or not "
                                   "a safetensors file)")
        if length > MAX_HEADER:
            raise SafetensorsError(f"its header claims {length} bytes, more than safetensors allows ({MAX_HEADER})")
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=unique_keys)
    except DuplicateKey as e:
        raise SafetensorsError(f"its header {e}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise SafetensorsError(f"its header is not JSON ({str(e)[:120]}): not a safetensors file, or damaged") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"its header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise SafetensorsError("its __metadata__ is not an object")
    base, data = 8 + length, size - 8 - length
    return {key: _info(key, entry, base, data) for key, entry in header.items()}, metadata


def bf16_to_float32(halves: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (uint16) as float32: a bf16 is the top half of a float32."""
    return (halves.astype(np.uint32) << 16).view(np.float32)


def _info(key: str, entry, base: int, data: int) -> TensorInfo:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise SafetensorsError(f"its header entry {key!r} lacks dtype, shape or data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in SIZES:
        raise SafetensorsError(f"{key} has the unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise SafetensorsError(f"{key} has the shape {str(shape)[:60]}, not a list of sizes")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(n) is int for n in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise SafetensorsError(f"{key} has the data_offsets {str(offsets)[:60]}, not [start, end]")
    if offsets[1] > data:
        raise SafetensorsError(f"{key} lies at bytes {offsets[0]}..{offsets[1]} of the data, but the file holds "
                               f"{data} bytes of data (truncated)")
    count = int(np.prod(shape, dtype=object)) if shape else 1
    if count * SIZES[dtype] != offsets[1] - offsets[0]:
        raise SafetensorsError(f"{key} is {dtype} of shape {shape} ({count * SIZES[dtype]} bytes) but its data_offsets "
                               f"span {offsets[1] - offsets[0]} bytes")
    return TensorInfo(dtype, tuple(shape), base + offsets[0], base + offsets[1])


def read_tensor(path: Path, info: TensorInfo, key: str = "") -> np.ndarray:
    """One tensor: floats as float32 (bf16 decoded), integers and bools in their own dtype."""
    kind = DTYPES.get(info.dtype)
    if kind is None:
        raise SafetensorsError(f"{key} is {info.dtype}, which is not read here (store it as F16, BF16 or F32)")
    count = (info.end - info.start) // SIZES[info.dtype]
    with open(path, "rb") as f:
        f.seek(info.start)
        raw = f.read(info.end - info.start)
    if len(raw) != info.end - info.start:
        raise SafetensorsError(f"{key}'s data ends early (the file changed while it was read)")
    if kind == "bf16":
        array = bf16_to_float32(np.frombuffer(raw, "<u2", count))
    else:
        array = np.frombuffer(raw, kind, count)
        array = array.astype(np.float32) if info.is_float else array.astype(array.dtype.newbyteorder("="))
    return array.reshape(info.shape)


def read_file(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """(every tensor, metadata) of a file."""
    infos, metadata = read_header(path)
    return {key: read_tensor(path, info, key) for key, info in infos.items()}, metadata
