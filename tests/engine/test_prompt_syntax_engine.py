"""prompt_syntax: A1111's weights, BREAK and long prompts on the tiny SD engine against a torch reference on
diffusers' text encoder (prompt_reference.py) and diffusers' pipeline (the parser alone:
tests/runtime/test_prompt_syntax.py; SDXL: test_prompt_syntax_sdxl.py)."""
import copy
import warnings

import numpy as np
import pytest

from diffusers_runs import diffusers_inpaint
from parity import record
from pictures import sample_image, sample_mask
from inpaintrt import Engine
from prompt_reference import BREAK, prompt_text, sd_reference

SIZE = dict(height=104, width=160)
CLAUSE = "a red bench in a quiet park with tall green trees, "  # 12 tokens
LONG = CLAUSE * 10  # 120 tokens: two chunks


@pytest.fixture(scope="module")
def sd_model(tmp_path_factory):
    """(engine directory, diffusers pipeline) of a tiny SD model whose text encoder's final layer norm has a
    bias, as trained CLIPs' has: with the random model's zero bias every token's features average to 0, so a
    chunk's mean is ~1e-9 and A1111's mean-preserving rescale (a ratio of means) is ill-conditioned."""
    import torch

    from inpaintrt.export.exporter import export_engine
    from inpaintrt.export.loading import load_pipeline
    from inpaintrt.export.random_models import save_pipeline

    root = tmp_path_factory.mktemp("prompt-syntax")
    path = save_pipeline(root / "tiny", size="tiny", in_channels=9, seed=23)
    pipe = load_pipeline(str(path))
    norm = pipe.text_encoder.get_submodule("final_layer_norm")
    with torch.no_grad():
        norm.bias.copy_(torch.linspace(-0.6, 0.3, norm.bias.numel()))
    pipe.save_pretrained(path)
    pipe = load_pipeline(str(path))
    return export_engine(pipe, root / "engine", log=lambda *_: None), pipe


@pytest.fixture(scope="module")
def sd(sd_model):
    return Engine.load(sd_model[0]), sd_model[1]


def embeds(engine, prompt, negative=None, **kwargs):
    return engine.encode_prompt(prompt, negative_prompt=negative, **kwargs)


@pytest.mark.parametrize("prompt,negative", [("a red bench in a park", None), ("", "blurry, low quality"),
                                             (["a cat", "a dog"], ["ugly", "dark"]), (CLAUSE * 6, "x")])
def test_no_syntax_is_bit_identical_to_plain(sd, prompt, negative):
    engine, _ = sd
    ours = embeds(engine, prompt, negative)
    plain = embeds(engine, prompt, negative, prompt_syntax="plain")
    assert all(np.array_equal(a, b) for a, b in zip(ours, plain))


def test_weight_properties(sd):
    engine, _ = sd
    cond = lambda prompt: embeds(engine, prompt)[0]  # noqa: E731
    assert np.array_equal(cond("a (red:1.0) bench"), cond("a red bench"))
    assert np.array_equal(cond("a (red) bench"), cond("a (red:1.1) bench"))
    assert np.allclose(cond("a [red] bench"), cond("a (red:0.9090909) bench"), rtol=0, atol=1e-6)
    assert np.allclose(cond("a ((red)) bench"), cond("a (red:1.21) bench"), rtol=0, atol=1e-6)
    assert not np.allclose(cond("a (red:1.3) bench"), cond("a red bench"))
    assert np.array_equal(cond("a \\(red\\) bench"), embeds(engine, "a (red) bench", prompt_syntax="plain")[0])


def test_long_prompt_is_read_to_its_end(sd):
    engine, pipe = sd
    assert len(pipe.tokenizer(LONG).input_ids) - 2 == 120
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no truncation warning
        cond, uncond = embeds(engine, LONG)
    assert cond.shape == uncond.shape == (1, 154, 32)
    truncated = embeds(engine, LONG, prompt_syntax="plain")  # BOS, the first 75 tokens, EOS
    assert np.allclose(cond[:, :77], truncated[0], rtol=0, atol=1e-5)
    assert np.allclose(uncond[:, :77], truncated[1], rtol=0, atol=1e-5)  # "" padded with empty chunks
    assert np.allclose(uncond[:, 77:], truncated[1], rtol=0, atol=1e-5)
    args = dict(num_inference_steps=2, output_type="latent", generator=1, progress=False, **SIZE)
    image, mask = sample_image(160, 104), sample_mask(160, 104)
    long_result = engine.inpaint(image, mask, prompt=LONG, **args).images
    short_result = engine.inpaint(image, mask, prompt=LONG, prompt_syntax="plain", **args).images
    assert not np.allclose(long_result, short_result)  # the tokens past 75 reach the UNet


