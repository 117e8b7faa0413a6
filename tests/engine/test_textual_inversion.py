"""Textual inversion at load (Engine.load(embeddings=...)) against diffusers' load_textual_inversion, on tiny
checkpoints with embedding files saved here with torch in A1111's, diffusers' and SDXL's layouts."""
import json
import os
import pickle
import zipfile

import numpy as np
import pytest

from diffusers_runs import diffusers_inpaint
from parity import record
from pictures import sample_image, sample_mask
from inpaintrt import Engine
from inpaintrt.engine.backends import BackendError
from inpaintrt.runtime.errors import InvalidArgument

SIZE = dict(height=104, width=160)
ARGS = dict(num_inference_steps=3, output_type="np", **SIZE)


def vectors(count: int, width: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((count, width)) * 0.5).astype(np.float32)


def a1111_pt(path, values):
    """A1111's .pt: string_to_param holds an nn.Parameter; its own `name` differs from the file's."""
    import torch

    param = torch.nn.Parameter(torch.from_numpy(values))
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": param}, "name": "inner-name", "step": 500,
                "sd_checkpoint": "abc123", "sd_checkpoint_name": "model"}, path)
    return path


def diffusers_bin(path, token, values):
    """diffusers' learned_embeds.bin: {token: vectors}, saved as a slice of a larger table (as training does)."""
    import torch

    table = torch.randn(len(values) + 5, values.shape[1])
    table[2:2 + len(values)] = torch.from_numpy(values)
    torch.save({token: table[2:2 + len(values)].detach()}, path)
    return path


