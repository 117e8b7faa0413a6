"""Inpainting features of diffusers' guide, against diffusers with replayed noise where diffusers has them."""
import io

import numpy as np
import pytest
from PIL import Image

from diffusers_runs import diffusers_inpaint
from pictures import sample_image, sample_mask
from inpaintrt import Engine, StopDenoising

ARGS = dict(prompt="a cat on a wall", num_inference_steps=3, progress=False)


@pytest.fixture(scope="module")
def loaded(engines):
    return {ch: Engine.load(path) for ch, path in engines.items()}


def small_mask(width=200, height=150):
    mask = np.zeros((height, width), np.uint8)
    mask[60:95, 120:150] = 255
    return Image.fromarray(mask)


def pixels(picture) -> np.ndarray:
    return np.asarray(picture, np.int16)


@pytest.mark.parametrize("blur", [0, 6])
def test_padding_mask_crop_matches_diffusers(pipes, loaded, blur):
    image, mask = sample_image(200, 150, seed=2), small_mask()
    if blur:  # the guide's way: blur the mask with diffusers' processor, then crop and paste back
        mask_for_diffusers = pipes[9].mask_processor.blur(mask, blur_factor=blur)
    else:
        mask_for_diffusers = mask
    args = dict(ARGS, height=64, width=96)
    expected = diffusers_inpaint(pipes[9], 3, "euler", image=image, mask_image=mask_for_diffusers,
                                 padding_mask_crop=8, **args)[0]
    got = loaded[9].inpaint(image, mask, scheduler="euler", generator=np.random.default_rng(3), padding_mask_crop=8,
                            blur_factor=blur, **args).images[0]
    assert got.size == expected.size == (200, 150)
    assert np.abs(pixels(got) - pixels(expected)).max() <= 1  # uint8 rounding of a <= 1e-3 difference


def test_keep_unmasked_returns_unmasked_pixels_unchanged(loaded, pipes):
    image, mask = sample_image(200, 150, seed=5), small_mask()
    got = loaded[4].inpaint(image, mask, generator=1, keep_unmasked=True, height=64, width=96, **ARGS).images[0]
    assert got.size == (200, 150)  # the input's size
    keep = np.asarray(mask) == 0
    assert np.array_equal(np.asarray(got)[keep], np.asarray(image)[keep])
    assert not np.array_equal(np.asarray(got)[~keep], np.asarray(image)[~keep])
    # the same as diffusers' own apply_overlay on the plain result
    plain = loaded[4].inpaint(image, mask, generator=1, height=64, width=96, **ARGS).images[0]
    by_hand = pipes[4].image_processor.apply_overlay(mask, image, plain.resize((200, 150), Image.LANCZOS))
    assert np.array_equal(np.asarray(got), np.asarray(by_hand))


def test_keep_input_size(loaded):
    image, mask = sample_image(203, 130), small_mask(203, 130)
    out = loaded[9].inpaint(image, mask, generator=0, keep_input_size=True, output_type="np", **ARGS).images
    assert out.shape == (1, 128, 200, 3)
    out = loaded[9].inpaint(image, mask, generator=0, keep_input_size=True, keep_unmasked=True, **ARGS).images
    assert out[0].size == (203, 130)


def encode_png(picture) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return buffer.getvalue()


def test_inputs_in_every_form_give_the_same_result(loaded, tmp_path):
    rgb, mask = sample_image(96, 64, seed=8), sample_mask(96, 64)
    run = lambda img, m: loaded[9].inpaint(img, m, generator=4, height=64, width=96, output_type="np", **ARGS).images
    reference = run(rgb, mask)
    rgb.save(tmp_path / "in.png")
    same = [
        (np.asarray(rgb), np.asarray(mask)),  # uint8 HxWx3 and HxW
        (rgb.convert("RGBA"), mask.convert("1")),  # alpha dropped; 1-bit mask
        (str(tmp_path / "in.png"), encode_png(mask)),  # a path and PNG bytes
        (rgb, mask.convert("RGB")),  # an RGB mask
        (np.asarray(rgb)[..., None, :][:, :, 0], np.asarray(mask)[..., None]),  # HxWx1 mask
    ]
    for image, m in same:
        np.testing.assert_array_equal(run(image, m), reference)
    grey = run(rgb.convert("L"), mask)  # L and P pictures work; they are other pictures, so only finite
    assert np.isfinite(grey).all() and np.isfinite(run(rgb.convert("P"), mask)).all()
    sixteen = Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257)
    assert sixteen.mode == "I;16"
    np.testing.assert_array_equal(run(sixteen, mask), grey)  # 16-bit scaled to the same 8-bit picture
    soft = np.asarray(mask, np.float32) / 255 * 0.7 + 0.2  # soft values binarize at 0.5
    np.testing.assert_array_equal(run(rgb, soft), run(rgb, (soft >= 0.5).astype(np.float32)))