def test_plain_truncates_with_the_warning(sd):
    engine, _ = sd
    with pytest.warns(UserWarning, match=r"is 124 tokens.*last 47 were dropped"):  # not seen before: not cached
        cond, _ = embeds(engine, "truncated " + LONG, "x", prompt_syntax="plain")
    assert cond.shape == (1, 77, 32)


def test_break_starts_a_chunk(sd):
    engine, _ = sd
    cond, _ = embeds(engine, "a cat BREAK a dog", guidance_scale=1.0)
    assert cond.shape == (1, 154, 32)
    assert np.allclose(cond[:, :77], embeds(engine, "a cat")[0], rtol=0, atol=1e-5)
    assert np.allclose(cond[:, 77:], embeds(engine, "a dog")[0], rtol=0, atol=1e-5)


def test_shorter_side_padded_with_empty_chunks(sd):
    engine, _ = sd
    empty = embeds(engine, "")[0]
    cond, uncond = embeds(engine, "ugly", LONG)  # the positive padded to the negative's two chunks
    assert cond.shape == uncond.shape == (1, 154, 32)
    assert np.allclose(cond[:, :77], embeds(engine, "ugly")[0], atol=1e-5)
    assert np.allclose(cond[:, 77:], empty, atol=1e-5)
    cond, uncond = embeds(engine, ["a cat", LONG + "BREAK b"], "ugly")
    assert cond.shape == uncond.shape == (2, 231, 32)
    assert np.allclose(cond[0, 77:154], empty[0], atol=1e-5) and np.allclose(uncond[:, 154:], empty, atol=1e-5)


