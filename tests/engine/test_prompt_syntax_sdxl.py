"""prompt_syntax on the tiny SDXL engines: both encoders chunked alike (a refiner's one), the pooled
embedding from the first chunk; against the torch reference of prompt_reference.py and diffusers' pipeline."""
import numpy as np
import pytest

from diffusers_runs import diffusers_inpaint
from parity import record
from pictures import sample_image, sample_mask
from inpaintrt import Engine
from prompt_reference import BREAK, prompt_text, sdxl_reference

SIZE = dict(height=104, width=160)
CLAUSE = "a red bench in a quiet park with tall green trees, "  # 12 tokens
LONG = CLAUSE * 10  # 120 tokens: two chunks


@pytest.fixture(scope="module")
def loaded(sdxl_engines):
    return {name: Engine.load(sdxl_engines[name]) for name in ("inpaint", "refiner")}


@pytest.mark.parametrize("model,kwargs", [
    ("inpaint", dict(prompt="a cat", negative_prompt="dog", prompt_2="a hat")),
    ("inpaint", dict(prompt=["a cat", "a dog"], negative_prompt=None)),
    ("refiner", dict(prompt="a red bench", negative_prompt="grey")),
])
def test_no_syntax_is_bit_identical_to_plain(loaded, model, kwargs):
    ours = loaded[model].encode_prompt(**kwargs)
    plain = loaded[model].encode_prompt(**kwargs, prompt_syntax="plain")
    assert all(np.array_equal(a, b) for a, b in zip(ours, plain))


def test_weights_break_and_long_prompts(loaded):
    engine = loaded["inpaint"]
    cond = lambda prompt, **kw: engine.encode_prompt(prompt, guidance_scale=1.0, **kw)  # noqa: E731
    for a, b in zip(cond("a (red:1.0) bench"), cond("a red bench")):
        assert a is None and b is None or np.array_equal(a, b)
    assert np.array_equal(cond("a (red) bench")[0], cond("a (red:1.1) bench")[0])
    assert np.allclose(cond("a [red] bench")[0], cond("a (red:0.9090909) bench")[0], rtol=0, atol=1e-6)
    weighted, plain = cond("a (red:1.4) bench"), cond("a red bench")
    assert not np.allclose(weighted[0], plain[0]) and np.array_equal(weighted[2], plain[2])  # pooled: unweighted
    hidden, _, pooled, _ = cond("a cat BREAK a dog")
    assert hidden.shape == (1, 154, 80)
    assert np.allclose(pooled, cond("a cat")[2], rtol=0, atol=1e-5)  # the first chunk's
    hidden, negative, pooled, negative_pooled = engine.encode_prompt(LONG)
    truncated = engine.encode_prompt(LONG, prompt_syntax="plain")
    assert hidden.shape == negative.shape == (1, 154, 80)
    assert np.allclose(hidden[:, :77], truncated[0], rtol=0, atol=1e-5)
    assert np.allclose(pooled, truncated[2], rtol=0, atol=1e-5)
    assert not negative.any() and not negative_pooled.any()  # force_zeros_for_empty_prompt: zeros, as long


CASES = {
    "inpaint": ([("a photo of ", 1.0), ("a red bench", 1.3), (" " + CLAUSE * 6, 1.0), ("sunset", 0.7)],
                [("oil painting", 1.2), (", " + CLAUSE * 2, 1.0), BREAK, ("a hat", 1.0)],
                [("ugly", 1.0), (", blurry", 1.25)]),
    "refiner": ([(CLAUSE * 4, 1.0), ("golden hour", 1.5), (", " + CLAUSE * 4, 1.0)], None,
                [("grey", 0.8)]),
}


@pytest.mark.parametrize("model", sorted(CASES))
def test_embeddings_match_the_a1111_reference(sdxl_pipes, loaded, model):
    runs, runs_2, negative = CASES[model]
    hidden, pooled = sdxl_reference(sdxl_pipes[model], [runs, negative], None if runs_2 is None else [runs_2, negative])
    second = {} if runs_2 is None else dict(prompt_2=prompt_text(runs_2))
    ours = loaded[model].encode_prompt(prompt_text(runs), negative_prompt=prompt_text(negative), **second)
    for mine, reference in ((np.concatenate(ours[:2]), hidden), (np.concatenate(ours[2:]), pooled)):
        assert mine.shape == reference.shape
        error = np.abs(mine - reference).max()
        assert record("prompt syntax (SDXL) embeddings vs A1111 reference, max abs diff",
                      error) <= 1e-4 * np.abs(reference).max()


def test_long_weighted_prompt_image_matches_diffusers(sdxl_pipes, loaded):
    """diffusers' pipeline given the reference's four tensors, the engine given the text."""
    import torch

    runs, runs_2, negative = CASES["inpaint"]
    hidden, pooled = (torch.from_numpy(x) for x in sdxl_reference(sdxl_pipes["inpaint"], [runs, negative],
                                                                   [runs_2, negative]))
    image, mask = sample_image(160, 104), sample_mask(160, 104)
    args = dict(num_inference_steps=3, output_type="np", **SIZE)
    expected = diffusers_inpaint(sdxl_pipes["inpaint"], 6, "euler", image=image, mask_image=mask,
                                 prompt_embeds=hidden[:1], negative_prompt_embeds=hidden[1:],
                                 pooled_prompt_embeds=pooled[:1], negative_pooled_prompt_embeds=pooled[1:], **args)
    got = loaded["inpaint"].inpaint(image, mask, prompt=prompt_text(runs), prompt_2=prompt_text(runs_2),
                                    negative_prompt=prompt_text(negative), scheduler="euler",
                                    generator=np.random.default_rng(6), progress=False, **args).images
    assert got.shape == expected.shape == (1, 104, 160, 3)
    assert record("prompt syntax (SDXL) image (np, [0, 1]), max abs diff", np.abs(got - expected).max()) <= 1e-3
