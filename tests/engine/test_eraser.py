"""The eraser engine (LaMa, MI-GAN) against the torch modules it was exported from: the same fill for the same
picture, every unmasked pixel the input's, the hd strategies' windows, and the refusals."""
import warnings

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from eraser_models import MIGAN_RES, tiny_lama, tiny_migan  # noqa: E402
from parity import record  # noqa: E402

from inpaintrt import Engine  # noqa: E402
from inpaintrt.engine.eraser import NOTHING_TO_ERASE, EraserEngine  # noqa: E402
from inpaintrt.runtime.errors import InvalidArgument  # noqa: E402
from inpaintrt.runtime.regions import crop_box, mask_boxes, square_crop  # noqa: E402

H, W = 261, 357  # neither square nor multiples of 8


def picture(h=H, w=W, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def two_holes(h=H, w=W):
    mask = np.zeros((h, w), np.uint8)
    mask[50:120, 60:200] = 255
    mask[h - 60:h - 20, w - 57:w - 7] = 255
    return Image.fromarray(mask)


@pytest.fixture(scope="module")
def lama_engine(erasers):
    return Engine.load(erasers["lama"])


@pytest.fixture(scope="module")
def migan_engine(erasers):
    return Engine.load(erasers["migan"])


def torch_lama(pixels, hole):
    """LaMa's own prediction: pad bottom/right to a multiple of 8 (numpy symmetric), run, crop, composite."""
    h, w = hole.shape
    pad = ((0, -h % 8), (0, -w % 8))
    image = torch.from_numpy(np.pad(pixels, pad + ((0, 0),), mode="symmetric").transpose(2, 0, 1)[None].copy())
    mask = torch.from_numpy(np.pad(hole, pad, mode="symmetric")[None, None].astype(np.float32))
    with torch.no_grad():
        out = tiny_lama()(torch.cat([image * (1 - mask), mask], dim=1))[0].numpy().transpose(1, 2, 0)[:h, :w]
    return np.where(hole[..., None], out, pixels)


def test_engine_kind_and_facts(lama_engine, migan_engine):
    assert isinstance(lama_engine, EraserEngine) and isinstance(migan_engine, EraserEngine)
    assert lama_engine.facts()["kind"] == "eraser" and lama_engine.facts()["size_multiple"] == 8
    assert migan_engine.facts()["resolution"] == MIGAN_RES
    assert lama_engine.precision == "fp32" and lama_engine.backend == "ort-cpu"


def test_lama_matches_torch_at_an_odd_size(lama_engine):
    image, mask = picture(), two_holes()
    pixels, hole = np.asarray(image, np.float32) / 255, np.asarray(mask) >= 128
    got = lama_engine.inpaint(image, mask, hd_strategy="original", output_type="np").images[0]
    expected = torch_lama(pixels, hole)
    diff = float(np.abs(got - expected).max())
    record("eraser lama vs torch, 261x357 (max abs on [0,1])", diff)
    assert got.shape == (H, W, 3) and diff <= 1e-3
    assert np.abs(got - pixels)[hole].max() > 0.05  # the holes were filled with something else


def test_pil_output_keeps_every_unmasked_byte(lama_engine):
    image, mask = picture(), two_holes()
    hole = np.asarray(mask) >= 128
    got = np.asarray(lama_engine.inpaint(image, mask, hd_strategy="original").images[0])
    assert np.array_equal(got[~hole], np.asarray(image)[~hole])
    expected = np.round(torch_lama(np.asarray(image, np.float32) / 255, hole) * 255)
    assert np.abs(got[hole].astype(int) - expected[hole]).max() <= 1


def test_migan_crops_squares_around_the_hole_and_resizes(migan_engine):
    image, mask = picture(96, 150), Image.new("L", (150, 96), 0)
    mask.paste(255, (60, 30, 80, 50))
    hole = np.asarray(mask) >= 128
    x0, y0, x1, y1 = square_crop((60, 30, 80, 50), 128, MIGAN_RES, 150, 96)
    assert (x0, y0, x1, y1) == (0, 0, 150, 96)  # side 19 + 256 > the picture: the whole of it
    crop = np.stack([np.asarray(Image.fromarray(np.asarray(image, np.float32)[y0:y1, x0:x1, c] / 255, "F").resize(
        (MIGAN_RES, MIGAN_RES), Image.BILINEAR)) for c in range(3)], -1)  # resized in float, as the engine does
    crop_hole = mask.crop((x0, y0, x1, y1)).resize((MIGAN_RES, MIGAN_RES), Image.NEAREST)
    known = torch.from_numpy((np.asarray(crop_hole) < 128)[None, None].astype(np.float32))
    x = torch.from_numpy(crop.transpose(2, 0, 1)[None].copy()) * 2 - 1
    with torch.no_grad():
        out = (tiny_migan()(torch.cat([known - 0.5, x * known], dim=1)) * 0.5 + 0.5).clamp(0, 1)[0].numpy()
    planes = [Image.fromarray(out[c], "F").resize((150, 96), Image.BILINEAR) for c in range(3)]
    expected = np.where(hole[..., None], np.stack([np.asarray(p) for p in planes], -1),
                        np.asarray(image, np.float32) / 255)
    got = migan_engine.inpaint(image, mask, hd_strategy="original", output_type="np").images[0]
    diff = float(np.abs(got - expected).max())
    record("eraser migan vs torch (max abs on [0,1])", diff)
    assert diff <= 1e-3
    assert np.array_equal(np.asarray(migan_engine.inpaint(image, mask).images[0])[~hole], np.asarray(image)[~hole])


def test_square_crop_is_migans():
    """MI-GAN's pipeline arithmetic on the hole's last indices: centred, at least the resolution, shifted in."""
    # centre (109, 119), side max(19, 39) + 32 = 71: +-35, then the 1 pixel the halving lost added on both sides
    assert square_crop((100, 100, 120, 140), 16, 64, 1000, 1000) == (73, 83, 145, 155)
    assert square_crop((0, 0, 10, 10), 8, 64, 1000, 500) == (0, 0, 64, 64)  # the edge cut is added on the far side
    assert square_crop((990, 490, 1000, 500), 8, 64, 1000, 500) == (936, 436, 1000, 500)


def test_crop_box_is_iopaints():
    assert crop_box((100, 100, 200, 150), 10, 1000, 1000) == (90, 90, 210, 160)
    assert crop_box((0, 0, 20, 20), 10, 1000, 1000) == (0, 0, 40, 40)  # what the edge cut goes to the far side
    assert crop_box((0, 0, 20, 20), 500, 300, 200) == (0, 0, 300, 200)


def test_mask_boxes_match_scipy_labels():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(3)
    for _ in range(100):
        hole = rng.random(tuple(rng.integers(1, 40, 2))) < rng.random() * 0.5
        labels, _ = ndimage.label(hole, structure=np.ones((3, 3)))
        expected = sorted((s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(labels))
        assert sorted(mask_boxes(hole)) == expected


def windows_seen(engine, monkeypatch):
    seen, run = [], engine.sessions["eraser"].run

    def recording(feeds):
        seen.append(feeds["image"].shape[2:])
        return run(feeds)

    monkeypatch.setattr(engine.sessions["eraser"], "run", recording)
    return seen


def test_crop_runs_each_region_and_equals_erasing_each_crop(lama_engine, monkeypatch):
    image, mask = picture(300, 900, seed=4), Image.new("L", (900, 300), 0)
    for box in ((40, 40, 100, 90), (700, 200, 760, 260)):
        mask.paste(255, box)
    seen = windows_seen(lama_engine, monkeypatch)
    got = lama_engine.inpaint(image, mask, hd_strategy="crop", hd_strategy_crop_margin=32,
                              hd_strategy_crop_trigger_size=800, output_type="np", progress=False).images[0]
    boxes = [crop_box(b, 32, 900, 300) for b in mask_boxes(np.asarray(mask) >= 128)]
    assert seen == [(-(y1 - y0) // 8 * -8, -(x1 - x0) // 8 * -8) for x0, y0, x1, y1 in boxes]
    expected = np.asarray(image, np.float32) / 255
    for x0, y0, x1, y1 in boxes:
        part = lama_engine.inpaint(image.crop((x0, y0, x1, y1)), mask.crop((x0, y0, x1, y1)), hd_strategy="original",
                                   output_type="np").images[0]
        expected[y0:y1, x0:x1] = part
    assert np.abs(got - expected).max() <= 1e-6
    seen.clear()  # under the trigger size: the whole picture in one window
    lama_engine.inpaint(image, mask, hd_strategy="crop", hd_strategy_crop_trigger_size=900, progress=False)
    assert seen == [(304, 904)]


def test_resize_runs_at_the_limit_and_restores_the_rest(lama_engine, monkeypatch):
    image, mask = picture(300, 900, seed=5), Image.new("L", (900, 300), 0)
    mask.paste(255, (400, 100, 500, 200))
    seen = windows_seen(lama_engine, monkeypatch)
    got = np.asarray(lama_engine.inpaint(image, mask, hd_strategy="resize", hd_strategy_resize_limit=450).images[0])
    assert seen == [(152, 456)]  # 450 x 150, padded to multiples of 8
    hole = np.asarray(mask) >= 128
    assert got.shape == (300, 900, 3) and np.array_equal(got[~hole], np.asarray(image)[~hole])


def test_mask_edits_apply(lama_engine):
    image, mask = picture(64, 80), Image.new("L", (80, 64), 0)
    mask.paste(255, (20, 20, 40, 40))
    grown = np.asarray(lama_engine.inpaint(image, mask, mask_grow=4).images[0])
    changed = np.any(grown != np.asarray(image), axis=2)
    assert changed[16:44, 16:44].mean() > 0.9 and not changed[:14].any()
    inverted = np.asarray(lama_engine.inpaint(image, mask, mask_invert=True).images[0])
    assert np.array_equal(inverted[20:40, 20:40], np.asarray(image)[20:40, 20:40])


def test_an_empty_mask_gives_the_picture_back_with_a_notice(lama_engine):
    image = picture(40, 48)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = lama_engine.inpaint(image, Image.new("L", (48, 40), 0)).images[0]
    assert np.array_equal(np.asarray(out), np.asarray(image))
    assert any(NOTHING_TO_ERASE in str(w.message) for w in caught)


@pytest.mark.parametrize("kwargs,field,message", [
    (dict(prompt="a cat"), "prompt", "prompt is an argument of diffusion engines; this engine is an eraser \\(LaMa\\)"),
    (dict(num_inference_steps=20, guidance_scale=3.0), "guidance_scale", "guidance_scale, num_inference_steps are"),
    (dict(hd_strategy="tile"), "hd_strategy", "hd_strategy='tile' is unknown; choose one of crop, resize, original"),
    (dict(hd_strategy_crop_margin=-1), "hd_strategy_crop_margin", "must be a whole number of pixels from 0 to 4096"),
    (dict(hd_strategy_resize_limit=4), "hd_strategy_resize_limit", ">= 8"),
    (dict(output_type="latent"), "output_type", "for diffusion engines"),
    (dict(mask_grow=2, mask_shrink=2), "mask_shrink", "pass one of them"),
])
def test_bad_arguments_name_the_field(lama_engine, kwargs, field, message):
    with pytest.raises(InvalidArgument, match=message) as caught:
        lama_engine.inpaint(picture(40, 48), Image.new("L", (48, 40), 255), **kwargs)
    assert caught.value.field == field


def test_diffusion_arguments_at_their_defaults_and_unknown_ones(lama_engine):
    image, mask = picture(40, 48), Image.new("L", (48, 40), 255)
    lama_engine.inpaint(image, mask, prompt=None, strength=None, num_inference_steps=50, scheduler=None)
    with pytest.raises(TypeError, match="unexpected keyword argument 'steps'"):
        lama_engine.inpaint(image, mask, steps=3)
    with pytest.raises(InvalidArgument, match="same size"):
        lama_engine.inpaint(image, Image.new("L", (40, 40), 255))
    with pytest.raises(AttributeError, match="outpaint is not available for lama engines"):
        lama_engine.outpaint(image, left=8)


def test_diffusion_engines_refuse_eraser_arguments_by_name(engine):
    with pytest.raises(InvalidArgument, match="hd_strategy is for LaMa, MI-GAN engines; this engine is sd1") as caught:
        engine.inpaint(picture(64, 64), Image.new("L", (64, 64), 255), hd_strategy="resize")
    assert caught.value.field == "hd_strategy"


def test_eraser_signature_is_the_table():
    """EraserEngine.inpaint takes the table's rows marked for erasers and the eraser rows, at their defaults."""
    import inspect

    from inpaintrt.engine.argument_specs import ERASER_ARGUMENTS, SPECS

    signature = {name: p.default for name, p in inspect.signature(EraserEngine.inpaint).parameters.items()
                 if name not in ("self", "image", "mask_image") and p.kind is not p.VAR_KEYWORD}
    assert set(signature) == set(ERASER_ARGUMENTS)
    assert all(signature[name] == SPECS[name].default for name in signature), signature


NO_TORCH = """
import sys
for name in ("torch", "diffusers", "transformers"):
    sys.modules[name] = None  # any import of them now raises ImportError
import numpy as np
from PIL import Image
from inpaintrt import Engine
engine = Engine.load(sys.argv[1])
mask = Image.new("L", (40, 24), 0)
mask.paste(255, (8, 8, 20, 16))
out = engine.inpaint(Image.new("RGB", (40, 24), (120, 80, 40)), mask, output_type="np")
assert out.images.shape == (1, 24, 40, 3) and np.isfinite(out.images).all()
print("heavy modules:", sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers")
                               and sys.modules[m] is not None))
"""


def test_erasers_run_without_torch(erasers):
    import subprocess
    import sys

    for kind in ("lama", "migan"):
        result = subprocess.run([sys.executable, "-c", NO_TORCH, str(erasers[kind])], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "heavy modules: []" in result.stdout


def test_openvino_reads_the_eraser_graphs(erasers):
    pytest.importorskip("openvino")
    image, mask = picture(72, 96), Image.new("L", (96, 72), 0)
    mask.paste(255, (20, 20, 60, 50))
    for kind in ("lama", "migan"):
        reference = Engine.load(erasers[kind]).inpaint(image, mask, output_type="np").images[0]
        engine = Engine.load(erasers[kind], backend="openvino")
        assert engine.backend == "openvino" and engine.precision == "fp32"
        diff = float(np.abs(engine.inpaint(image, mask, output_type="np").images[0] - reference).max())
        record(f"eraser {kind} openvino fp32 vs ort-cpu (max abs)", diff)
        assert diff <= 1e-4
