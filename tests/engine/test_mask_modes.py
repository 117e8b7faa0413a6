"""Masked-content modes (what the masked area starts from at strength < 1) and mask editing."""
import numpy as np
import pytest
from PIL import Image

from pictures import sample_image, sample_mask
from inpaintrt import Engine
from inpaintrt.cli import inpaint_main
from inpaintrt.runtime import masking

ARGS = dict(prompt="a cat on a wall", num_inference_steps=4, progress=False, height=64, width=96)


@pytest.fixture(scope="module")
def loaded(engines):
    return {ch: Engine.load(path) for ch, path in engines.items()}


def with_other_hole(image: Image.Image, mask: Image.Image) -> Image.Image:
    """The same picture with different pixels under the mask."""
    pixels = np.asarray(image).copy()
    hole = np.asarray(mask) > 127
    pixels[hole] = 255 - pixels[hole]
    return Image.fromarray(pixels)


def first_unet_sample(engine, image, mask, **kwargs) -> np.ndarray:
    """The latents (4 channels) the UNet sees at the first step."""
    unet, seen = engine.sessions["unet"], []

    class Recording:
        def run(self, feeds):
            seen.append(feeds["sample"][:, :4].copy())
            return unet.run(feeds)

    engine.sessions["unet"] = Recording()
    try:
        engine.inpaint(image, mask, output_type="latent", **ARGS, **kwargs)
    finally:
        engine.sessions["unet"] = unet
    return seen[0]


@pytest.mark.parametrize("channels", [9, 4])
def test_original_is_the_default(loaded, channels):
    image, mask = sample_image(96, 64), sample_mask(96, 64)
    run = lambda **kw: loaded[channels].inpaint(image, mask, generator=1, strength=0.6, output_type="latent",
                                                **ARGS, **kw).images
    np.testing.assert_array_equal(run(masked_content="original"), run())


@pytest.mark.parametrize("channels", [9, 4])
def test_fill_forgets_what_was_under_the_mask(loaded, channels):
    image, mask = sample_image(96, 64), sample_mask(96, 64)
    run = lambda picture, mode: loaded[channels].inpaint(picture, mask, generator=1, strength=0.6, output_type="np",
                                                         masked_content=mode, **ARGS).images
    filled = run(image, "fill")
    np.testing.assert_array_equal(run(with_other_hole(image, mask), "fill"), filled)
    assert not np.array_equal(run(with_other_hole(image, mask), "original"), run(image, "original"))
    assert not np.array_equal(filled, run(image, "original"))


def test_fill_blends_the_surrounding_colours():
    rng = np.random.default_rng(0)
    pixels = rng.uniform(-1, 1, (1, 3, 40, 60)).astype(np.float32)
    pixels[:, :, :, :30] = np.array([0.8, -0.2, -0.6], np.float32)[:, None, None]  # left half one colour
    pixels[:, :, :, 30:] = np.array([-0.5, 0.4, 0.9], np.float32)[:, None, None]  # right half another
    hole = np.zeros((1, 1, 40, 60), np.float32)
    hole[..., 10:30, 15:45] = 1
    filled = masking.fill(pixels, hole)
    keep = hole[0, 0] == 0
    np.testing.assert_array_equal(filled[0][:, keep], pixels[0][:, keep])  # known pixels unchanged
    inside = filled[0][:, hole[0, 0] == 1]
    left, right = pixels[0, :, 0, 0], pixels[0, :, 0, -1]
    # every filled pixel is a mix of the two surrounding colours: on the segment between them
    weight = (inside - right[:, None]) / (left - right)[:, None]
    assert np.allclose(weight, weight[0], atol=1e-5) and weight.min() >= -1e-6 and weight.max() <= 1 + 1e-6
    assert weight[0, :].reshape(20, 30)[:, 0].mean() > weight[0, :].reshape(20, 30)[:, -1].mean()  # left to right
    assert np.array_equal(masking.fill(pixels, np.zeros_like(hole)), pixels)


@pytest.mark.parametrize("channels", [9, 4])
def test_latent_modes_replace_the_start_under_the_mask(loaded, channels):
    engine, image, mask = loaded[channels], sample_image(96, 64), sample_mask(96, 64)
    other = sample_image(96, 64, seed=9)  # a different picture altogether
    inside = np.asarray(mask)[::8, ::8] > 127  # the latent mask (nearest, every 8th pixel)
    start = {(mode, name): first_unet_sample(engine, picture, mask, generator=1, strength=0.6, masked_content=mode)
             for mode in ("original", "latent_noise", "latent_nothing")
             for name, picture in (("a", image), ("b", other))}
    for mode in ("latent_noise", "latent_nothing"):  # under the mask: nothing of the picture
        np.testing.assert_array_equal(start[mode, "a"][..., inside], start[mode, "b"][..., inside])
        np.testing.assert_array_equal(start[mode, "a"][..., ~inside], start["original", "a"][..., ~inside])
    assert not np.array_equal(start["original", "a"][..., inside], start["original", "b"][..., inside])
    # nothing: only the scheduler's noise, so less spread than latent noise (noise on top of noise)
    nothing, noise = start["latent_nothing", "a"][..., inside], start["latent_noise", "a"][..., inside]
    assert nothing.std() < noise.std()
    # latent noise is drawn from the generator: another seed, another start
    reseeded = first_unet_sample(engine, image, mask, generator=2, strength=0.6, masked_content="latent_noise")
    assert not np.array_equal(reseeded[..., inside], noise)


