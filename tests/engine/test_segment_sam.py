"""SamEngine.segment against segment-anything's own SamPredictor (random weights at tiny sizes, official code with
its two torchvision PIL helpers stood in for by PIL): the logits, scores and low-res logits for points, a box,
both, multimask and a refined mask input, at non-square sizes; the embedding cache; refusals; the masks feeding
an eraser; the export's refusals."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from parity import record  # noqa: E402
from sam_models import TINY_TINYVIT, TINY_VIT, official_predictor, official_sam, official_tiny, randomize_sam, tiny_sam  # noqa: E402

from inpaintrt import Engine  # noqa: E402
from inpaintrt.engine.base import MissingMethod  # noqa: E402
from inpaintrt.export.segment_sam import load_sam, preprocess_size, sam_predict  # noqa: E402
from inpaintrt.export.segmenter import SegmenterSourceError, export_sam, export_segmenter  # noqa: E402
from inpaintrt.runtime.errors import InvalidArgument  # noqa: E402

PICTURES = {"wide": (90, 130), "tall": (141, 77)}
PROMPTS = {
    "points": dict(point_coords=[[30.0, 40.0], [70.5, 20.0]], point_labels=[1, 0]),
    "box": dict(box=[10.0, 12.0, 64.0, 70.0]),
    "points+box": dict(point_coords=[[40.0, 30.0]], point_labels=[1], box=[8.0, 5.0, 60.0, 66.0]),
}


def relative(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


def picture(height, width, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    predictor = official_predictor(tmp_path_factory.mktemp("segment-anything"))
    if predictor is None:
        pytest.skip("segment-anything is not installed: pip install --no-deps segment-anything==1.0")
    modeling = official_sam()[0]
    sam = randomize_sam(official_tiny(modeling), seed=21)
    return predictor, sam


@pytest.fixture(scope="module")
def sam_engine(official, tmp_path_factory):
    _, sam = official
    root = export_sam(load_sam(sam.state_dict(), TINY_VIT), tmp_path_factory.mktemp("sam") / "engine",
                      log=lambda *_: None)
    return Engine.load(root)


def ours(prompt: dict) -> dict:
    """SamPredictor.predict's names to segment's."""
    return {"points": prompt.get("point_coords"), "labels": prompt.get("point_labels"), "box": prompt.get("box")}


@pytest.mark.parametrize("size", PICTURES)
@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("multimask", [False, True])
def test_segment_equals_sam_predictor(official, sam_engine, size, prompt, multimask):
    predictor_class, sam = official
    image = picture(*PICTURES[size], seed=len(prompt))
    predictor = predictor_class(sam)
    predictor.set_image(image)
    given = {k: np.asarray(v) for k, v in PROMPTS[prompt].items()}
    with torch.no_grad():
        logits, scores, low = predictor.predict(**given, multimask_output=multimask, return_logits=True)
    result = sam_engine.segment(image, **ours(PROMPTS[prompt]), multimask_output=multimask)
    assert result.logits.shape == logits.shape == (3 if multimask else 1, *PICTURES[size])
    for name, got, want in (("logits", result.logits, logits), ("scores", result.scores, scores),
                            ("low-res logits", result.low_res_logits, low)):
        error = record(f"sam engine vs SamPredictor, {name} (relative)", relative(got, want))
        assert error <= 1e-3, (name, error)
    assert (result.masks == (result.logits > 0)).all() and result.masks.dtype == bool
    assert 0.01 < result.masks.mean() < 0.99  # random weights still cut the picture: a real comparison


def test_mask_input_refines_as_sam_predictor(official, sam_engine):
    predictor_class, sam = official
    image = picture(90, 130, seed=5)
    predictor = predictor_class(sam)
    predictor.set_image(image)
    first = sam_engine.segment(image, points=[[50, 50]])
    with torch.no_grad():
        logits, _, _ = predictor.predict(np.array([[50.0, 50.0], [90.0, 20.0]]), np.array([1, 0]),
                                         mask_input=first.low_res_logits[:1], multimask_output=False, return_logits=True)
    second = sam_engine.segment(image, points=[[50, 50], [90, 20]], labels=[1, 0], mask_input=first.low_res_logits[0])
    assert relative(second.logits, logits) <= 1e-3
    assert relative(second.logits, sam_engine.segment(image, points=[[50, 50], [90, 20]], labels=[1, 0]).logits) > 1e-2


def test_mobile_sam_engine_equals_torch(tmp_path):
    """MobileSAM (TinyViT encoder): the engine against this project's torch modules on SamPredictor's path."""
    model = tiny_sam(TINY_TINYVIT, seed=8)
    engine = Engine.load(export_sam(model, tmp_path / "mobile", log=lambda *_: None))
    image = picture(77, 120, seed=2)
    result = engine.segment(image, points=[[60, 30]], box=[20, 10, 100, 70], multimask_output=True)
    frame = engine._encoder_input(image)
    h, w = preprocess_size(77, 120, 128)
    scale = torch.tensor([w / 120, h / 77])
    with torch.no_grad():
        embeddings = model.image_encoder(torch.from_numpy(frame))
        logits, scores, _ = sam_predict(model, embeddings, (77, 120), torch.tensor([[[60.0, 30.0]]]) * scale,
                                        torch.tensor([[1.0]]), (torch.tensor([[20.0, 10, 100, 70]]).reshape(2, 2)
                                                                 * scale).reshape(1, 4), multimask_output=True)
    assert relative(result.logits, logits[0]) <= 1e-3 and relative(result.scores, scores[0]) <= 1e-3


class CountingSession:
    def __init__(self, session):
        self.session, self.runs = session, 0

    def run(self, feeds):
        self.runs += 1
        return self.session.run(feeds)


def test_embedding_is_computed_once_per_picture(sam_engine):
    counting = sam_engine.sessions["sam_encoder"] = CountingSession(sam_engine.sessions["sam_encoder"])
    try:
        image, other = picture(60, 80, seed=31), picture(60, 80, seed=32)
        first = sam_engine.segment(image, points=[[10, 10]])
        again = sam_engine.segment(image.copy(), points=[[10, 10]], labels=[1])  # same pixels, another array
        sam_engine.segment(image, box=[5, 5, 50, 40])
        assert counting.runs == 1 and (first.logits == again.logits).all()
        assert sam_engine.embedding_cache.hits >= 2
        sam_engine.segment(other, points=[[10, 10]])
        assert counting.runs == 2
        sam_engine.embedding_cache.max_bytes = 1  # bounded: only the latest stays
        sam_engine.segment(picture(60, 80, seed=33), points=[[10, 10]])
        assert len(sam_engine.embedding_cache) == 1
        sam_engine.segment(image, points=[[10, 10]])
        assert counting.runs == 4
    finally:
        sam_engine.sessions["sam_encoder"] = counting.session
        sam_engine.embedding_cache.max_bytes = 64 << 20


@pytest.mark.parametrize("given, field, words", [
    (dict(points=[[131, 5]]), "points", "outside the 130x90 picture"),
    (dict(points=[[-1, 5]]), "points", "outside"),
    (dict(points=[[1, 2, 3]]), "points", "[x, y] pairs"),
    (dict(points=[[1, 2]], labels=[2]), "labels", "not 0 or 1"),
    (dict(points=[[1, 2]], labels=[1, 0]), "labels", "one label per point"),
    (dict(labels=[1]), "labels", "without points"),
    (dict(box=[50, 10, 20, 30]), "box", "x0 must be below x1"),
    (dict(box=[1, 2, 3]), "box", "four numbers"),
    (dict(box=[0, 0, 200, 50]), "box", "outside"),
    (dict(points=[[float("nan"), 1]]), "points", "NaN"),
    (dict(), "points", "needs a prompt"),
    (dict(points=[[1, 1]], text="sky"), "text", "for CLIPSeg engines"),
    (dict(points=[[1, 1]], mask_input=np.zeros((4, 4))), "mask_input", "32x32"),
    (dict(points=[[1, 1]], multimask_output="yes"), "multimask_output", "True or False"),
])
def test_bad_prompts_name_the_field(sam_engine, given, field, words):
    with pytest.raises(InvalidArgument) as raised:
        sam_engine.segment(picture(90, 130), **given)
    assert raised.value.field == field and words in str(raised.value), str(raised.value)


def test_too_large_picture_and_unknown_arguments(sam_engine):
    with pytest.raises(InvalidArgument, match="more than the 1000 allowed"):
        sam_engine.segment(picture(90, 130), points=[[1, 1]], max_pixels=1000)
    with pytest.raises(TypeError, match="unexpected keyword argument 'prompt'"):
        sam_engine.segment(picture(90, 130), points=[[1, 1]], prompt="a cat")
    with pytest.raises(MissingMethod, match="mask_image"):
        sam_engine.inpaint(picture(90, 130), picture(90, 130))


def test_a_segment_mask_feeds_an_eraser(sam_engine, erasers):
    image = picture(64, 96, seed=4)
    segmentation = sam_engine.segment(image, points=[[40, 30]])
    eraser = Engine.load(erasers["lama"])
    grown = eraser.inpaint(image, segmentation.mask_image(), mask_grow=3).images[0]
    changed = (np.asarray(grown) != image).any(axis=2)
    from inpaintrt.runtime import masking

    hole = np.asarray(masking.edit(segmentation.mask_image(), False, 3, 0)) >= 128
    assert changed.any() and not changed[~hole].any()
    assert hole.sum() > segmentation.masks[0].sum()  # mask_grow applied to the segment's mask


def test_export_reads_checkpoints_and_names_bad_ones(tmp_path):
    model = tiny_sam(TINY_VIT, seed=9)
    # a state dict saved as the official files are; the tiny frame is not an official size: the layout is refused
    torch.save(model.state_dict(), tmp_path / "sam_vit_b_01ec64.pth")
    with pytest.raises(SegmenterSourceError, match="unknown SAM ViT layout"):
        export_segmenter(tmp_path / "sam_vit_b_01ec64.pth", tmp_path / "out", log=lambda *_: None)
    assert not (tmp_path / "out").exists()
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "sam_other.pth")
    with pytest.raises(SegmenterSourceError, match="not a SAM image encoder"):
        export_segmenter(tmp_path / "sam_other.pth", tmp_path / "out", log=lambda *_: None)
    with pytest.raises(SegmenterSourceError, match="not a file"):
        export_segmenter(tmp_path / "missing.pth", tmp_path / "out", kind="sam", log=lambda *_: None)
    with pytest.raises(SegmenterSourceError, match="pass --kind sam"):  # the name says nothing: no guess
        export_segmenter(tmp_path / "weights.safetensors", tmp_path / "out", log=lambda *_: None)
    root = export_sam(model, tmp_path / "ok", log=lambda *_: None)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["model"]["kind"] == "segmenter" and manifest["model"]["family"] == "sam"
    assert set(manifest["components"]) == {"sam_encoder", "sam_decoder"}
    assert all(c["parity"]["max_rel_error"] <= 1e-4 for c in manifest["components"].values())
    assert not list(tmp_path.glob(".ok.partial-*"))


def test_segment_runs_without_torch(sam_engine):
    from no_torch import run_without_torch

    run_without_torch("""
