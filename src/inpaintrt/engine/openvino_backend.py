"""Backend "openvino": the engine directory's ONNX graphs on OpenVINO's CPU plugin, in bf16 or fp32.

OpenVINO (2026.4) reads the stored graphs as they are, ONNX Runtime's com.microsoft fusions
included (Attention, MultiHeadAttention, SkipLayerNormalization, Gelu, QuickGelu), and runs them to
1e-6 of ONNX Runtime in fp32; so the export is unchanged and no second copy of the graphs is written.
`precision` is OpenVINO's inference precision hint: "bf16" runs the convolutions and matmuls in
bfloat16 where the CPU has native bf16 (AVX-512 BF16, AMX), "fp32" keeps diffusers' results.

Loading compiles each graph; OpenVINO's model cache (CACHE_DIR) keeps the compiled models in
`<engine>/.openvino-cache/` (or the user's cache folder when the engine directory is read-only),
in one folder per graph content hash, precision and OpenVINO version, so a re-exported graph never
meets a stale compiled model. A second load imports them instead of compiling. `compile_model` is
given a file, not a read model, so no uncompiled copy of the weights stays in memory.

bf16 compiles from OpenVINO IR with fp16 weights, converted from the ONNX graph once at the first
load and kept in the same cache folder (written to a temporary folder, then renamed into place):
the compiled model then holds fp16 weights beside its bf16 working copy instead of fp32 ones
(measured on the mid-size SDXL UNet: 377 MB against 482 MB after a step; fp16 keeps 3 more mantissa
bits than bf16 computes with), and the cache's compiled models refer to the IR's weights
(CACHE_MODE OPTIMIZE_SIZE) instead of holding a copy: on disk the bf16 cache is half the size of
the ONNX graphs. fp32 compiles the ONNX graph itself, so its results stay exact (its cache holds a
full copy of the weights: OpenVINO's OPTIMIZE_SIZE reads weights from IR files only).

A bf16 load reads the cached IR, not the ONNX graphs, so `Engine.load` does not hash graph files
whose IR was converted from files that matched their hashes (marked in the IR folder); every other
file is hashed as on any load (the SD 1.5-size graphs are 4.1 GB: seconds of sha256 per load).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from pathlib import Path

import numpy as np

from .ort_session import BackendError

INSTALL = "install it with `pip install 'inpaintrt[openvino]'`"
OV_PRECISIONS = {"bf16": "bf16", "fp32": "f32"}  # ours -> OpenVINO's inference_precision_hint
CACHE_FOLDER = ".openvino-cache"
CHECKED_MARK = "source-hash-checked"  # in an IR folder: converted from ONNX files that matched their hashes
SPEED_MARK = "cache-whole"  # in a graph's cache folder: OPTIMIZE_SIZE's compiled model did not import
WHOLE = ("vae", "movq")  # components whose OPTIMIZE_SIZE compiled model does not import (measured on 2026.4)
log = logging.getLogger("inpaintrt")


def load_openvino():
    """The openvino module, or BackendError saying how to install it."""
    try:
        import openvino
    except Exception as e:  # ImportError, or a broken install raising something else
        raise BackendError(f"OpenVINO cannot be imported ({type(e).__name__}: {e}); {INSTALL}") from None
    return openvino


def cpu_has_bf16(core) -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 natively here (AVX-512 BF16 or AMX)."""
    try:
        return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:
        return False


class OpenVinoBackend:
    """One compiled model and its infer request; run(feeds) -> {output name: numpy array}."""

    def __init__(self, core, path: Path, precision: str, cache_dir: Path | None, threads: int | None = None,
                 cache_whole: bool = False):
        config = {"INFERENCE_PRECISION_HINT": OV_PRECISIONS[precision], "PERFORMANCE_HINT": "LATENCY"}
        size_mode = False
        if cache_dir is not None:
            config["CACHE_DIR"] = str(cache_dir)
            # the compiled model refers to the IR's weights instead of copying them; a graph whose cached
            # model then does not import (the VAEs, OpenVINO 2026.4: `cache_whole`) is cached whole
            size_mode = path.suffix == ".xml" and not cache_whole and not (cache_dir / SPEED_MARK).exists()
            if size_mode:
                config["CACHE_MODE"] = "OPTIMIZE_SIZE"
        had_blob = size_mode and any(cache_dir.glob("*.blob"))
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.precision, self.path = precision, path
        self.compiled = core.compile_model(str(path), "CPU", config)  # a path: OpenVINO can skip reading it
        self.from_cache = bool(cache_dir is not None and _property(self.compiled, "LOADED_FROM_CACHE"))
        if had_blob and not self.from_cache:
            (cache_dir / SPEED_MARK).touch()
        # a port can carry several names (an ONNX input that the graph also reshapes keeps the reshape's
        # output name beside its own, and get_any_name() may pick either): answer to all of them
        self.input_types = {name: i.get_element_type().to_dtype() for i in self.compiled.inputs
                            for name in i.get_names()}
        self.outputs = [(name, o) for o in self.compiled.outputs for name in sorted(o.get_names())]
        self.request = self.compiled.create_infer_request()
        self.lock = threading.Lock()  # one infer request: calls from several threads take turns

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {name: np.ascontiguousarray(value, dtype=self.input_types[name]) for name, value in feeds.items()}
        with self.lock:
            results = self.request.infer(feeds)  # copies the outputs out of the request's buffers
            return {name: results[port] for name, port in self.outputs}


