"""Outpainting: grown canvas, original pixels kept outside the overlap band, passes."""
import numpy as np
import pytest
from PIL import Image

from pictures import sample_image
from inpaintrt import Engine
from inpaintrt.cli import inpaint_main
from inpaintrt.engine import outpaint as outpainting

ARGS = dict(prompt="a wall", num_inference_steps=2, progress=False)


@pytest.fixture(scope="module")
def loaded(engines):
    return {ch: Engine.load(path) for ch, path in engines.items()}


def assert_original_kept(out: Image.Image, image: Image.Image, sides: dict, overlap: int):
    """Original pixels farther than `overlap` from the new area are byte-identical; the band changed."""
    w, h = image.size
    t, l = sides.get("top", 0), sides.get("left", 0)
    assert out.size == (w + l + sides.get("right", 0), h + t + sides.get("bottom", 0))
    got = np.asarray(out)[t:t + h, l:l + w]
    y0, x0 = (overlap if t else 0), (overlap if l else 0)
    y1, x1 = h - (overlap if sides.get("bottom") else 0), w - (overlap if sides.get("right") else 0)
    assert np.array_equal(got[y0:y1, x0:x1], np.asarray(image)[y0:y1, x0:x1])
    if overlap:
        assert not np.array_equal(got, np.asarray(image))  # the band was repainted, feathered


SIDES = [dict(left=32), dict(right=24), dict(top=16), dict(bottom=40), dict(left=16, right=16),
         dict(top=8, bottom=24), dict(left=8, top=16), dict(right=24, bottom=8), dict(left=8, right=8, top=8, bottom=8)]


@pytest.mark.parametrize("sides", SIDES, ids=lambda s: "+".join(f"{k}{v}" for k, v in s.items()))
@pytest.mark.parametrize("channels", [9, 4])
def test_every_direction(loaded, channels, sides):
    image = sample_image(96, 64)
    out = loaded[channels].outpaint(image, **sides, overlap=12, generator=1, **ARGS).images[0]
    assert_original_kept(out, image, sides, 12)


@pytest.mark.parametrize("fill", ["edge", "mirror", "noise"])
def test_prefills(loaded, fill):
    image = sample_image(96, 64)
    canvas = outpainting.prefill(np.asarray(image), dict(left=20, right=0, top=10, bottom=30), fill,
                                 np.random.default_rng(0))
    assert canvas.shape == (104, 116, 3)
    assert np.array_equal(canvas[10:74, 20:116], np.asarray(image))
    if fill == "mirror":
        assert np.array_equal(canvas[10:74, 19], np.asarray(image)[:, 0])  # the first column, reflected
    if fill == "edge":  # a smooth continuation: next to the picture, close to its border colour
        assert np.abs(canvas[10:74, 19].astype(int) - np.asarray(image)[:, 0]).mean() < 24
    out = loaded[4].outpaint(image, left=20, top=10, bottom=30, fill=fill, strength=0.7, generator=2,
                             **ARGS).images[0]
    assert_original_kept(out, image, dict(left=20, top=10, bottom=30), 32)


def test_any_size_and_no_overlap(loaded):
    """Extensions need not be multiples of 8; overlap 0 keeps every original pixel."""
    image = sample_image(90, 61)
    out = loaded[9].outpaint(image, right=13, bottom=5, overlap=0, generator=3, **ARGS).images[0]
    assert out.size == (103, 66)
    assert np.array_equal(np.asarray(out)[:61, :90], np.asarray(image))
    out = loaded[9].outpaint(image, right=13, overlap=7, generator=3, output_type="np", **ARGS).images
    assert out.shape == (1, 61, 103, 3) and out.dtype == np.float32
    for picture in (np.asarray(image.convert("RGBA"), np.float32) / 255, np.asarray(image.convert("L"))):
        out = loaded[9].outpaint(picture, right=13, overlap=0, generator=3, output_type="np", **ARGS).images
        assert out.shape == (1, 61, 103, 3)  # float RGBA and grey pictures


def spy(engine, monkeypatch):
    """Record (image, mask, result) of each pass."""
    calls, inpaint = [], engine.inpaint

    def recording(image, mask_image, **kwargs):
        result = inpaint(image, mask_image, **kwargs)
        calls.append((np.asarray(image), np.asarray(mask_image), np.asarray(result.images[0]), kwargs))
        return result

    monkeypatch.setattr(engine, "inpaint", recording)
    return calls


