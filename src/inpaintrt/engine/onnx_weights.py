"""Read stored ONNX weights with numpy alone: a reader of the protobuf wire format (no onnx package at run
time). The export's LoRA map (export/lora_map.py) and textual inversion's token table (textual_inversion.py)
both locate initializers this way."""
from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np

_DTYPES = {1: np.float32, 10: np.float16}  # ONNX TensorProto data types


def float_initializers(root: Path, graph_file: str, wanted=None):
    """(name, {file, offset, dtype, shape}, array) for each float initializer of a stored graph (those whose
    name `wanted(name)` accepts, when given), read from the ONNX protobuf's wire format (ModelProto.graph = 7,
    GraphProto.initializer = 5)."""
    path = root / graph_file
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        graph = next((span for number, span in fields(buf, 0, len(buf)) if number == 7), None)
        for number, (start, end) in fields(buf, *graph):
            if number != 5:
                continue
            tensor = tensor_fields(buf, start, end)
            dtype = _DTYPES.get(tensor["data_type"])
            if dtype is None or not tensor["dims"] or (wanted is not None and not wanted(tensor["name"])):
                continue
            count = int(np.prod(tensor["dims"]))
            if "location" in tensor:  # external data, relative to the graph's folder
                rel = (Path(graph_file).parent / tensor["location"]).as_posix()
                offset = int(tensor.get("offset", 0))
                array = np.fromfile(root / rel, dtype, count, offset=offset)
            elif "raw" in tensor:
                rel, offset = graph_file, tensor["raw"]
                array = np.frombuffer(buf, dtype, count, offset=offset).copy()
            else:
                continue  # float_data: small tensors only, never a weight here
            info = {"file": rel, "offset": offset, "dtype": np.dtype(dtype).name, "shape": tensor["dims"]}
            yield tensor["name"], info, array.reshape(tensor["dims"])


def tensor_fields(buf, start: int, end: int) -> dict:
    tensor = {"dims": [], "data_type": 0, "name": ""}
    for number, value in fields(buf, start, end, values=True):
        if number == 1:
            tensor["dims"] += value if isinstance(value, list) else [value]
        elif number == 2:
            tensor["data_type"] = value
        elif number == 8:
            tensor["name"] = bytes(buf[value[0]:value[1]]).decode()
        elif number == 9:
            tensor["raw"] = value[0]
        elif number == 13:  # StringStringEntryProto: key = 1, value = 2
            entry = {k: bytes(buf[s:e]).decode() for k, (s, e) in fields(buf, *value)}
            tensor[entry.get(1)] = entry.get(2)
    return tensor


def fields(buf, pos: int, end: int, values: bool = False):
    """(field number, (start, end)) of the length-delimited fields in buf[pos:end]; with `values`, varint
    fields as ints and the packed dims (field 1) as a list."""
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            if values:
                yield number, value
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if values and number == 1:  # packed int64 dims
                dims, at = [], pos
                while at < pos + length:
                    dim, at = _varint(buf, at)
                    dims.append(dim)
                yield number, dims
            else:
                yield number, (pos, pos + length)
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unexpected protobuf wire type {wire} at byte {pos}")


def _varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
