"""Read the tensors of a torch.save file (`.pt`, `.bin`) with numpy alone, and nothing else from it.

torch.save writes a zip: `<name>/data.pkl`, a pickle of the object whose tensors refer to storages kept
as raw records `<name>/data/<key>`. Unpickling runs whatever callables the pickle names, so a pickle
can run code: this reader's unpickler resolves only the few names torch's tensor rebuilding uses
(mapped to numpy over the records) and refuses every other, naming it. It never falls back to
plain pickle.load, and reads no legacy (pre-zip) torch files. What the archive claims is checked
before it is believed: a record's uncompressed size against the file's (no zip bomb is inflated), a
tensor's view against its storage (no negative strides, nothing past the end, no broadcast views
larger than their storage).
"""
from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..runtime.errors import InvalidArgument
from .safetensors_io import bf16_to_float32

_STORAGES = {"FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
             "BFloat16Storage": "bf16", "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
             "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}  # integers stay integers


class TorchFileError(InvalidArgument):
    """A file this reader will not or cannot read: the message names it and ends with the fix."""

    def __init__(self, field: str, message: str, fix: str):
        super().__init__(field, f"{message}; {fix}", fix)


class UnsafeFile(TorchFileError):
    """A pickle that names something beyond tensors, dicts and plain values."""


def read_torch_file(path: Path, field: str = "embeddings"):
    """The object a torch.save file holds, its float tensors as float32 numpy arrays (integers as they are)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise TorchFileError(field, f"{path} is not a torch zip file ({e}); legacy (torch < 1.6) and damaged "
                             "files are not read", "convert it to .safetensors, or save it again with torch.save "
                             "from a current torch") from None
    with archive:
        names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(names) != 1:
            raise TorchFileError(field, f"{path} holds no torch data.pkl (found {archive.namelist()[:5]})",
                                 "pass a file written by torch.save, or a .safetensors file")
        prefix = names[0][: -len("data.pkl")]
        try:
            read = _Records(archive, os.path.getsize(path), path, field)
            order = read(prefix + "byteorder") if prefix + "byteorder" in archive.namelist() else b"little"
            unpickler = _TensorUnpickler(io.BytesIO(read(names[0])), read, prefix, order.strip() != b"big",
                                         path, field)
            return unpickler.load()
        except InvalidArgument:
            raise
        except Exception as e:  # a damaged pickle or record: its own error type says what broke
            raise TorchFileError(field, f"{path} could not be read as a torch file ({type(e).__name__}: {e})",
                                 "the file is damaged; download or save it again") from None


class _Records:
    """Reads a record of the archive once its claimed size is checked against the file's."""

    def __init__(self, archive: zipfile.ZipFile, size: int, path: Path, field: str):
        self.archive, self.limit, self.path, self.field = archive, 16 * size + (1 << 20), path, field

    def __call__(self, name: str) -> bytes:
        info = self.archive.getinfo(name)  # KeyError for a record the pickle invents: reported as damage
        if info.file_size > self.limit:
            raise TorchFileError(self.field, f"{self.path}: its record {name} claims {info.file_size} bytes "
                                 f"uncompressed, far more than the file's size could hold", "the file is damaged "
                                 "or hostile; use a .safetensors file")
        return self.archive.read(info)


class _TensorUnpickler(pickle.Unpickler):
    def __init__(self, data, read: _Records, prefix: str, little: bool, path: Path, field: str):
        super().__init__(data)
        self.read, self.prefix, self.little, self.path, self.field = read, prefix, little, path, field
        self.storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str):
        allowed = {
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
            ("collections", "OrderedDict"): OrderedDict,
        }
        if (module, name) in allowed:
            return allowed[(module, name)]
        if module == "torch" and name in _STORAGES:
            return _StorageType(name)
        raise UnsafeFile(self.field, f"{self.path} names {module}.{name} in its pickle, which is no part of a saved "
                         "tensor; it was refused because a pickle can run code",
                         "use a .safetensors file, or a .pt/.bin that holds only tensors")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise UnsafeFile(self.field, f"{self.path} refers to {str(pid)[:60]!r}, which is no tensor storage",
                             "use a .safetensors file")
        _, kind, key, _, count = pid
        if key not in self.storages:
            raw = self.read(f"{self.prefix}data/{key}")
            self.storages[key] = kind.array(raw, int(count), self.little)
        return self.storages[key]


class _StorageType:
    def __init__(self, name: str):
        self.name = name

    def array(self, raw: bytes, count: int, little: bool) -> np.ndarray:
        kind = _STORAGES[self.name]
        order = "<" if little else ">"
        if kind == "bf16":
            return bf16_to_float32(np.frombuffer(raw, order + "u2", count))
        array = np.frombuffer(raw, np.dtype(kind).newbyteorder(order), count)
        return array.astype(np.float32 if np.issubdtype(array.dtype, np.floating) else array.dtype.newbyteorder("="))


def _rebuild_tensor(storage, offset, size, stride, *_):
    """torch._utils._rebuild_tensor_v2: a strided view into a storage (a slice of a larger table, say)."""
    if not isinstance(storage, np.ndarray):
        raise ValueError("a tensor without a storage")
    size, stride, offset = tuple(int(n) for n in size), tuple(int(n) for n in stride), int(offset)
    if len(size) != len(stride) or min(size + stride + (offset,), default=0) < 0:
        raise ValueError(f"a tensor of size {size}, stride {stride}, offset {offset} is no view of a storage")
    count = int(np.prod(size, dtype=object))
    if count and (offset + sum((n - 1) * s for n, s in zip(size, stride)) >= storage.size or count > storage.size):
        raise ValueError(f"a tensor of size {size} (stride {stride}) reaches past its storage of {storage.size} values "
                         "or repeats it (save a .clone() of it)")
    return np.lib.stride_tricks.as_strided(storage[offset:], size, [s * storage.itemsize for s in stride]).copy()


def _rebuild_parameter(data, *_):
    """torch._utils._rebuild_parameter(_with_state): an nn.Parameter is its data here."""
    return data
