"""Soft-mask (differential) inpainting: a grey-level mask as a per-pixel change map."""
import numpy as np
import pytest
from PIL import Image, ImageFilter

from pictures import sample_image, sample_mask
from inpaintrt import Engine

SIZE = dict(height=64, width=96)
ARGS = dict(prompt="a cat on a wall", num_inference_steps=4, progress=False, **SIZE)


@pytest.fixture(scope="module")
def loaded(engines):
    return {ch: Engine.load(path) for ch, path in engines.items()}


def grey(level: float) -> np.ndarray:
    return np.full((64, 96), level, np.float32)


@pytest.mark.parametrize("channels", [9, 4])
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_all_white_map_equals_ordinary_inpainting(loaded, channels, strength):
    image, white = sample_image(96, 64), np.full((64, 96), 255, np.uint8)
    run = lambda **kw: loaded[channels].inpaint(image, white, generator=1, strength=strength, output_type="np",
                                                **ARGS, **kw).images
    np.testing.assert_array_equal(run(mask_mode="soft"), run())


def test_black_and_white_map_on_the_latent_grid_is_the_blend(loaded):
    """Where every 8x8 block is all white or all black, soft mode is exactly the 4-channel blend."""
    image, mask = sample_image(96, 64), np.zeros((64, 96), np.uint8)
    mask[16:48, 24:72] = 255
    for strength in (1.0, 0.5):
        run = lambda **kw: loaded[4].inpaint(image, mask, generator=2, strength=strength, scheduler="euler",
                                             output_type="latent", **ARGS, **kw).images
        np.testing.assert_array_equal(run(mask_mode="soft"), run())


@pytest.mark.parametrize("channels", [9, 4])
def test_all_black_map_returns_the_input(loaded, channels):
    engine, image, black = loaded[channels], sample_image(96, 64), grey(0)
    # exactly, with keep_unmasked
    kept = engine.inpaint(image, black, generator=1, mask_mode="soft", keep_unmasked=True, **ARGS).images[0]
    assert np.array_equal(np.asarray(kept), np.asarray(image))
    # without it: the image latents, untouched by the model (a UNet that returns NaN changes nothing)
    latents = engine.inpaint(image, black, generator=1, mask_mode="soft", output_type="latent", **ARGS).images
    unet = engine.sessions["unet"]

    class Broken:
        def run(self, feeds):
            return {name: np.full_like(value, np.nan) for name, value in unet.run(feeds).items()}

    engine.sessions["unet"] = Broken()
    try:
        again = engine.inpaint(image, black, generator=1, mask_mode="soft", output_type="latent", scheduler="ddim",
                               **dict(ARGS, num_inference_steps=7)).images
    finally:
        engine.sessions["unet"] = unet
    np.testing.assert_array_equal(again, latents)


@pytest.mark.parametrize("channels", [9, 4])
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_change_grows_with_the_grey_level(loaded, channels, strength):
    engine, image = loaded[channels], sample_image(96, 64)
    args = dict(ARGS, num_inference_steps=8, output_type="latent", scheduler="euler", strength=strength)
    run = lambda level: engine.inpaint(image, grey(level), generator=3, mask_mode="soft", **args).images
    kept = run(0.0)
    change = [float(np.abs(run(level) - kept).mean()) for level in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert change[0] == 0
    assert all(b >= a - 1e-6 for a, b in zip(change, change[1:])), change
    assert change[1] > 0 and change[4] > 1.5 * change[1], change


def test_soft_map_from_blur_factor(loaded):
    """A hard rectangle blurred into a soft map: the change falls off across its edge."""
    image, mask = sample_image(96, 64), np.zeros((64, 96), np.uint8)
    mask[:, 48:] = 255
    args = dict(ARGS, num_inference_steps=8, scheduler="euler", generator=4, mask_mode="soft", blur_factor=12)
    latents = loaded[4].inpaint(image, mask, output_type="latent", **args).images
    kept = loaded[4].inpaint(image, grey(0), output_type="latent", **args).images
    per_column = np.abs(latents - kept).mean(axis=(0, 1, 2))  # 12 latent columns
    assert per_column[0] == 0 and per_column[-1] > 0
    assert 0 < per_column[5] < per_column[-1]  # the blurred edge changes, less than the white side
    assert np.all(np.diff(per_column[:9]) >= -0.05 * per_column[-1]), per_column
    # pasted back through the soft map: where the blur left black, the input's own bytes
    out = loaded[4].inpaint(image, mask, keep_unmasked=True, **args).images[0]
    blurred = np.asarray(Image.fromarray(mask).filter(ImageFilter.GaussianBlur(12)))
    black = blurred == 0
    assert black.any() and np.array_equal(np.asarray(out)[black], np.asarray(image)[black])
    assert not np.array_equal(np.asarray(out)[~black], np.asarray(image)[~black])


def test_soft_mode_with_crop_and_batches(loaded):
    image, mask = sample_image(160, 96), sample_mask(160, 96)
    out = loaded[9].inpaint(image, mask, generator=0, mask_mode="soft", blur_factor=4, padding_mask_crop=8,
                            num_images_per_prompt=2, **ARGS).images
    assert len(out) == 2 and out[0].size == (160, 96)


@pytest.mark.parametrize("name", ["inpaint", "base"])
def test_sdxl_soft_mask(sdxl_engines, name):
    engine, image = Engine.load(sdxl_engines[name]), sample_image(96, 64)
    white = np.full((64, 96), 255, np.uint8)
    run = lambda mask, **kw: engine.inpaint(image, mask, generator=5, **ARGS, **kw).images
    np.testing.assert_array_equal(run(white, mask_mode="soft", output_type="np"), run(white, output_type="np"))
    kept = run(grey(0), mask_mode="soft", keep_unmasked=True)[0]
    assert np.array_equal(np.asarray(kept), np.asarray(image))


@pytest.mark.parametrize("value", ["grey", "SOFT", None, 1])
def test_unknown_mask_mode_is_refused(loaded, value):
    with pytest.raises(ValueError, match="mask_mode=.* is unknown; choose one of binary, soft"):
        loaded[9].inpaint(sample_image(96, 64), sample_mask(96, 64), mask_mode=value, **ARGS)
