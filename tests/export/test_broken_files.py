"""Files users pass, broken: LoRAs, textual-inversion embeddings, single-file checkpoints and engine directories,
truncated, of wrong dtypes, with NaN / inf values, zero-size tensors, duplicated keys, a pickle with a payload, a
safetensors header claiming 10 GB. Each is refused with an error that names the file and what is wrong, in bounded
time and memory (nothing a header claims is allocated before it is checked against the file), through
`Engine.load`, the `inpaint` and `inpaint-export` commands and `inpaint-serve`; the engine stays usable."""
from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

from parity import record
from pictures import sample_image, sample_mask
from inpaintrt import Engine
from inpaintrt.engine.lora import LoraError
from inpaintrt.engine.manifest import EngineDirectoryError, file_digest
from inpaintrt.runtime.errors import InvalidArgument

LAYER = "lora_unet_down_blocks_0_resnets_0_conv1"
TEN_GB = 10 << 30
SECONDS, MEGABYTES = 20.0, 64  # each refusal: the tiny engine loads in about a second and some MB


@contextlib.contextmanager
def bounded():
    """The block takes little time and allocates little (numpy's allocations are traced too)."""
    tracemalloc.start()
    start = time.monotonic()
    try:
        yield
    finally:
        peak, took = tracemalloc.get_traced_memory()[1], time.monotonic() - start
        tracemalloc.stop()
        record("broken files: slowest refusal, s", took)
        record("broken files: most memory allocated by a refusal, MB", peak / 2 ** 20)
        assert took < SECONDS and peak < MEGABYTES << 20, (took, peak)


