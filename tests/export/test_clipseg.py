"""CLIPSeg exported to ONNX and run by the torch-free runtime, against transformers' CLIPSegForImageSegmentation
and CLIPSegProcessor on a tiny random-weight model (tests/support/clipseg_models.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from clipseg_models import CLIPSEG_FRAME, save_tiny_clipseg  # noqa: E402
from parity import record  # noqa: E402
from PIL import Image  # noqa: E402

from inpaintrt import Engine  # noqa: E402
from inpaintrt.export_cli import export_main  # noqa: E402
from inpaintrt.engine.manifest import read_manifest  # noqa: E402
from inpaintrt.engine.segment_clipseg import ClipSegEngine  # noqa: E402
from inpaintrt.export import segment_clipseg  # noqa: E402
from inpaintrt.export.exporter import ExportError  # noqa: E402
from inpaintrt.export.segment_clipseg import ClipSegSourceError, detect_clipseg, export_clipseg  # noqa: E402
from inpaintrt.runtime.errors import InvalidArgument  # noqa: E402

QUIET = dict(log=lambda *_: None)
HEIGHT, WIDTH = 50, 83  # not square, and neither side the frame's: both resizes are exercised


@pytest.fixture(scope="module")
def clipseg(tmp_path_factory):
    """{"source": checkpoint folder, "engine": its exported directory, "model"/"processor": transformers'}."""
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    root = tmp_path_factory.mktemp("clipseg")
    source = save_tiny_clipseg(root / "clipseg-tiny")
    engine = export_clipseg(source, root / "engine", **QUIET)
    return {"source": source, "engine": engine, "model": CLIPSegForImageSegmentation.from_pretrained(source).eval(),
            "processor": CLIPSegProcessor.from_pretrained(source)}


@pytest.fixture(scope="module")
def engine(clipseg):
    return Engine.load(clipseg["engine"])


@pytest.fixture(scope="module")
def picture():
    return Image.fromarray(np.random.default_rng(5).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8), "RGB")


def reference_logits(clipseg, picture, phrases) -> np.ndarray:
    """transformers' logits for `phrases` on `picture`, resized to the picture as torch interpolates."""
    inputs = clipseg["processor"](text=phrases, images=[picture] * len(phrases), padding="max_length",
                                  return_tensors="pt")
    with torch.no_grad():
        logits = clipseg["model"](**inputs).logits
    resized = torch.nn.functional.interpolate(logits[:, None], size=(picture.height, picture.width), mode="bilinear",
                                              align_corners=False)
    return resized[:, 0].numpy()


def relative(got, expected) -> float:
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def test_the_directory_is_a_clipseg_segmenter(clipseg, engine):
    manifest = read_manifest(clipseg["engine"])
    assert manifest["model"]["kind"] == "segmenter" and manifest["model"]["family"] == "clipseg"
    assert manifest["model"]["resolution"] == CLIPSEG_FRAME and "scheduler" not in manifest
    assert manifest["tokenizer"]["max_length"] == 77 and manifest["tokenizer"]["pad_token"] == "<|endoftext|>"
    assert list(manifest["components"]) == ["clipseg"]
    assert record("clipseg graph vs torch", manifest["components"]["clipseg"]["parity"]["max_rel_error"]) < 1e-4
    assert isinstance(engine, ClipSegEngine)
    facts = engine.facts()
    assert facts["kind"] == "segmenter" and facts["phrases"] and not facts["clicks"] and facts["resolution"] == 64
    assert detect_clipseg(clipseg["source"]) and not detect_clipseg(clipseg["engine"])


def test_preprocessing_is_the_processors(clipseg, engine, picture):
    inputs = clipseg["processor"](text=["the sky", "a dog, sitting"], images=picture, padding="max_length",
                                  return_tensors="np")
    assert np.array_equal(engine.pixel_values(np.asarray(picture)), inputs["pixel_values"])
    assert np.array_equal(engine.tokenizer(["the sky", "a dog, sitting"]), inputs["input_ids"])
    long = " ".join(["sky"] * 90)  # past 77 tokens: cut as the processor's truncation cuts, end-of-text kept
    with pytest.warns(UserWarning, match="the last 15 were dropped"):
        ids = engine.tokenizer([long])
    assert np.array_equal(ids, clipseg["processor"].tokenizer([long], padding="max_length", truncation=True,
                                                              return_tensors="np")["input_ids"])


