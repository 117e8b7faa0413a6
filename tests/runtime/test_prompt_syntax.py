"""prompt_syntax='a1111', the parser alone: A1111's weights and BREAK, 75-token chunks and the mean-keeping
emphasis, against A1111's documented examples and diffusers' community lpw pipeline (the same syntax on the
engines: tests/engine/test_prompt_syntax_engine.py)."""
import numpy as np
import pytest

from inpaintrt.runtime.prompt_syntax import CHUNK_TOKENS, check_syntax, chunks, emphasize, parse


@pytest.mark.parametrize("text,expected", [  # A1111's documented examples
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
])
def test_parse_matches_a1111_examples(text, expected):
    assert parse(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("(w:abc)", [("w:abc", 1.1)]),  # not a number: text, and the brackets are plain ones
    ("(w:1.2.3)", [("w:1.2.3", 1.1)]),  # a malformed number likewise (A1111 raises here)
    ("(w : 1.5 )", [("w ", 1.5)]),
    ("[w]", [("w", 1 / 1.1)]),
    ("((w))", [("w", 1.1 * 1.1)]),
    ("w:1.3)", [("w:1.3)", 1.0)]),  # nothing open: all text
    ("a) b] c", [("a) b] c", 1.0)]),
    ("a\\b \\\\ \\)", [("ab \\ )", 1.0)]),  # a backslash before an ordinary character is dropped
    ("", [("", 1.0)]),
    ("a BREAK b", [("a", 1.0), None, ("b", 1.0)]),
    ("(a BREAK b)", [("a", 1.1), None, ("b", 1.1)]),
    ("BREAKFAST break", [("BREAKFAST break", 1.0)]),  # only the uppercase word
])
def test_parse_edge_cases(text, expected):
    assert parse(text) == expected


def test_chunks_of_75_and_break():
    words = lambda text: [len(w) for w in text.split()]  # noqa: E731 (a stand-in tokenizer)
    assert [len(ids) for ids, _ in chunks(parse("x " * 160), words)] == [75, 75, 10]
    assert [len(ids) for ids, _ in chunks(parse("x " * 75), words)] == [75]
    assert [len(ids) for ids, _ in chunks(parse("x " * 76), words)] == [75, 1]
    assert [ids for ids, _ in chunks(parse("a BREAK bb"), words)] == [[1], [2]]
    assert [ids for ids, _ in chunks(parse("BREAK a"), words)] == [[], [1]]
    assert [ids for ids, _ in chunks(parse("a BREAK"), words)] == [[1]]
    assert chunks(parse("a (bb cc:1.5)"), words) == [([1, 2, 2], [1.0, 1.5, 1.5])]
    assert CHUNK_TOKENS == 75


def test_emphasize_keeps_each_chunk_mean():
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((2, 77, 8)).astype(np.float32) + 0.5
    weights = np.ones((2, 77), np.float32)
    weights[0, 3:6] = 1.4
    out = emphasize(hidden, weights)
    assert out[0].mean() == pytest.approx(hidden[0].mean(), rel=1e-5)
    assert not np.allclose(out[0], hidden[0]) and np.array_equal(out[1], hidden[1])


def test_emphasize_is_well_defined_where_every_token_averages_zero():
    """A final norm with zero bias: each token's features average to 0, so a chunk's weighted mean is
    rounding noise (or exactly 0). The chunk is weighted and not rescaled by a ratio of noises."""
    rng = np.random.default_rng(1)
    hidden = rng.standard_normal((1, 77, 8))
    hidden = (hidden - hidden.mean(-1, keepdims=True)).astype(np.float32)
    hidden[0, 10:] = 0.0
    weights = np.ones((1, 77), np.float32)
    weights[0, 2:5] = 1.3
    out = emphasize(hidden, weights)
    assert np.isfinite(out).all()
    assert np.allclose(out, hidden * weights[..., None], atol=1e-6)

def test_unknown_syntax_names_the_parameter():
    with pytest.raises(ValueError, match="prompt_syntax='compel'.*'a1111'.*'plain'"):
        check_syntax("compel")


@pytest.mark.parametrize("text", ["normal text", "an (important) word", "(unbalanced", "\\(literal\\]",
                                  "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", "(w:abc)", "a) b] [[c]]"])
def test_parse_matches_the_community_pipeline(lpw, text):
    assert parse(text) == [tuple(part) for part in lpw.parse_prompt_attention(text)]
