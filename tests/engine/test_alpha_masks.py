"""Alpha masks: a picture with transparent pixels and no mask_image is repainted where it is transparent
(runtime/images.py load_pair), exactly as the RGB picture with that mask passed explicitly; without alpha,
with an opaque one, or with latents as image, the refusal names mask_image."""
import inspect

import numpy as np
import pytest
from PIL import Image

from pictures import sample_image, sample_mask
from inpaintrt import Engine
from inpaintrt.runtime.errors import InvalidArgument
from inpaintrt.runtime.images import load_pair

W, H = 64, 48
FAST = dict(prompt="a red bench", num_inference_steps=2, height=H, width=W, progress=False)


def with_alpha(width: int = W, height: int = H) -> Image.Image:
    """The sample picture, transparent where sample_mask is white, with one half-transparent column."""
    alpha = 255 - np.asarray(sample_mask(width, height))
    alpha[:, 2] = 128  # a soft edge is repainted too (alpha < 255, as A1111)
    return Image.fromarray(np.dstack([np.asarray(sample_image(width, height)), alpha]).astype(np.uint8), "RGBA")


def expected_mask(rgba: Image.Image) -> Image.Image:
    return Image.fromarray(np.where(np.asarray(rgba)[..., 3] < 255, 255, 0).astype(np.uint8), "L")


@pytest.fixture(scope="module")
def four_channel(engines):
    return Engine.load(engines[4])


@pytest.mark.parametrize("which", ["9-channel", "4-channel"])
@pytest.mark.parametrize("extra", [{}, {"keep_unmasked": True, "strength": 0.6}])
def test_rgba_without_mask_is_rgb_with_its_derived_mask(engine, four_channel, which, extra):
    chosen = engine if which == "9-channel" else four_channel
    rgba = with_alpha()
    alone = chosen.inpaint(rgba, generator=3, output_type="np", **FAST, **extra).images
    explicit = chosen.inpaint(rgba.convert("RGB"), expected_mask(rgba), generator=3, output_type="np", **FAST,
                              **extra).images
    assert np.array_equal(alone, explicit)


def test_arrays_with_four_channels_carry_alpha(engine):
    rgba = with_alpha()
    reference = engine.inpaint(rgba, generator=1, output_type="np", **FAST).images
    as_uint8 = engine.inpaint(np.asarray(rgba), generator=1, output_type="np", **FAST).images
    assert np.array_equal(as_uint8, reference)
    picture, mask = load_pair(np.asarray(rgba, np.float32) / 255)
    assert picture.shape == (H, W, 3) and np.array_equal(np.asarray(mask), np.asarray(expected_mask(rgba)))


def test_modes_with_alpha_give_the_same_mask():
    rgba = with_alpha()
    wanted = np.asarray(expected_mask(rgba))
    palette = rgba.convert("RGB").quantize(16)
    palette.info["transparency"] = bytes([0] + [255] * 255)  # palette index 0 is transparent
    index_zero = np.asarray(palette) == 0
    for picture, mask_wanted in [(rgba, wanted), (rgba.convert("LA"), wanted), (rgba.convert("PA"), wanted),
                                 (palette, np.where(index_zero, 255, 0))]:
        rgb, mask = load_pair(picture)
        assert rgb.mode == "RGB" and mask.mode == "L" and rgb.size == mask.size == (W, H), picture.mode
        assert np.array_equal(np.asarray(mask), mask_wanted), picture.mode


def test_a_png_file_with_alpha(engine, tmp_path):
    rgba = with_alpha()
    rgba.save(tmp_path / "cut-out.png")
    from_file = engine.inpaint(str(tmp_path / "cut-out.png"), generator=2, output_type="np", **FAST).images
    assert np.array_equal(from_file, engine.inpaint(rgba, generator=2, output_type="np", **FAST).images)


def test_a_given_mask_wins_over_alpha(engine):
    """With mask_image, the picture's alpha is not read: the call is what it was before alpha masks."""
    rgba = with_alpha()
    other = Image.fromarray(np.flipud(np.asarray(sample_mask(W, H))).copy())
    picture, mask = load_pair(rgba, other)
    assert picture is rgba and np.array_equal(np.asarray(mask), np.asarray(other))


@pytest.mark.parametrize("image, words", [
    (sample_image(W, H), "no alpha channel"),
    (Image.new("RGBA", (W, H), (10, 20, 30, 255)), "opaque everywhere"),
    (np.asarray(sample_image(W, H)), "no alpha channel"),
    (np.asarray(sample_image(W, H), np.float32) / 255, "3 channel(s)"),
])
def test_no_mask_and_no_transparency_is_refused_naming_mask_image(engine, image, words):
    with pytest.raises(InvalidArgument) as info:
        engine.inpaint(image, **FAST)
    assert info.value.field == "mask_image" and words in str(info.value)
    assert "mask_image" in info.value.fix


def test_latents_without_a_mask_are_refused(engine):
    latents = engine.inpaint(sample_image(W, H), sample_mask(W, H), output_type="latent", **FAST).images
    with pytest.raises(InvalidArgument) as info:
        engine.inpaint(latents, **FAST)
    assert info.value.field == "mask_image" and "latents" in str(info.value)


def test_mask_image_is_optional_in_both_signatures():
    from inpaintrt.engine.kandinsky import KandinskyEngine

    for method in (Engine.inpaint, KandinskyEngine.inpaint):
        assert inspect.signature(method).parameters["mask_image"].default is None


def test_kandinsky_reads_alpha_the_same_way(kandinsky):
    engine = Engine.load(kandinsky.engine)
    rgba = with_alpha()
    fast = dict(prompt="a red bench", num_inference_steps=2, prior_num_inference_steps=2, height=H, width=W,
                progress=False, output_type="np")
    alone = engine.inpaint(rgba, generator=4, **fast).images
    explicit = engine.inpaint(rgba.convert("RGB"), expected_mask(rgba), generator=4, **fast).images
    assert np.array_equal(alone, explicit)
    with pytest.raises(InvalidArgument) as info:
        engine.inpaint(sample_image(W, H), **fast)
    assert info.value.field == "mask_image"