def test_logits_match_transformers_at_the_pictures_size(clipseg, engine, picture):
    found = engine.segment(picture, text="the sky")
    expected = reference_logits(clipseg, picture, ["the sky"])
    assert found.logits.shape == found.masks.shape == (1, HEIGHT, WIDTH) and found.logits.dtype == np.float32
    assert record("clipseg logits vs transformers", relative(found.logits, expected)) <= 1e-3
    probability = 1 / (1 + np.exp(-expected))
    unsure = np.abs(probability - 0.5) < 1e-4  # pixels a rounding step from the threshold may go either way
    assert 0 < found.masks.mean() < 1 and np.array_equal(found.masks[~unsure], (probability > 0.5)[~unsure])
    assert found.scores.shape == (1,) and found.scores[0] == pytest.approx(probability.max(), abs=1e-5)
    assert found.mask_image().size == (WIDTH, HEIGHT)


def test_a_list_of_phrases_gives_one_mask_each(clipseg, engine, picture):
    phrases = ["the sky", "a red car parked on the left"]
    found = engine.segment(picture, text=phrases)
    expected = reference_logits(clipseg, picture, phrases)
    assert found.masks.shape == (2, HEIGHT, WIDTH) and found.scores.shape == (2,)
    assert relative(found.logits, expected) <= 1e-3
    assert relative(found.logits[0], found.logits[1]) > 1e-2  # the phrase matters
    alone = engine.segment(picture, text=phrases[1])  # the shared vision pass changes nothing
    assert relative(alone.logits[0], found.logits[1]) <= 1e-5


def test_an_upscaled_picture_and_a_float_array_agree_with_the_reference(clipseg, engine):
    values = np.random.default_rng(9).random((97, 150, 3))
    picture = Image.fromarray(np.round(values * 255).astype(np.uint8), "RGB")
    found = engine.segment(values, text="a cat")  # a float array in [0, 1] reads as its 8-bit picture
    assert relative(found.logits, reference_logits(clipseg, picture, ["a cat"])) <= 1e-3


def test_the_threshold_cuts_the_probability(engine, picture):
    results = {t: engine.segment(picture, text="the sky", threshold=t) for t in (0.3, 0.5, 0.55)}
    probability = 1 / (1 + np.exp(-results[0.5].logits.astype(np.float64)))
    counts = []
    for threshold, found in results.items():
        assert np.array_equal(found.logits, results[0.5].logits)
        unsure = np.abs(probability - threshold) < 1e-6
        assert np.array_equal(found.masks[~unsure], (probability > threshold)[~unsure])
        counts.append(int(found.masks.sum()))
    assert counts[0] > counts[1] > counts[2] > 0
    assert results[0.5].scores[0] > 0.55  # a mask is non-empty exactly where its score clears the threshold
    assert not engine.segment(picture, text="the sky", threshold=0.999).masks.any()


@pytest.mark.parametrize("text", ["", "   ", None, [], ["the sky", ""], 5])
def test_missing_text_is_named(engine, picture, text):
    with pytest.raises(InvalidArgument, match="text") as caught:
        engine.segment(picture, text=text)
    assert caught.value.field == "text"


def test_too_many_phrases_are_refused(engine, picture):
    with pytest.raises(InvalidArgument, match="at most 16") as caught:
        engine.segment(picture, text=["the sky"] * 17)
    assert caught.value.field == "text"


@pytest.mark.parametrize("threshold", [0, 1, -0.5, 1.5, float("nan")])
def test_a_threshold_outside_0_to_1_is_named(engine, picture, threshold):
    with pytest.raises(InvalidArgument) as caught:
        engine.segment(picture, text="the sky", threshold=threshold)
    assert caught.value.field == "threshold"


def test_segment_anything_arguments_are_refused_by_name(engine, picture):
    with pytest.raises(InvalidArgument, match="points is for Segment Anything") as caught:
        engine.segment(picture, text="the sky", points=[[10, 10]])
    assert caught.value.field == "points"
    with pytest.raises(InvalidArgument, match="box, points are for Segment Anything"):
        engine.segment(picture, text="the sky", points=[[10, 10]], box=[0, 0, 5, 5])
    # a full set at its defaults (what a server sends) passes
    found = engine.segment(picture, text="the sky", points=None, labels=None, box=None, multimask_output=False,
                           mask_input=None)
    assert found.masks.shape == (1, HEIGHT, WIDTH)
    with pytest.raises(TypeError, match="unexpected keyword argument 'prompt'"):
        engine.segment(picture, text="the sky", prompt="a cat")


def test_nan_logits_name_the_fix(clipseg, picture):
    broken = Engine.load(clipseg["engine"])

    class NanSession:
        def run(self, feeds):
            return {"logits": np.full((len(feeds["input_ids"]), 64, 64), np.nan, np.float32)}

    broken.sessions["clipseg"] = NanSession()
    with pytest.raises(FloatingPointError, match="precision='fp32'"):
        broken.segment(picture, text="the sky")