def test_large_extensions_run_in_passes_on_what_exists(loaded, monkeypatch):
    engine, image = loaded[9], sample_image(64, 64)
    calls = spy(engine, monkeypatch)
    sides = dict(left=72, right=96, bottom=40)
    out = engine.outpaint(image, **sides, height=64, width=64, overlap=8, generator=4, **ARGS).images[0]
    assert_original_kept(out, image, sides, 8)
    # replay: each pass saw the canvas as the earlier passes left it, and its result is what the output holds
    canvas = outpainting.prefill(np.asarray(image), dict(sides, top=0), "edge", None)
    known = np.zeros(canvas.shape[:2], bool)
    known[:64, 72:136] = True
    windows = [w for w in outpainting.plan(canvas.shape[:2], (0, 72, 64, 136), (64, 64))
               if not known[w[0]:w[0] + w[2], w[1]:w[1] + w[3]].all()]
    assert len(calls) > 4
    for (y, x, wh, ww), (seen, mask, result, kwargs) in zip(windows, calls):
        assert (wh, ww) == (64, 64) and kwargs["height"] == kwargs["width"] == 64 and kwargs["keep_unmasked"]
        assert np.array_equal(seen, canvas[y:y + wh, x:x + ww])
        existing = known[y:y + wh, x:x + ww]
        assert existing.mean() >= 0.25  # conditioned on pixels that already exist
        assert np.all(mask[~existing] == 255) and np.all(mask[existing] < 255)  # new white, old feathered
        canvas[y:y + wh, x:x + ww] = result
        known[y:y + wh, x:x + ww] = True
    assert len(windows) == len(calls) and known.all()
    assert np.array_equal(canvas, np.asarray(out))


def test_plan_for_512_to_1280():
    windows = outpainting.plan((512, 1280), (0, 0, 512, 512), (512, 512))
    assert windows == [(0, 0, 512, 512), (0, 256, 512, 512), (0, 512, 512, 512), (0, 768, 512, 512)]  # 3 passes


def test_feather():
    unknown = np.zeros((5, 8), bool)
    unknown[:, 6:] = True
    mask = outpainting.feather(unknown, 3)
    np.testing.assert_allclose(mask[0], [0, 0, 0, 0.25, 0.5, 0.75, 1, 1])


def test_outpaint_options_pass_through(loaded):
    image = sample_image(96, 64)
    out = loaded[9].outpaint(image, top=24, mask_mode="soft", masked_content="fill", strength=0.8, generator=5,
                             **ARGS).images[0]
    assert_original_kept(out, image, dict(top=24), 32)


@pytest.mark.parametrize("name", ["inpaint", "base"])
def test_sdxl_outpaint(sdxl_engines, name):
    image = sample_image(96, 64)
    out = Engine.load(sdxl_engines[name]).outpaint(image, left=24, bottom=16, overlap=8, generator=6, **ARGS).images[0]
    assert_original_kept(out, image, dict(left=24, bottom=16), 8)


@pytest.mark.parametrize("kwargs, match", [
    (dict(left=-8), "left=-8 must be a whole number of pixels >= 0"),
    (dict(right=12.5), "right=12.5 must be a whole number"),
    (dict(), "all 0: give the number of pixels"),
    (dict(top=8, overlap=-1), "overlap=-1 must be a whole number"),
    (dict(top=8, fill="blur"), "fill='blur' is unknown; choose one of edge, mirror, noise"),
    (dict(top=8, mask_image=np.zeros((64, 96))), "mask_image is not an outpaint argument"),
    (dict(top=8, num_images_per_prompt=2), "one picture per call"),
    (dict(top=8, output_type="latent"), "use 'pil' or 'np'"),
    (dict(top=8, width=100), "width=100 must be a positive multiple of 8, e.g. 96"),
    (dict(top=8, prompt=["a", "b"]), "would make 2 pictures"),
    (dict(bottom=20000, max_pixels=10 ** 6), "more than max_pixels"),
])
def test_bad_outpaint_arguments(loaded, kwargs, match):
    args = dict(ARGS, **kwargs)
    with pytest.raises(ValueError, match=match):
        loaded[9].outpaint(sample_image(96, 64), **args)


def test_cli_extend(engines, tmp_path):
    image = sample_image(96, 64)
    image.save(tmp_path / "in.png")
    base = ["--engine", str(engines[9]), "--image", str(tmp_path / "in.png"), "--steps", "2", "--seed", "7",
            "--prompt", "a wall"]
    assert inpaint_main(base + ["--extend", "left=16,bottom=8", "--overlap", "8", "--fill", "mirror",
                                "--output", str(tmp_path / "out.png")]) == 0
    api = Engine.load(engines[9]).outpaint(image, left=16, bottom=8, overlap=8, fill="mirror", generator=7,
                                           **ARGS).images[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), np.asarray(api))
    for bad in (["--extend", "up=8"], ["--extend", "left=8", "--mask", str(tmp_path / "in.png")], [],
                ["--extend", "left=8", "--blur", "4"]):
        assert inpaint_main(base + bad + ["--output", str(tmp_path / "x.png")]) == 2
