"""Write a graph whose weights lie in other files into one graph file + one weights file, a tensor at a
time, so a 10 GB SDXL UNet never sits in memory twice (docs/architecture.md, "The engine directory": graphs > 1 GiB keep their
weights beside them).

torch's exporter writes each large initializer to its own file; the optimizer adds a few new
tensors in memory. Both kinds are appended to `<graph>.data`, and the proto keeps only references.
"""
from __future__ import annotations

import shutil
from pathlib import Path

INLINE_BYTES = 1024  # smaller tensors stay in the proto


def weight_bytes(model, folder: Path) -> int:
    """Bytes of the initializers, wherever they are."""
    return sum(_external_length(t, folder) if _is_external(t) else len(t.raw_data) or t.ByteSize()
               for t in model.graph.initializer)


def save_streaming(model, folder: Path, path: Path) -> list[str]:
    """Save `model` (external references relative to `folder`) as `path` + `path.data`; the files written."""
    import onnx

    data_name = f"{path.name}.data"
    offset = 0
    with open(path.with_name(data_name), "wb") as out:
        for tensor in model.graph.initializer:
            if _is_external(tensor):
                info = _external_info(tensor)
                with open(folder / info["location"], "rb") as source:
                    source.seek(int(info.get("offset", 0)))
                    length = _copy(source, out, _external_length(tensor, folder))
            elif len(tensor.raw_data) > INLINE_BYTES:
                length = out.write(tensor.raw_data)
                tensor.ClearField("raw_data")
            else:
                continue
            del tensor.external_data[:]
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            tensor.data_location = onnx.TensorProto.EXTERNAL
            offset += length
    onnx.save_model(model, str(path))
    return [path.name, data_name]


def _is_external(tensor) -> bool:
    import onnx

    return tensor.data_location == onnx.TensorProto.EXTERNAL


def _external_info(tensor) -> dict:
    return {entry.key: entry.value for entry in tensor.external_data}


def _external_length(tensor, folder: Path) -> int:
    info = _external_info(tensor)
    if "length" in info:
        return int(info["length"])
    return (folder / info["location"]).stat().st_size - int(info.get("offset", 0))


def _copy(source, out, length: int) -> int:
    before = out.tell()
    shutil.copyfileobj(_Limited(source, length), out, 1 << 24)
    return out.tell() - before


class _Limited:
    """A file object that ends after `length` bytes."""

    def __init__(self, source, length: int):
        self.source, self.left = source, length

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        chunk = self.source.read(size)
        self.left -= len(chunk)
        return chunk