def test_prompt_embeds_match_prompts(loaded, pipes):
    engine = loaded[9]
    cond, uncond = engine.encode_prompt(["a cat", "a dog"], negative_prompt="ugly", num_images_per_prompt=2)
    assert cond.shape == uncond.shape == (4, 77, 32)
    args = dict(num_inference_steps=2, height=64, width=96, output_type="latent", progress=False)
    image, mask = sample_image(96, 64), sample_mask(96, 64)
    by_text = engine.inpaint(image, mask, prompt=["a cat", "a dog"], negative_prompt="ugly", generator=1, **args).images
    base, neg = engine.encode_prompt(["a cat", "a dog"], negative_prompt="ugly")
    by_embeds = engine.inpaint(image, mask, prompt_embeds=base, negative_prompt_embeds=neg, generator=1, **args).images
    np.testing.assert_array_equal(by_text, by_embeds)
    import torch  # diffusers with the same embeddings (what Compel users pass)

    expected = diffusers_inpaint(pipes[9], 1, "pndm", image=image, mask_image=mask, prompt_embeds=torch.from_numpy(base),
                                 negative_prompt_embeds=torch.from_numpy(neg), **{k: v for k, v in args.items()
                                                                                  if k != "progress"}).numpy()
    assert np.abs(by_embeds - expected).max() <= 1e-3 * np.abs(expected).max()


def test_latent_chain_keeps_unmasked_latents(loaded):
    """inpaint -> latents -> inpaint again in latent space (the guide's chaining), 4-channel blend."""
    image, mask = sample_image(96, 64), sample_mask(96, 64)
    first = loaded[4].inpaint(image, mask, generator=2, height=64, width=96, output_type="latent", **ARGS).images
    second = loaded[4].inpaint(first, mask, generator=3, output_type="latent", strength=0.7, **ARGS).images
    assert second.shape == first.shape == (1, 4, 8, 12)
    keep = np.asarray(mask)[::8, ::8] == 0  # the latent mask samples every 8th pixel (torch nearest)
    assert np.array_equal(second[0][:, keep], first[0][:, keep])  # clean image latents outside the mask
    assert not np.array_equal(second, first)


def test_callback_can_change_latents_and_stop(pipes, loaded):
    image, mask = sample_image(96, 64), sample_mask(96, 64)
    args = dict(ARGS, num_inference_steps=4, height=64, width=96, output_type="latent")
    seen = []

    def stop_after_two(step, t, latents):
        seen.append(step)
        if step == 1:
            raise StopDenoising
        return latents * 0.5

    got = loaded[9].inpaint(image, mask, scheduler="ddim", generator=6, callback_on_step_end=stop_after_two,
                            **args).images
    assert seen == [0, 1]

    def same_in_diffusers(pipe, step, t, tensors):
        if step == 1:
            pipe._interrupt = True
            return tensors
        return {"latents": tensors["latents"] * 0.5}

    expected = diffusers_inpaint(pipes[9], 6, "ddim", image=image, mask_image=mask,
                                 callback_on_step_end=same_in_diffusers, **{k: v for k, v in args.items()
                                                                            if k != "progress"}).numpy()
    assert np.abs(got - expected).max() <= 1e-3 * np.abs(expected).max()


def test_long_prompt_warns_how_many_tokens_were_dropped(loaded):
    # diffusers' reading truncates; the default (A1111 syntax) reads past 77 tokens in chunks instead
    with pytest.warns(UserWarning, match=r"CLIP reads 77, so the last 23 were dropped"):
        loaded[9].inpaint(sample_image(64, 64), sample_mask(64, 64), prompt=" ".join(["cat"] * 98),
                          num_inference_steps=1, height=64, width=64, progress=False, prompt_syntax="plain")


@pytest.mark.parametrize("mask", [np.full((64, 96), 255, np.uint8), np.full((64, 96), 0.6, np.float32)],
                         ids=["all-white", "soft-above-half"])
def test_masks_that_repaint_everything_work(loaded, mask):
    out = loaded[9].inpaint(sample_image(96, 64), mask, generator=0, height=64, width=96, output_type="np",
                            **ARGS).images
    assert out.shape == (1, 64, 96, 3) and np.isfinite(out).all()


def test_each_distinct_prompt_is_encoded_once(engines):
    engine = Engine.load(engines[9])
    text_encoder, calls = engine.sessions["text_encoder"], []

    class Counting:
        def run(self, feeds):
            calls.append(feeds["input_ids"].shape[0])
            return text_encoder.run(feeds)

    engine.sessions["text_encoder"] = Counting()
    args = dict(num_inference_steps=1, height=64, width=96, output_type="latent", progress=False)
    first = engine.inpaint(sample_image(96, 64), sample_mask(96, 64), prompt="a cat", generator=0, **args).images
    assert calls == [1, 1]  # "a cat", then the empty negative prompt
    again = engine.inpaint(sample_image(96, 64), sample_mask(96, 64), prompt="a cat", generator=0, **args).images
    assert calls == [1, 1] and np.array_equal(first, again)
    engine.inpaint(sample_image(96, 64), sample_mask(96, 64), prompt=["a dog", "a cat", "a dog"], generator=0, **args)
    assert calls == [1, 1, 1]  # only "a dog" is new
