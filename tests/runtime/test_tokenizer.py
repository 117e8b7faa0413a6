"""The runtime's tokenizers-based CLIP tokenization gives transformers' CLIPTokenizer ids, and its truncation
warning reaches the notices a job collects (what the server sends the client: tests/serve/test_serve_dropin.py)."""
import numpy as np
import pytest

from inpaintrt.runtime import notices
from inpaintrt.runtime.tokenizer import PromptTokenizer

PROMPTS = [
    "",
    "a photo of a cat",
    "A Red BENCH, in a park; golden hour!!  (high detail) 8k",
    "café naïve — emoji 🙂 and numbers 1234567",
    "an extremely long prompt " + "with many repeated words " * 30,
]


def test_ids_match_transformers(engines, pipes):
    import json

    manifest = json.loads((engines[9] / "manifest.json").read_text())["tokenizer"]
    ours = PromptTokenizer(engines[9] / manifest["file"], manifest["max_length"], manifest["pad_id"])
    reference = pipes[9].tokenizer
    with pytest.warns(UserWarning, match=r"last \d+ were dropped"):
        got = ours(PROMPTS)
    expected = reference(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="np").input_ids
    assert got.shape == (len(PROMPTS), 77) and got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)


def test_truncation_reaches_the_collected_notices(engines):
    import json

    manifest = json.loads((engines[9] / "manifest.json").read_text())
    info = manifest["tokenizer"]
    info = info if "file" in info else next(iter(info.values()))
    tokenizer = PromptTokenizer(engines[9] / info["file"], info["max_length"], info["pad_id"])
    with pytest.warns(UserWarning, match="were dropped"), notices.collect() as found:
        tokenizer([" ".join(["cat"] * 100)])
    assert len(found) == 1 and "were dropped" in found[0]