def test_latent_modes_change_nothing_for_an_inpainting_unet_at_full_strength(loaded):
    image, mask = sample_image(96, 64), sample_mask(96, 64)
    run = lambda mode: loaded[9].inpaint(image, mask, generator=1, output_type="latent", masked_content=mode,
                                         **ARGS).images
    reference = run("original")
    for mode in ("latent_noise", "latent_nothing", "fill"):
        np.testing.assert_array_equal(run(mode), reference)


def test_mask_invert(loaded):
    image, mask = sample_image(96, 64), sample_mask(96, 64)
    inverted = Image.fromarray(255 - np.asarray(mask))
    run = lambda m, **kw: loaded[4].inpaint(image, m, generator=1, keep_unmasked=True, **ARGS, **kw).images[0]
    got = run(mask, mask_invert=True)
    assert np.array_equal(np.asarray(got), np.asarray(run(inverted)))
    keep = np.asarray(mask) > 127  # the white part of the given mask is now kept
    assert np.array_equal(np.asarray(got)[keep], np.asarray(image)[keep])


def test_mask_grow_and_shrink(loaded):
    image, mask = sample_image(96, 64), sample_mask(96, 64)
    values = np.asarray(mask) > 127
    rows, cols = np.flatnonzero(values.any(1)), np.flatnonzero(values.any(0))
    grown, shrunk = np.zeros_like(values), np.zeros_like(values)
    grown[rows[0] - 5:rows[-1] + 6, cols[0] - 5:cols[-1] + 6] = True
    shrunk[rows[0] + 5:rows[-1] - 4, cols[0] + 5:cols[-1] - 4] = True
    assert np.array_equal(np.asarray(masking.edit(mask, grow=5)) > 127, grown)
    assert np.array_equal(np.asarray(masking.edit(mask, shrink=5)) > 127, shrunk)
    as_float = np.asarray(mask, np.float32) / 255
    edited = masking.edit(as_float, grow=5)
    assert isinstance(edited, np.ndarray) and np.array_equal(edited[..., 0] > 0.5, grown)  # arrays stay arrays
    run = lambda m, **kw: loaded[9].inpaint(image, m, generator=1, keep_unmasked=True, **ARGS, **kw).images[0]
    by_argument = run(mask, mask_grow=5)
    assert np.array_equal(np.asarray(by_argument), np.asarray(run(Image.fromarray(grown.astype(np.uint8) * 255))))
    assert np.array_equal(np.asarray(by_argument)[~grown], np.asarray(image)[~grown])
    assert np.array_equal(np.asarray(run(mask, mask_shrink=5))[~shrunk], np.asarray(image)[~shrunk])


def test_mask_edits_apply_before_the_blur():
    mask = sample_mask(96, 64)
    expected = masking.blur(masking.edit(mask, invert=True, grow=3), 4)
    assert np.array_equal(np.asarray(masking.edit(mask, invert=True, grow=3, blur_radius=4)), np.asarray(expected))
    assert masking.edit(mask) is mask  # the defaults leave diffusers' path alone


@pytest.mark.parametrize("kwargs, match", [
    (dict(masked_content="noise"), "masked_content='noise' is unknown; choose one of original, fill"),
    (dict(mask_grow=-4), "mask_grow=-4 must be a whole number of pixels"),
    (dict(mask_shrink=2.5), "mask_shrink=2.5 must be a whole number"),
    (dict(mask_grow=4, mask_shrink=2), "pass one of them"),
    (dict(mask_invert="yes"), "mask_invert='yes' must be True or False"),
    (dict(mask_shrink=40), "mask_image is all black"),  # shrunk away: nothing left to repaint
    (dict(masked_content="latent_nothing", denoising_start=0.5), "with denoising_start the call continues"),
])
def test_bad_mask_options(loaded, kwargs, match):
    with pytest.raises(ValueError, match=match):
        loaded[9].inpaint(sample_image(96, 64), sample_mask(96, 64), **ARGS, **kwargs)


def test_fill_needs_a_picture(loaded):
    latents = loaded[9].inpaint(sample_image(96, 64), sample_mask(96, 64), generator=0, output_type="latent",
                                **ARGS).images
    with pytest.raises(ValueError, match="masked_content='fill' paints pixels"):
        loaded[9].inpaint(latents, sample_mask(96, 64), masked_content="fill", strength=0.5,
                          **dict(ARGS, height=None, width=None))


def test_cli_mask_options(engines, tmp_path):
    image, mask = sample_image(96, 64), sample_mask(96, 64)
    image.save(tmp_path / "in.png")
    mask.save(tmp_path / "mask.png")
    common = ["--engine", str(engines[4]), "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"),
              "--steps", "3", "--seed", "1", "--height", "64", "--width", "96", "--strength", "0.7"]
    assert inpaint_main(common + ["--output", str(tmp_path / "cli.png"), "--mask-mode", "soft", "--blur", "3",
                                  "--masked-content", "fill", "--mask-grow", "2", "--mask-invert"]) == 0
    api = Engine.load(engines[4]).inpaint(image, mask, generator=1, strength=0.7, mask_mode="soft", blur_factor=3,
                                          masked_content="fill", mask_grow=2, mask_invert=True,
                                          **dict(ARGS, num_inference_steps=3, prompt="")).images[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "cli.png")), np.asarray(api))
    assert inpaint_main(common + ["--output", str(tmp_path / "x.png"), "--mask-shrink", "-1"]) == 2