CASES = {
    "one chunk": ([("a photo of ", 1.0), ("a red bench", 1.3), (" in a ", 1.0), ("park", 0.8)],
                  [("blurry", 1.0), (", dark", 1.2)]),
    "three chunks": ([(CLAUSE * 5, 1.0), ("golden hour", 1.5), (", " + CLAUSE * 3, 1.0), BREAK, ("a kite", 0.7)],
                     [("ugly", 1.0)]),
    "negative longer": ([("a cat", 1.25)], [(CLAUSE * 8, 1.0), ("low quality", 1.4)]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_embeddings_match_the_a1111_reference(sd, case):
    engine, pipe = sd
    runs, negative = CASES[case]
    reference = sd_reference(pipe, [runs, negative])
    cond, uncond = embeds(engine, prompt_text(runs), prompt_text(negative))
    ours = np.concatenate([cond, uncond])
    assert ours.shape == reference.shape
    error = np.abs(ours - reference).max()
    measure = "prompt syntax (SD) embeddings vs A1111 reference, max abs diff"
    assert record(measure, error) <= 1e-4 * np.abs(reference).max()


def test_long_weighted_prompt_image_matches_diffusers(sd):
    """diffusers' pipeline given the reference embeddings, the engine given the text."""
    import torch

    engine, pipe = sd
    runs, negative = CASES["three chunks"]
    reference = torch.from_numpy(sd_reference(pipe, [runs, negative]))
    image, mask = sample_image(160, 104), sample_mask(160, 104)
    args = dict(num_inference_steps=3, output_type="np", **SIZE)
    expected = diffusers_inpaint(pipe, 5, "euler", image=image, mask_image=mask, prompt_embeds=reference[:1],
                                 negative_prompt_embeds=reference[1:], **args)
    got = engine.inpaint(image, mask, prompt=prompt_text(runs), negative_prompt=prompt_text(negative),
                         scheduler="euler", generator=np.random.default_rng(5), progress=False, **args).images
    assert got.shape == expected.shape == (1, 104, 160, 3)
    assert record("prompt syntax (SD) image (np, [0, 1]), max abs diff", np.abs(got - expected).max()) <= 1e-3


@pytest.mark.parametrize("prompt,negative", [(prompt_text(CASES["one chunk"][0]), prompt_text(CASES["one chunk"][1])),
                                             (LONG, "ugly"), ("ugly", CLAUSE * 13)])
def test_embeddings_match_the_community_pipeline(sd, lpw, prompt, negative):
    """Where its semantics are A1111's: one weighted chunk, or unweighted chunks (it rescales all chunks of
    a prompt by one mean, A1111 each chunk by its own); at most its default 3 chunks; the tiny tokenizer
    pads with EOS, so its EOS-last padding is the same ids."""
    import torch

    from types import SimpleNamespace

    engine, pipe = sd
    encoder = pipe.text_encoder  # it reads text_model.final_layer_norm, where transformers 4 kept it
    shim = SimpleNamespace(tokenizer=pipe.tokenizer, device=torch.device("cpu"),
                           text_encoder=lambda *a, **k: encoder(*a, **k))
    shim.text_encoder.text_model = SimpleNamespace(final_layer_norm=encoder.get_submodule("final_layer_norm"))
    with torch.no_grad():
        theirs = lpw.get_weighted_text_embeddings(shim, prompt, negative, max_embeddings_multiples=3,
                                                  no_boseos_middle=False)
    ours = embeds(engine, prompt, negative)
    for mine, reference in zip(ours, theirs):
        assert mine.shape == tuple(reference.shape)
        error = np.abs(mine - reference.numpy()).max()
        assert record("prompt syntax (SD) embeddings vs lpw_stable_diffusion, max abs diff", error) <= 1e-4 * np.abs(
            reference.numpy()).max()


def test_long_prompt_through_a_controlnet(pipes, controlnet_exported):
    """The ControlNet graphs' text axis is dynamic too; against diffusers' ControlNet pipeline given the
    reference embeddings (unweighted: the conftest model's text encoder has the zero-bias final norm)."""
    import torch
    from diffusers import ControlNetModel

    from controlnet_helpers import controlnet_pipeline, edge_picture

    net = ControlNetModel.from_pretrained(str(controlnet_exported["folders"]["plain"])).eval()
    runs, negative = [(CLAUSE * 8, 1.0), BREAK, ("a kite", 1.0)], [("ugly", 1.0)]
    reference = torch.from_numpy(sd_reference(pipes[9], [runs, negative]))
    image, mask, canny = sample_image(160, 104), sample_mask(160, 104), edge_picture()
    args = dict(num_inference_steps=3, output_type="np", controlnet_conditioning_scale=0.8, **SIZE)
    expected = diffusers_inpaint(controlnet_pipeline(pipes[9], [net]), 4, "euler", image=image, mask_image=mask,
                                 control_image=canny, prompt_embeds=reference[:1],
                                 negative_prompt_embeds=reference[1:], **args)
    engine = Engine.load(controlnet_exported["engines"]["single"])
    got = engine.inpaint(image, mask, control_image=canny, prompt=prompt_text(runs),
                         negative_prompt=prompt_text(negative), scheduler="euler",
                         generator=np.random.default_rng(4), progress=False, **args).images
    assert reference.shape[1] == 231 and got.shape == expected.shape
    assert record("prompt syntax (ControlNet) image (np, [0, 1]), max abs diff", np.abs(got - expected).max()) <= 1e-3


def test_long_prompt_embeds_round_trip(sd):
    engine, _ = sd
    cond, uncond = embeds(engine, LONG, "ugly")
    args = dict(num_inference_steps=2, output_type="latent", generator=3, progress=False, **SIZE)
    image, mask = sample_image(160, 104), sample_mask(160, 104)
    with_text = engine.inpaint(image, mask, prompt=LONG, negative_prompt="ugly", **args).images
    with_embeds = engine.inpaint(image, mask, prompt_embeds=cond, negative_prompt_embeds=uncond, **args).images
    assert np.array_equal(with_text, with_embeds)
    with pytest.raises(ValueError, match=r"prompt_embeds has shape \(1, 100, 32\).*multiple of 77"):
        engine.inpaint(image, mask, prompt_embeds=cond[:, :100], **args)
    padded = engine.inpaint(image, mask, prompt_embeds=cond, negative_prompt="ugly", **args).images
    assert np.array_equal(padded, with_text)  # the negative prompt padded to the given embeddings' length
    with pytest.raises(ValueError, match="negative_prompt gives 77 tokens .* prompt_embeds gives 154"):
        engine.inpaint(image, mask, prompt_embeds=cond, negative_prompt="ugly", prompt_syntax="plain", **args)
    with pytest.raises(ValueError, match="negative_prompt gives 154 .* prompt_embeds gives 77"):
        engine.inpaint(image, mask, prompt_embeds=cond[:, :77], negative_prompt=LONG, **args)


def test_static_limits_name_the_prompt(sd, sd_model):
    """A UNet exported with a fixed 77-token text axis, and TensorRT plans (one-chunk profiles)."""
    import json

    from inpaintrt.engine.plans import plan_layout
    from inpaintrt.engine.prompts import PromptArgs, TextConditioner

    engine, _ = sd
    manifest = json.loads((sd_model[0] / "manifest.json").read_text())
    assert manifest["components"]["unet"]["inputs"][2]["shape"] == ["batch", "text_length", 32]
    old = copy.deepcopy(manifest)
    old["components"]["unet"]["inputs"][2]["shape"][1] = 77
    text = TextConditioner(sd_model[0], old, engine.sessions)
    assert text(PromptArgs(prompt="a (red:1.2) bench"), 1, True)[0]["encoder_hidden_states"].shape == (1, 77, 32)
    with pytest.raises(ValueError, match="prompt needs 2 chunks .*fixed 77-token.*prompt_syntax='plain'"):
        text(PromptArgs(prompt=LONG), 1, True)
    layout = plan_layout(manifest["components"], ((104, 160),), 2, 8)
    assert layout["unet"][0]["profile"]["encoder_hidden_states"] == [[1, 77, 32], [2, 77, 32], [4, 77, 32]]
    trt = dict(manifest, tensorrt={"plans": layout})
    text = TextConditioner(sd_model[0], trt, engine.sessions, backend="tensorrt")
    with pytest.raises(ValueError, match="prompt needs 2 chunks .*TensorRT plans take at most 77"):
        text(PromptArgs(prompt="a BREAK b"), 1, False)
    with pytest.raises(ValueError, match="prompt_embeds has 154 tokens; .*TensorRT"):
        text(PromptArgs(prompt_embeds=np.zeros((1, 154, 32), np.float32)), 1, False)


def test_prompt_cache_reuses_chunks(sd):
    engine, _ = sd
    first = embeds(engine, LONG + "(sunset:1.2)", "ugly")
    again = embeds(engine, LONG + "(sunset:1.2)", "ugly")
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert any(isinstance(key[1], tuple) for key in engine.text._cache)  # chunks are kept by their token ids


def test_kandinsky_reads_plain_text():
    from inpaintrt.engine.argument_specs import needing
    from inpaintrt.engine.kandinsky import _plain_prompts

    _plain_prompts("plain", "a (red:1.2) cat", None, None)
    _plain_prompts("a1111", "a red cat", ["ugly"], None)
    with pytest.raises(ValueError, match="A1111 prompt syntax.*prompt_syntax='plain'"):
        _plain_prompts("a1111", "a cat", "(ugly:1.3)", None)
    with pytest.raises(ValueError, match="prompt_syntax="):
        _plain_prompts("weighted", "a cat", None, None)
    assert "prompt_syntax" not in needing("prior")


def test_server_and_cli_fields():
    from pydantic import ValidationError

    from inpaintrt.serve.inputs import DEFAULTED, InpaintParameters

    assert InpaintParameters(prompt="x", prompt_syntax="plain").prompt_syntax == "plain"
    assert InpaintParameters(prompt="x").prompt_syntax is None and "prompt_syntax" in DEFAULTED  # engine default
    with pytest.raises(ValidationError):
        InpaintParameters(prompt="x", prompt_syntax="compel")