def safetensors_file(path, **tensors):
    from safetensors.numpy import save_file

    save_file(tensors, str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("embeddings")
    return {
        "charturner": a1111_pt(root / "charturner.pt", vectors(3, 32, 1)),
        "learned": diffusers_bin(root / "learned_embeds.bin", "<cat-toy>", vectors(1, 32, 2)),
        "easyneg": safetensors_file(root / "easyneg.safetensors", emb_params=vectors(2, 32, 3)),
        "onevec": safetensors_file(root / "onevec.safetensors", emb_params=vectors(1, 32, 4)),
    }


def reference_pipe(checkpoint, loads):
    """diffusers' pipeline after load_textual_inversion calls: [(file or tensor, token, {encoder kwargs})]."""
    from inpaintrt.export.loading import load_pipeline

    pipe = load_pipeline(str(checkpoint))
    for source, token, where in loads:
        pipe.load_textual_inversion(source if not isinstance(source, os.PathLike) else str(source), token=token,
                                    **{k: getattr(pipe, v) for k, v in where.items()})
    return pipe


def engine_images(engine_dir, embeddings, seed=7, **args):
    engine = Engine.load(engine_dir, backend="ort-cpu", embeddings=embeddings)
    images = engine.inpaint(sample_image(160, 104), sample_mask(160, 104), scheduler="euler",
                            generator=np.random.default_rng(seed), progress=False, **{**ARGS, **args}).images
    return images, engine


def diffusers_images(pipe, seed=7, **args):
    return diffusers_inpaint(pipe, seed, "euler", image=sample_image(160, 104), mask_image=sample_mask(160, 104),
                             **{**ARGS, **args})


CASES = {  # name: (files given to the engine, to diffusers as (file key, token), prompt, negative prompt)
    "a1111-pt-multi": (["charturner"], [("charturner", "charturner")], "a charturner of a knight", None),
    "diffusers-bin": (["learned"], [("learned", None)], "a <cat-toy> on a bench", "blurry"),
    "a1111-safetensors-negative": (["easyneg"], [("easyneg", "easyneg")], "a red bench", "easyneg, blurry"),
    "two-files": (["charturner", "onevec"], [("charturner", "charturner"), ("onevec", "onevec")],
                  "onevec charturner art", "onevec"),
}


@pytest.mark.parametrize("syntax", ["a1111", "plain"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_diffusers(checkpoints, engines, files, case, syntax):
    mine, theirs, prompt, negative = CASES[case]
    pipe = reference_pipe(checkpoints[9], [(files[k], token, {}) for k, token in theirs])
    expected = diffusers_images(pipe, prompt=prompt, negative_prompt=negative)
    got, engine = engine_images(engines[9], [str(files[k]) for k in mine], prompt=prompt, negative_prompt=negative,
                                prompt_syntax=syntax)
    assert record("textual inversion image (np, [0, 1]), max abs diff", np.abs(got - expected).max()) <= 1e-3
    # the embedding matters: the engine without it reads the token as plain words, far from diffusers
    plain, _ = engine_images(engines[9], None, prompt=prompt, negative_prompt=negative, prompt_syntax=syntax)
    assert np.abs(plain - expected).max() > 5e-2
    tokens = [e["token"] for e in engine.embeddings]
    assert tokens == [token or "<cat-toy>" for _, token in theirs]


def test_tokens_and_weights(engines, files):
    """The token is the given one, else a diffusers file's key, else the file's stem; a weight on a
    multi-vector token weights all its vectors; a long prompt's later chunk reads the embedding too."""
    from inpaintrt.runtime.prompt_syntax import emphasize

    engine = Engine.load(engines[9], backend="ort-cpu", embeddings=[(str(files["charturner"]), "<turner>"),
                                                                    str(files["learned"]) + ":<pup>"])
    assert [(e["name"], e["token"], e["vectors"]) for e in engine.embeddings] == [
        ("charturner.pt", "<turner>", 3), ("learned_embeds.bin", "<pup>", 1)]
    plain = engine.encode_prompt("a <turner> cat", guidance_scale=1)[0]
    weighted = engine.encode_prompt("a (<turner>:1.3) cat", guidance_scale=1)[0]
    weights = np.ones((1, 77), np.float32)
    weights[0, 2:5] = 1.3  # BOS, "a", then the three vectors of "<turner>"
    assert np.allclose(weighted, emphasize(plain, weights), atol=1e-5)
    long = engine.encode_prompt("word " * 75 + "a <turner> <pup>", guidance_scale=1)[0]
    assert long.shape[1] == 154
    assert np.array_equal(long[:, 77:], engine.encode_prompt("a <turner> <pup>", guidance_scale=1)[0])
    assert not np.allclose(engine.encode_prompt("a <turner>", guidance_scale=1)[0],
                           Engine.load(engines[9], backend="ort-cpu").encode_prompt("a <turner>", guidance_scale=1)[0])


def test_sdxl_matches_diffusers(sdxl_checkpoints, sdxl_engines, tmp_path):
    """An SDXL file's clip_l and clip_g vectors go to the two encoders, as diffusers' two calls put them."""
    import torch

    manifest = json.loads((sdxl_engines["inpaint"] / "manifest.json").read_text())
    widths = [manifest["components"][c]["outputs"][0]["shape"][-1] for c in ("text_encoder", "text_encoder_2")]
    clip_l, clip_g = vectors(2, widths[0], 5), vectors(2, widths[1], 6)
    path = safetensors_file(tmp_path / "xlstyle.safetensors", clip_l=clip_l, clip_g=clip_g)
    pipe = reference_pipe(sdxl_checkpoints["inpaint"], [
        (torch.from_numpy(clip_g), "xlstyle", {"text_encoder": "text_encoder_2", "tokenizer": "tokenizer_2"}),
        (torch.from_numpy(clip_l), "xlstyle", {"text_encoder": "text_encoder", "tokenizer": "tokenizer"})])
    args = dict(prompt="a xlstyle bench", negative_prompt="xlstyle blur", seed=5)
    expected = diffusers_images(pipe, **args)
    got, engine = engine_images(sdxl_engines["inpaint"], [str(path)], **args)
    assert record("textual inversion SDXL image, max abs diff", np.abs(got - expected).max()) <= 1e-3
    plain, _ = engine_images(sdxl_engines["inpaint"], None, **args)
    assert np.abs(plain - expected).max() > 5e-2
    assert engine.embeddings[0]["token"] == "xlstyle"


def malicious_pt(path, marker):
    """A torch-zip whose pickle would run os.system: a pickle can run code."""
    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({"string_to_param": {"*": Payload()}}, protocol=2))
        z.writestr("evil/byteorder", "little")
    return path


def bad_files(root, files):
    """{name: (embeddings argument, words the message must hold)}."""
    (root / "junk.pt").write_bytes(b"not a zip at all")
    (root / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    one = vectors(1, 32, 0)
    return {
        "missing": ([str(root / "nope.pt")], ["nope.pt", "does not exist"]),
        "corrupt-pt": ([str(root / "junk.pt")], ["junk.pt", "not a torch zip"]),
        "corrupt-safetensors": ([str(root / "junk.safetensors")], ["junk.safetensors", "damaged"]),
        "width": ([str(safetensors_file(root / "wide.safetensors", emb_params=vectors(1, 768, 0)))],
                  ["wide.safetensors", "768 wide", "takes 32"]),
        "known-token": ([(str(files["onevec"]), "<|endoftext|>")], ["'<|endoftext|>'", "already in"]),
        "same-token-twice": ([str(files["onevec"]), (str(files["easyneg"]), "onevec")], ["'onevec'", "already in"]),
        "nan": ([str(safetensors_file(root / "nan.safetensors", emb_params=np.full((1, 32), np.nan, np.float32)))],
                ["nan.safetensors", "NaN"]),
        "sdxl-on-sd": ([str(safetensors_file(root / "xl.safetensors", clip_l=vectors(1, 32, 0),
                                             clip_g=vectors(1, 32, 0)))], ["xl.safetensors", "SDXL embedding"]),
        "not-an-embedding": ([str(safetensors_file(root / "lora.safetensors", a=one, b=one))],
                             ["lora.safetensors", "no textual-inversion"]),
        "one-path": (str(files["onevec"]), ["is one path", "embeddings=["]),
    }


def test_bad_input_is_refused_by_name(engines, files, tmp_path):
    marker = tmp_path / "ran"
    cases = bad_files(tmp_path, files)
    cases["malicious"] = ([str(malicious_pt(tmp_path / "evil.pt", marker))], ["evil.pt", "posix.system", "run code"])
    for name, (given, words) in cases.items():
        with pytest.raises(InvalidArgument) as info:
            Engine.load(engines[9], backend="ort-cpu", embeddings=given)
        assert info.value.field == "embeddings", name
        assert info.value.fix, name
        said = f"{info.value} {info.value.fix}"  # the message, and the fix the server and CLI show beside it
        for word in words:
            assert word in said, (name, said)
    assert not marker.exists()
    # the directory still loads and runs, with and without embeddings
    got, engine = engine_images(engines[9], [str(files["onevec"])], prompt="onevec")
    assert np.isfinite(got).all() and engine.embeddings[0]["token"] == "onevec"


def test_backends_without_initializer_overrides_refuse(engines, files):
    for backend in ("openvino", "tensorrt"):
        with pytest.raises(BackendError, match="textual-inversion embeddings given at load run on backends ort-cpu"):
            Engine.load(engines[9], backend=backend, embeddings=[str(files["onevec"])])


def test_command_line_forms_and_server_info(engines, files):
    """FILE:TOKEN on the command lines; inpaint-serve loads them and /v1/info lists the tokens."""
    from fastapi.testclient import TestClient

    from inpaintrt.engine.textual_inversion import parse_spec
    from inpaintrt.serve.app import Settings, create_app
    from inpaintrt.serve.cli import parser, settings_from

    assert parse_spec("a/b.pt:tok") == ("a/b.pt", "tok") and parse_spec("a/b.pt") == ("a/b.pt", None)
    assert parse_spec(("a/b.pt", "tok")) == ("a/b.pt", "tok")
    flags = ["--embedding", f"{files['charturner']}:<turner>", "--embedding", str(files["onevec"])]
    settings = settings_from(parser().parse_args(["--engine", str(engines[9]), "--backend", "ort-cpu", *flags]))
    assert settings.load.embeddings == [(str(files["charturner"].resolve()), "<turner>"),
                                        (str(files["onevec"].resolve()), None)]
    with TestClient(create_app(Settings(**{**settings.__dict__, "token": None}))) as client:
        listed = client.get("/v1/info").json()["embeddings"]
    assert [(e["name"], e["token"], e["vectors"]) for e in listed] == [("charturner.pt", "<turner>", 3),
                                                                        ("onevec.safetensors", "onevec", 1)]
    with pytest.raises(InvalidArgument, match="nope.pt.*does not exist"):
        settings_from(parser().parse_args(["--engine", str(engines[9]), "--embedding", "nope.pt"]))