import numpy as np
from inpaintrt import Engine
engine = Engine.load(sys.argv[1])
result = engine.segment(np.zeros((40, 56, 3), np.uint8), points=[[20, 10]], box=[2, 2, 50, 30], multimask_output=True)
assert result.masks.shape == (3, 40, 56)
""", str(sam_engine.root))


def test_fp16_export_keeps_the_decoder_fp32(tmp_path):
    """--fp16: the encoder's fp16 and CUDA-fused graphs; the decoder's stay fp32 (orig_im_size passes 2048)."""
    from sam_engines import build_sam_engine

    manifest = json.loads((build_sam_engine(tmp_path / "sam16", fp16=True) / "manifest.json").read_text())
    encoder, decoder = manifest["components"]["sam_encoder"], manifest["components"]["sam_decoder"]
    assert encoder["fp16"]["precision"] == encoder["cuda"]["precision"] == "fp16"
    assert encoder["fp16"]["max_rel_error"] <= 1e-2
    assert decoder["fp16"]["precision"] == decoder["cuda"]["precision"] == "fp32"


def test_openvino_runs_both_graphs_as_onnx_runtime(sam_engine):
    """OpenVINO names a decoder input also by the reshape that reads it: the engine must still find it."""
    pytest.importorskip("openvino")
    engine = Engine.load(sam_engine.root, backend="openvino")
    assert engine.backend == "openvino" and engine.precision == "fp32"
    image = np.random.default_rng(8).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    for prompt in ({"points": [[30, 40], [90, 20]], "labels": [1, 0], "multimask_output": True},
                   {"box": [10, 12, 100, 70]}):
        want, got = sam_engine.segment(image, **prompt), engine.segment(image, **prompt)
        for name in ("logits", "low_res_logits", "scores"):
            diff = float(np.abs(getattr(got, name) - getattr(want, name)).max() / np.abs(getattr(want, name)).max())
            record(f"sam openvino fp32 vs ort-cpu {name} (relative)", diff)
            assert diff <= 1e-5, (prompt, name, diff)
        flipped = got.masks != want.masks  # only where a logit is within rounding of the 0 threshold
        assert not flipped.any() or np.abs(want.logits[flipped]).max() < 1e-4


def test_openvino_bf16_stays_near_fp32(sam_engine):
    pytest.importorskip("openvino")
    from inpaintrt.engine.openvino_backend import cpu_has_bf16, load_openvino

    if not cpu_has_bf16(load_openvino().Core()):
        pytest.skip("this CPU has no native bf16 (AVX-512 BF16 or AMX)")
    engine = Engine.load(sam_engine.root, backend="openvino", precision="bf16")
    image = np.random.default_rng(9).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    want, got = (e.segment(image, points=[[30, 40]], multimask_output=True) for e in (sam_engine, engine))
    diff = float(np.abs(got.logits - want.logits).max() / np.abs(want.logits).max())
    record("sam openvino bf16 vs ort-cpu fp32 logits (relative)", diff)
    assert 0 < diff <= 0.1, "bf16 rounds (not fp32 under another name), within 10 % of the largest logit"
    assert (got.masks != want.masks).mean() < 0.03