def safetensors(path, header, data=b""):
    """A file with this header (dict, or raw bytes) and data, whatever they claim."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def payload(marker) -> bytes:
    """A pickle that, if unpickled, creates `marker`."""
    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)
    return pickle.dumps(Payload(), protocol=2)


def good_lora(path):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    save_file({f"{LAYER}.lora_down.weight": rng.standard_normal((4, 16, 3, 3), np.float32) * 0.1,
               f"{LAYER}.lora_up.weight": rng.standard_normal((16, 4, 1, 1), np.float32) * 0.1,
               f"{LAYER}.alpha": np.array(4, np.int64)}, str(path))
    return path


def lora_corpus(root):
    """{case: (file, what the message must say)}."""
    from safetensors.numpy import save_file

    good = good_lora(root / "good.safetensors")
    raw = good.read_bytes()
    tensor = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    corpus = {}

    def add(name, make, said):
        corpus[name] = (make(root / f"{name}.safetensors"), said)

    def tensors(change):
        def make(path):
            from safetensors.numpy import load_file

            found = load_file(str(good))
            change(found)
            save_file(found, str(path))
            return path
        return make

    add("truncated", lambda p: (p.write_bytes(raw[: len(raw) // 2]), p)[1], "truncated")
    add("truncated-header", lambda p: (p.write_bytes(raw[:5]), p)[1], "fewer than a safetensors header")
    add("empty", lambda p: (p.write_bytes(b""), p)[1], "0 bytes")
    add("header-10gb", lambda p: (p.write_bytes(struct.pack("<Q", TEN_GB) + b"{}"), p)[1], "claims 10737418240 bytes")
    add("tensor-10gb", lambda p: safetensors(p, {"x.lora_up.weight": {**tensor, "shape": [50000, 50000]}}, b"\0" * 4),
        "10000000000 bytes")
    add("offsets-past-end", lambda p: safetensors(p, {"x.lora_up.weight": {**tensor, "data_offsets": [0, TEN_GB]}},
                                                  b"\0" * 4), "truncated")
    add("not-json", lambda p: safetensors(p, b"\xff\xfe{garbage"), "not JSON")
    add("duplicated-key", lambda p: safetensors(p, b'{"x.alpha": %s, "x.alpha": %s}' % ((json.dumps(tensor).encode(),) * 2),
                                                b"\0" * 4), "'x.alpha' twice")
    add("unknown-dtype", lambda p: safetensors(p, {"x.alpha": {**tensor, "dtype": "Q7"}}, b"\0" * 4), "unknown dtype 'Q7'")
    add("fp8", lambda p: safetensors(p, {"x.lora_up.weight": {**tensor, "dtype": "F8_E4M3", "shape": [4]}}, b"\0" * 4),
        "F8_E4M3")
    add("negative-shape", lambda p: safetensors(p, {"x.alpha": {**tensor, "shape": [-1]}}, b"\0" * 4), "not a list of sizes")
    add("int-weights", tensors(lambda t: t.update({f"{LAYER}.lora_up.weight": np.ones((16, 4, 1, 1), np.int32)})),
        "int32; LoRA weights must be float")
    add("nan", tensors(lambda t: t[f"{LAYER}.lora_up.weight"].__setitem__((0, 0), np.nan)), "NaN or infinite")
    add("inf", tensors(lambda t: t[f"{LAYER}.lora_down.weight"].__setitem__((0, 0), np.inf)), "NaN or infinite")
    add("zero-size", tensors(lambda t: t.update({f"{LAYER}.lora_down.weight": np.ones((0, 16, 3, 3), np.float32)})),
        "has no values")
    add("misfit", tensors(lambda t: t.update({f"{LAYER}.lora_up.weight": np.ones((24, 4, 1, 1), np.float32)})),
        "a LoRA for another model architecture")
    add("no-tensors", lambda p: safetensors(p, {"__metadata__": {"format": "pt"}}), "holds no tensors")
    add("pickle-payload", lambda p: (p.write_bytes(payload(root / "PWNED")), p)[1], "not a safetensors file")
    return corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return lora_corpus(tmp_path_factory.mktemp("broken-loras"))


def run(engine):
    return engine.inpaint(sample_image(64, 64), sample_mask(64, 64), prompt="a bench", num_inference_steps=2,
                          height=64, width=64, output_type="np", generator=1, progress=False).images


def test_loras(engines, corpus, tmp_path):
    before = Engine.load(engines[9], backend="ort-cpu")
    for name, (path, said) in corpus.items():
        with bounded(), pytest.raises(LoraError) as refused:
            Engine.load(engines[9], backend="ort-cpu", loras=[(path, 1.0)])
        assert path.name in str(refused.value) and said in str(refused.value), (name, str(refused.value))
    assert not (corpus["nan"][0].parent / "PWNED").exists()  # the payload never ran
    # still usable: the engine loaded before, and a fresh load with a good LoRA
    assert np.isfinite(run(before)).all()
    good = corpus["nan"][0].parent / "good.safetensors"
    assert np.isfinite(run(Engine.load(engines[9], backend="ort-cpu", loras=[(good, 1.0)]))).all()


def embedding_corpus(root):
    import torch
    from safetensors.torch import save_file

    torch.save({"string_to_param": {"*": torch.randn(2, 32)}}, root / "good.pt")
    raw = (root / "good.pt").read_bytes()

    def rezip(path, pickled=None, bomb=False):
        """good.pt with its data.pkl replaced (or deflated with 200 MB appended: a record claiming far more than the file)."""
        source, out = zipfile.ZipFile(io.BytesIO(raw)), io.BytesIO()
        with zipfile.ZipFile(out, "w") as archive:
            for info in source.infolist():
                data = source.read(info)
                if info.filename.endswith("data.pkl"):
                    data = pickled if pickled is not None else data + b"\0" * (200 << 20)
                    info = zipfile.ZipInfo(info.filename)
                    info.compress_type = zipfile.ZIP_DEFLATED if bomb else zipfile.ZIP_STORED
                archive.writestr(info, data)
        path.write_bytes(out.getvalue())
        return path

    def pickled_tensor(tensor) -> bytes:
        buffer = io.BytesIO()
        torch.save({"string_to_param": {"*": tensor}}, buffer)
        archive = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
        return archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))

    def saved(path, value):
        (save_file(value, str(path)) if path.suffix == ".safetensors"
         else torch.save({"string_to_param": {"*": value}}, path))
        return path

    return {
        "pt-payload": (rezip(root / "payload.pt", payload(root / "PWNED")), "names posix.system"),
        "pt-legacy-payload": ((root / "legacy.pt").write_bytes(payload(root / "PWNED")) and root / "legacy.pt",
                              "not a torch zip file"),
        "pt-zip-bomb": (rezip(root / "bomb.pt", bomb=True), "claims 209715"),
        "pt-truncated": ((root / "truncated.pt").write_bytes(raw[: len(raw) // 2]) and root / "truncated.pt",
                         "not a torch zip file"),
        "pt-broadcast-10gb": (rezip(root / "broadcast.pt", pickled_tensor(torch.randn(32).expand(100000, 1000, 32))),
                              "reaches past its storage"),
        "pt-nan": (saved(root / "nan.pt", torch.full((2, 32), float("nan"))), "NaN or infinite"),
        "pt-int": (saved(root / "int.pt", torch.ones(2, 32, dtype=torch.int64)), "int64; embedding vectors are float"),
        "pt-zero-size": (saved(root / "zero.pt", torch.ones(0, 32)), "shape [0, 32]"),
        "st-header-10gb": ((root / "e10.safetensors").write_bytes(struct.pack("<Q", TEN_GB) + b"{}")
                           and root / "e10.safetensors", "claims 10737418240 bytes"),
        "st-inf": (saved(root / "inf.safetensors", {"emb_params": torch.full((2, 32), float("inf"))}), "NaN or infinite"),
        "st-int": (saved(root / "int.safetensors", {"emb_params": torch.ones(2, 32, dtype=torch.int32)}), "int32"),
        "st-zero-size": (saved(root / "zero.safetensors", {"emb_params": torch.ones(2, 0)}), "shape [2, 0]"),
        "st-duplicated-key": (safetensors(root / "dup.safetensors", b'{"emb_params": %s, "emb_params": %s}' % (
            (json.dumps({"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}).encode(),) * 2), b"\0" * 4), "twice"),
    }


def test_embeddings(engines, tmp_path):
    corpus = embedding_corpus(tmp_path)
    for name, (path, said) in corpus.items():
        with bounded(), pytest.raises(InvalidArgument) as refused:
            Engine.load(engines[9], backend="ort-cpu", embeddings=[str(path)])
        assert path.name in str(refused.value) and said in str(refused.value), (name, str(refused.value))
    assert not (tmp_path / "PWNED").exists()  # the payload never ran
    good = (str(tmp_path / "good.pt"), "<fine-token>")
    assert np.isfinite(run(Engine.load(engines[9], backend="ort-cpu", embeddings=[good]))).all()


def rehash(root, *files):
    manifest = json.loads((root / "manifest.json").read_text())
    for rel in files:
        manifest["files"][rel] = {"bytes": (root / rel).stat().st_size, "sha256": file_digest(root / rel)}
    (root / "manifest.json").write_text(json.dumps(manifest))


def edit(root, change):
    manifest = json.loads((root / "manifest.json").read_text())
    change(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))


def cut(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def directory_corpus(source, root, lora):
    """{case: (directory, Engine.load arguments, what the message must say)}."""
    cases = {
        "manifest-truncated": (lambda d: cut(d / "manifest.json"), "not valid JSON"),
        "manifest-duplicated-key": (lambda d: (d / "manifest.json").write_text(
            (d / "manifest.json").read_text().replace("{", '{"format": "x", ', 1)), "'format' twice"),
        "manifest-model-a-list": (lambda d: edit(d, lambda m: m.update(model=[1])), "model is a list"),
        "manifest-files-outside": (lambda d: edit(d, lambda m: m["files"].update({"../../etc/passwd": {
            "bytes": 1, "sha256": "x"}})), "outside the engine directory"),
        "manifest-channels-text": (lambda d: edit(d, lambda m: m["model"].update(unet_in_channels="nine")),
                                   "unet_in_channels is 'nine'"),
        "onnx-truncated": (lambda d: cut(d / "unet.onnx"), "truncated or replaced"),
        "onnx-garbage-rehashed": (lambda d: ((d / "unet.onnx").write_bytes(b"garbage" * 99), rehash(d, "unet.onnx")),
                                  "cannot be loaded by ONNX Runtime"),
        "tokenizer-garbage-rehashed": (lambda d: ((d / "tokenizer/tokenizer.json").write_text("{garbage"),
                                                  rehash(d, "tokenizer/tokenizer.json")), "tokenizer.json cannot be read"),
        "lora-map-truncated": (lambda d: (cut(d / "lora_map.json"), rehash(d, "lora_map.json")), "lora_map.json cannot be read"),
    }
    found = {}
    for name, (change, said) in cases.items():
        shutil.copytree(source, root / name)
        change(root / name)
        found[name] = (root / name, {"loras": [(lora, 1.0)]} if "lora" in name else {}, said)
    return found


def test_engine_directories(engines, corpus, tmp_path):
    lora = corpus["nan"][0].parent / "good.safetensors"
    for name, (root, extra, said) in directory_corpus(engines[9], tmp_path, lora).items():
        for verify in (True, False):
            with bounded(), pytest.raises(ValueError) as refused:  # EngineDirectoryError, LoraError: ValueErrors
                Engine.load(root, backend="ort-cpu", verify_hashes=verify, **extra)
            text = str(refused.value)
            assert said in text and str(root) in text, (name, text)
            assert isinstance(refused.value, (EngineDirectoryError, LoraError)) or "tokenizer" in name, (name, text)
    assert np.isfinite(run(Engine.load(engines[9], backend="ort-cpu"))).all()


def test_inpaint_command(engines, corpus, tmp_path, capsys):
    from inpaintrt.cli import inpaint_main

    sample_image(64, 64).save(tmp_path / "image.png")
    sample_mask(64, 64).save(tmp_path / "mask.png")
    common = ["--image", str(tmp_path / "image.png"), "--mask", str(tmp_path / "mask.png"), "--steps", "2",
              "--height", "64", "--width", "64", "--backend", "ort-cpu", "--output", str(tmp_path / "out.png")]
    broken = directory_corpus(engines[9], tmp_path / "dirs", corpus["nan"][0].parent / "good.safetensors")
    embeddings = embedding_corpus(tmp_path)
    runs = [(["--engine", str(engines[9]), "--lora", str(corpus[c][0])], corpus[c]) for c in
            ("header-10gb", "truncated", "nan", "pickle-payload", "duplicated-key")]
    runs += [(["--engine", str(engines[9]), "--embedding", str(embeddings[c][0])], embeddings[c]) for c in
             ("pt-payload", "pt-zip-bomb", "st-header-10gb")]
    runs += [(["--engine", str(broken[c][0])], (broken[c][0], broken[c][2])) for c in
             ("manifest-truncated", "onnx-garbage-rehashed", "tokenizer-garbage-rehashed")]
    for args, (path, said) in runs:
        with bounded():
            assert inpaint_main(args + common) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and said in err and path.name in err and "Traceback" not in err, err
    assert not (tmp_path / "out.png").exists()
    assert inpaint_main(["--engine", str(engines[9])] + common) == 0  # and the engine still works
    assert (tmp_path / "out.png").is_file()


def test_export_command(pipes, checkpoints, tmp_path, capsys):
    """inpaint-export refuses a broken single-file checkpoint (and a folder with NaN weights) by name, fast."""
    from safetensors.torch import load_file, save_file

    from inpaintrt.cli import export_main
    from ldm_format import save_single_file

    good = save_single_file(pipes[9], tmp_path / "good.safetensors")
    raw = good.read_bytes()

    def changed(path, change):
        tensors = load_file(str(good))
        change(tensors)
        save_file(tensors, str(path))
        return path

    key = next(k for k in load_file(str(good)) if k.startswith("model.diffusion_model.") and k.endswith(".weight"))
    folder = tmp_path / "nan-folder"
    shutil.copytree(checkpoints[9], folder)
    unet_file = next((folder / "unet").glob("*.safetensors"))
    unet = load_file(str(unet_file))
    unet["conv_in.weight"][0, 0, 0, 0] = float("nan")
    save_file(unet, str(unet_file))
    cases = {
        "truncated": ((tmp_path / "t.safetensors").write_bytes(raw[: len(raw) // 2]) and tmp_path / "t.safetensors",
                      "truncated"),
        "header-10gb": ((tmp_path / "h.safetensors").write_bytes(struct.pack("<Q", TEN_GB) + b"{}") and
                        tmp_path / "h.safetensors", "claims 10737418240 bytes"),
        "not-json": (safetensors(tmp_path / "g.safetensors", b"\x00garbage"), "not JSON"),
        "duplicated-key": (safetensors(tmp_path / "d.safetensors", b'{"a": %s, "a": %s}' % ((json.dumps(
            {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}).encode(),) * 2), b"\0" * 4), "twice"),
        "no-tensors": (safetensors(tmp_path / "n.safetensors", {}), "holds no tensors"),
        "nan": (changed(tmp_path / "nan.safetensors", lambda t: t[key].view(-1).__setitem__(0, float("nan"))),
                "NaN or infinite"),
        "zero-size": (changed(tmp_path / "zero.safetensors", lambda t: t.update({key: t[key][:0]})), "could not read it"),
        "not-a-checkpoint": (changed(tmp_path / "other.safetensors", lambda t: [t.pop(k) for k in list(t)[1:]]),
                             "could not read it"),
        "folder-nan": (folder, "unet.conv_in.weight has NaN or infinite values"),
    }
    for name, (path, said) in cases.items():
        out = tmp_path / f"out-{name}"
        start = time.monotonic()
        assert export_main(["--model", str(path), "--config", str(checkpoints[9]), "--output", str(out)]) == 2, name
        err = capsys.readouterr().err
        assert said in err and path.name in err and "Traceback" not in err, (name, err)
        assert not out.exists() and time.monotonic() - start < 60, name


def serve(engine_dir, *args):
    """inpaint-serve started as tests/support/serve_helpers.py starts it; (exit code, output) once it exits."""
    command = [sys.executable, "-m", "inpaintrt.serve.cli", "--engine", str(engine_dir), "--port", "0", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    return done.returncode, done.stdout + done.stderr


def test_serve_refuses_broken_files(engines, corpus, tmp_path):
    embeddings = embedding_corpus(tmp_path)
    for flag, (path, said) in [("--lora", corpus["header-10gb"]), ("--lora", corpus["nan"]),
                               ("--lora", corpus["truncated"]), ("--embedding", embeddings["pt-payload"]),
                               ("--lora", corpus["misfit"])]:  # a sound file the engine refuses at load
        code, output = serve(engines[9], flag, str(path))
        assert code == 2 and "error: " in output and said in output and path.name in output, output
        assert "Traceback" not in output, output
    assert not (tmp_path / "PWNED").exists()