def _property(compiled, name: str):
    try:
        return compiled.get_property(name)
    except Exception:
        return None


def openvino_sessions(root: Path, manifest: dict, precision: str | None, checked: set[str] = frozenset()) -> dict:
    """{component: OpenVinoBackend} for every graph in the manifest, or BackendError. `checked`: the
    files whose hashes this load checked (an IR converted from them is marked so)."""
    precision = precision or "fp32"
    if precision not in OV_PRECISIONS:
        raise ValueError(f"precision {precision!r} does not run on backend 'openvino'; choose 'bf16' or 'fp32'")
    ov = load_openvino()
    core = ov.Core()
    if precision == "bf16" and not cpu_has_bf16(core):
        raise BackendError("this CPU has no native bf16 (OpenVINO lists "
                           f"{core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES')}; it needs AVX-512 BF16 or AMX), "
                           "where bf16 would be emulated and slower than fp32: load with precision='fp32'")
    threads = int(os.environ.get("INPAINTRT_THREADS", "0")) or None
    sessions = {}
    for name, component in manifest["components"].items():
        cache = cache_folder(root, manifest, component["file"], precision, ov.get_version())
        graph = root / component["file"]
        if precision == "bf16" and cache is not None:
            graph = fp16_ir(ov, core, graph, cache, set(component["files"]) <= set(checked))
        sessions[name] = OpenVinoBackend(core, graph, precision, cache, threads, cache_whole=name.startswith(WHOLE))
    cached = sum(s.from_cache for s in sessions.values())
    log.info("openvino %s: %d of %d graphs from the model cache", precision, cached, len(sessions))
    return sessions


def converted_graphs(root: Path, manifest: dict, precision: str) -> set[str]:
    """The manifest files a `precision` load will not read: those of graphs whose IR is in the cache
    folder the load will use, converted from files that matched their hashes."""
    try:
        version = load_openvino().get_version()
    except BackendError:
        return set()  # opening the backend says why
    unread = set()
    for component in manifest["components"].values():
        cache = cache_folder(root, manifest, component["file"], precision, version)
        if cache is not None and (cache / "ir" / CHECKED_MARK).is_file():
            unread.update(component["files"])
    return unread


def cache_folder(root: Path, manifest: dict, file: str, precision: str, version: str) -> Path | None:
    """The model-cache folder for one graph: keyed by its content hash (from the manifest), the
    precision and OpenVINO's version. Inside the engine directory where it can be written, else in
    the user's cache folder; None (compile every load) when neither can be written."""
    digest = manifest["files"].get(file, {}).get("sha256", file)
    key = hashlib.sha256(f"{digest}|{precision}|{version}".encode()).hexdigest()[:20]
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "inpaintrt" / "openvino"
    for base in (root / CACHE_FOLDER, user):
        folder = base / key
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
            return folder
        except OSError:
            continue
    log.warning("openvino: no writable model-cache folder (%s, %s): every load compiles", root / CACHE_FOLDER, user)
    return None


def fp16_ir(ov, core, onnx_file: Path, cache: Path, source_checked: bool = False) -> Path:
    """OpenVINO IR of `onnx_file` with fp16 weights in `cache`/ir/, converted on first use and renamed
    into place whole, so a reader never sees half of one (a second process that converts at the same
    time drops its copy). `source_checked`: the ONNX files matched their hashes in this load; the IR
    is marked so, and later loads skip hashing those files (`converted_graphs`)."""
    xml = cache / "ir" / (onnx_file.stem + ".xml")
    if xml.is_file():
        return xml
    work = cache / f".ir-{os.getpid()}-{threading.get_ident()}"
    shutil.rmtree(work, ignore_errors=True)
    model = core.read_model(str(onnx_file))
    ov.save_model(model, str(work / xml.name), compress_to_fp16=True)
    del model  # the fp32 weights go before anything is compiled
    if source_checked:
        (work / CHECKED_MARK).touch()
    try:
        work.rename(cache / "ir")
    except OSError:  # another process put its copy in place first
        shutil.rmtree(work, ignore_errors=True)
    return xml
