"""color_match: before the paste-back, the repainted colours are matched to the original's on a band
around the mask, so a fill of the wrong hue leaves no colour step at the mask's border."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from inpaintrt.runtime.masking import COLOR_BAND, overlay


def smooth_picture(width=192, height=128) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    rgb = np.stack([0.5 + 0.3 * np.sin(5 * x + 1), 0.5 + 0.3 * np.cos(4 * y), 0.4 + 0.2 * x], -1)
    return Image.fromarray((rgb * 255).round().astype(np.uint8))


def box_mask(width=192, height=128, blur=0) -> Image.Image:
    mask = np.zeros((height, width), np.uint8)
    mask[40:90, 60:140] = 255
    picture = Image.fromarray(mask)
    return picture.filter(ImageFilter.GaussianBlur(blur)) if blur else picture


def border_step(pasted: Image.Image, original: Image.Image, mask: Image.Image) -> float:
    """Mean colour difference (0-255, over the channels) between the pasted picture and the original on the
    3 pixels just inside the mask's border: on a smooth picture the original there is what continues the
    surroundings, so this is the step an eye sees across the border."""
    inside = np.asarray(mask) >= 128
    ring = inside & ~np.asarray(Image.fromarray(inside.astype(np.uint8) * 255).filter(ImageFilter.MinFilter(7)),
                                bool)
    diff = np.abs(np.asarray(pasted, np.float32) - np.asarray(original, np.float32))
    return float(diff[ring].mean())


@pytest.mark.parametrize("blur", [0, 4])
def test_a_colour_shifted_fill_loses_its_seam(blur):
    original, mask = smooth_picture(), box_mask(blur=blur)
    # what a drifting model gives back: the picture itself, each channel shifted and scaled
    drifted = np.asarray(original, np.float32) * [1.1, 0.9, 1.0] + [25, -20, 15]
    result = Image.fromarray(np.clip(drifted, 0, 255).round().astype(np.uint8))
    before = border_step(overlay(mask, original, result), original, mask)
    after = border_step(overlay(mask, original, result, color_match=True), original, mask)
    print(f"colour step across the mask border (0-255): {before:.1f} before, {after:.1f} after color_match")
    assert before > 15 and after < 2.5, (before, after)
    # outside the mask the bytes stay the input's either way
    outside = np.asarray(mask) == 0
    pasted = np.asarray(overlay(mask, original, result, color_match=True))
    assert np.array_equal(pasted[outside], np.asarray(original)[outside])


def test_nothing_around_the_mask_leaves_the_colours_alone():
    original = smooth_picture(32, 32)
    mask = Image.new("L", (32, 32), 255)  # everything repainted: no band to measure
    result = Image.new("RGB", (32, 32), (200, 10, 10))
    assert np.array_equal(np.asarray(overlay(mask, original, result, color_match=True)), np.asarray(result))
    assert COLOR_BAND > 0


def test_the_engine_matches_colours_only_where_it_pastes(engine):
    from inpaintrt.runtime.errors import InvalidArgument

    picture, mask = smooth_picture(160, 96), box_mask(160, 96)
    common = dict(prompt="a kite", num_inference_steps=3, generator=0, progress=False, keep_unmasked=True)
    plain = np.asarray(engine.inpaint(picture, mask, **common).images[0])
    matched = np.asarray(engine.inpaint(picture, mask, color_match=True, **common).images[0])
    outside = np.asarray(mask) == 0
    assert np.array_equal(matched[outside], np.asarray(picture)[outside])
    assert not np.array_equal(matched, plain), "the random-weight model drifts: color_match changes the fill"
    assert border_step(Image.fromarray(matched), picture, mask) < border_step(Image.fromarray(plain), picture, mask)
    with pytest.raises(InvalidArgument, match="color_match=True .* pastes nothing") as info:
        engine.inpaint(picture, mask, color_match=True, **dict(common, keep_unmasked=False))
    assert info.value.field == "color_match" and "keep_unmasked=True" in info.value.fix