def partials(parent):
    return [p.name for p in parent.iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize("case", ["missing", "a_file", "no_config", "other_model", "no_weights", "no_processor"])
def test_a_folder_that_is_not_clipseg_is_refused_and_nothing_is_written(clipseg, tmp_path, case):
    source = tmp_path / "source"
    if case == "a_file":
        source.write_text("{}")
        message = "is a file; CLIPSeg is exported from its folder"
    elif case == "no_config":
        source.mkdir()
        message = "has no config.json"
    elif case == "other_model":
        source.mkdir()
        (source / "config.json").write_text(json.dumps({"model_type": "clip"}))
        message = "says model_type 'clip', not \"clipseg\""
    elif case in ("no_weights", "no_processor"):
        source.mkdir()
        keep = {"config.json"} if case == "no_weights" else {"config.json", "model.safetensors"}
        for name in keep:
            (source / name).write_bytes((clipseg["source"] / name).read_bytes())
        message = "weights cannot be loaded" if case == "no_weights" else "its processor .* cannot be loaded"
    else:
        message = "does not exist"
    assert detect_clipseg(source) == (case in ("no_weights", "no_processor"))
    out = tmp_path / "engines" / "clipseg"
    out.parent.mkdir()
    with pytest.raises(ClipSegSourceError, match=message):
        export_clipseg(source, out, **QUIET)
    assert not out.exists() and partials(out.parent) == []


def test_a_failed_export_leaves_nothing(clipseg, tmp_path, monkeypatch):
    def fails(spec, work, *args, **kwargs):
        (work / "clipseg.onnx").write_bytes(b"half a graph")
        raise ExportError("clipseg: the ONNX graph differs from torch")

    monkeypatch.setattr(segment_clipseg, "export_component", fails)
    out = tmp_path / "engines" / "clipseg"
    with pytest.raises(ExportError, match="differs from torch"):
        export_clipseg(clipseg["source"], out, **QUIET)
    assert not out.exists() and partials(out.parent) == []
    with pytest.raises(ExportError, match="exists and is not empty"):  # and a finished one is never overwritten
        export_clipseg(clipseg["source"], clipseg["engine"], **QUIET)


def test_a_config_with_the_real_eos_token_pools_the_same_way(tmp_path, picture):
    """transformers' newer configs name <|endoftext|> (49407) as eos_token_id: the pooled output is then read at
    its first occurrence instead of at the largest id; both must hold in the graph."""
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    source = save_tiny_clipseg(tmp_path / "clipseg-eos", eos_token_id=49407)
    found = Engine.load(export_clipseg(source, tmp_path / "engine", optimize=False, **QUIET))
    model = {"model": CLIPSegForImageSegmentation.from_pretrained(source).eval(),
             "processor": CLIPSegProcessor.from_pretrained(source)}
    phrases = ["the sky", "a tree"]
    assert relative(found.segment(picture, text=phrases).logits, reference_logits(model, picture, phrases)) <= 1e-3


def test_the_command_line_finds_clipseg_by_its_config(clipseg, tmp_path, capsys):
    out = tmp_path / "by-config"
    assert export_main(["--model", str(clipseg["source"]), "--output", str(out), "--no-optimize"]) == 0
    assert Engine.load(out).family == "clipseg"
    (tmp_path / "not-clipseg").mkdir()
    (tmp_path / "not-clipseg" / "config.json").write_text(json.dumps({"model_type": "clip"}))
    assert export_main(["--model", str(tmp_path / "not-clipseg"), "--output", str(tmp_path / "o2"),
                        "--kind", "clipseg"]) == 2
    assert "says model_type 'clip', not \"clipseg\"" in capsys.readouterr().err


def test_segment_runs_without_torch(engine):
    from no_torch import run_without_torch

    run_without_torch("""
import numpy as np
from inpaintrt import Engine
result = Engine.load(sys.argv[1]).segment(np.zeros((40, 56, 3), np.uint8), text=["the sky", "a house"])
assert result.masks.shape == (2, 40, 56)
""", str(engine.root))


def test_openvino_gives_onnx_runtimes_logits(engine, picture):
    pytest.importorskip("openvino")
    openvino = Engine.load(engine.root, backend="openvino")
    assert openvino.backend == "openvino" and openvino.precision == "fp32"
    phrases = ["a cat", "the sky"]
    diff = relative(openvino.segment(picture, text=phrases).logits, engine.segment(picture, text=phrases).logits)
    record("clipseg openvino fp32 vs ort-cpu logits (relative)", diff)
    assert diff <= 1e-5
