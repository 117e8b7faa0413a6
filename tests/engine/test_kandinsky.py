"""Kandinsky 2.2 engines against diffusers' KandinskyV22InpaintCombinedPipeline, and against its
prior and decoder pipelines separately, with every random draw replayed from numpy (docs/architecture.md, "Randomness")."""
import numpy as np
import pytest
import torch

from diffusers_runs import numpy_randn
from parity import record
from pictures import sample_image, sample_mask
from inpaintrt import Engine
from kandinsky_helpers import RecordingGenerator, relative

W, H = 80, 48  # 12x20 latents with the tiny MoVQ's 4x; sizes are multiples of 16 there (64 for the real models)
FAST = dict(num_inference_steps=3, prior_num_inference_steps=3)


@pytest.fixture(scope="module")
def engines(kandinsky):
    return Engine.load(kandinsky.engine), Engine.load(kandinsky.decoder_engine)


def run_both(pipe, engine_call, seed, image, mask, **kwargs):
    """(diffusers' images, ours, diffusers' last latents, ours, diffusers' draw shapes, ours)."""
    draws, theirs, ours = [], {}, {}

    def catch(pipe, step, t, tensors):
        theirs["latents"] = tensors["latents"].numpy().copy()
        return tensors

    with numpy_randn(seed, draws), torch.no_grad():
        expected = pipe(image=image, mask_image=mask, callback_on_step_end=catch, **kwargs).images
    gen = RecordingGenerator(seed)
    got = engine_call(image, mask, generator=gen, progress=False,
                      callback_on_step_end=lambda step, t, x: ours.update(latents=x.copy()), **kwargs).images
    return expected, got, theirs["latents"], ours["latents"], draws, gen.shapes


def check(expected, got, their_latents, our_latents, draws, our_draws):
    assert our_draws == draws  # every draw of diffusers consumed, in its order and shapes
    assert record("kandinsky latents, max abs diff / max abs", relative(our_latents, their_latents)) <= 1e-3
    assert got.shape == expected.shape and got.dtype == np.float32
    assert record("kandinsky image (np, [0, 1]), max abs diff", np.abs(got - expected).max()) <= 1e-3


@pytest.mark.parametrize("guidance", [(4.0, 4.0), (1.0, 1.0), (1.0, 5.0)], ids=["guided", "unguided", "decoder-guided"])
def test_combined_matches_diffusers(kandinsky, engines, guidance):
    prior_scale, scale = guidance
    kwargs = dict(prompt="a red bench in a park", prior_guidance_scale=prior_scale, guidance_scale=scale,
                  height=H, width=W, output_type="np", **FAST)
    check(*run_both(kandinsky.combined, engines[0].inpaint, 7, sample_image(W, H), sample_mask(W, H), **kwargs))


def test_combined_prompts_negatives_and_images_per_prompt(kandinsky, engines):
    """Two prompts with their negative prompts (the prior runs them as prompts too), two images each."""
    kwargs = dict(prompt=["a cat", "a dog"], negative_prompt=["blurry", "dark"], num_images_per_prompt=2,
                  height=H, width=W, output_type="np", **FAST)
    expected, got, *rest = run_both(kandinsky.combined, engines[0].inpaint, 3, sample_image(W, H),
                                    sample_mask(W, H), **kwargs)
    assert got.shape == (4, H, W, 3)
    check(expected, got, *rest)


def test_odd_size_resized_picture_and_pil_output(kandinsky, engines):
    """A 100x70 picture resized (bicubic) to 112x64 (not the model's square default), PIL out."""
    image, mask = sample_image(100, 70, seed=2), sample_mask(100, 70).convert("RGB")
    kwargs = dict(prompt="a boat", height=64, width=112, output_type="pil", **FAST)
    expected, got, their_latents, our_latents, draws, our_draws = run_both(
        kandinsky.combined, engines[0].inpaint, 11, image, mask, **kwargs)
    assert our_draws == draws and got[0].size == (112, 64)
    assert relative(our_latents, their_latents) <= 1e-3
    assert np.abs(np.asarray(got[0], np.int16) - np.asarray(expected[0], np.int16)).max() <= 1


def test_prior_matches_diffusers(kandinsky, engines):
    prior = kandinsky.combined.prior_pipe
    for negative in (None, "low quality"):
        draws = []
        with numpy_randn(5, draws), torch.no_grad():
            expected = prior("a lighthouse", negative_prompt=negative, num_inference_steps=4, num_images_per_prompt=2)
        gen = RecordingGenerator(5)
        got = engines[0].prior("a lighthouse", negative_prompt=negative, num_inference_steps=4,
                               num_images_per_prompt=2, generator=gen, progress=False)
        assert gen.shapes == draws
        for ours, theirs in ((got.image_embeds, expected.image_embeds), (got.negative_image_embeds,
                                                                         expected.negative_image_embeds)):
            assert ours.shape == (2, 32)
            assert record("kandinsky image embeddings, max abs diff / max abs", relative(ours, theirs.numpy())) <= 1e-3


@pytest.mark.parametrize("guidance_scale", [4.0, 1.0])
@pytest.mark.parametrize("which", [0, 1], ids=["with-prior", "decoder-only"])
def test_decoder_with_given_embeddings(kandinsky, engines, guidance_scale, which):
    """KandinskyV22InpaintPipeline with user image embeddings (e.g. made from a picture); two images when
    guided (diffusers repeats the embeddings per image only under guidance: unguided, it fails on 2)."""
    rng = np.random.default_rng(0)
    embeds, negative = rng.standard_normal((2, 1, 32), dtype=np.float32)
    kwargs = dict(image_embeds=embeds, negative_image_embeds=negative, guidance_scale=guidance_scale,
                  num_images_per_prompt=2 if guidance_scale > 1 else 1, num_inference_steps=3, height=H, width=W,
                  output_type="np")
    decoder = kandinsky.combined.decoder_pipe

    def ours(image, mask, **kw):
        if guidance_scale <= 1:
            kw.pop("negative_image_embeds")
        return engines[which].inpaint(image, mask, **kw)

    def theirs(image=None, mask_image=None, **kw):
        kw.update(image_embeds=torch.from_numpy(embeds), negative_image_embeds=torch.from_numpy(negative))
        return decoder(image=image, mask_image=mask_image, **kw)

    check(*run_both(theirs, ours, 4, sample_image(W, H), sample_mask(W, H), **kwargs))


def test_numpy_picture_and_mask(kandinsky, engines):
    """diffusers' own example passes the mask as a float HxW array (1 = repaint) and takes uint8 HxWx3 pictures."""
    image = np.asarray(sample_image(W, H, seed=5))
    mask = np.zeros((H, W), np.float32)
    mask[5:30, 20:61] = 1
    embeds, negative = np.random.default_rng(3).standard_normal((2, 1, 32), dtype=np.float32)
    kwargs = dict(image_embeds=embeds, negative_image_embeds=negative, num_inference_steps=3, height=H, width=W,
                  output_type="np")

    def theirs(image=None, mask_image=None, **kw):
        kw.update(image_embeds=torch.from_numpy(embeds), negative_image_embeds=torch.from_numpy(negative))
        return kandinsky.combined.decoder_pipe(image=image, mask_image=mask_image.copy(), **kw)

    check(*run_both(theirs, engines[1].inpaint, 6, image, mask, **kwargs))


def test_ddim_and_given_latents(kandinsky, engines):
    """scheduler='ddim' (a DDIMScheduler from the decoder's config), the combined pipeline's `latents`
    (the prior's: prior_latents here) and the decoder's own latents."""
    from diffusers import DDIMScheduler

    rng = np.random.default_rng(1)
    prior_latents = rng.standard_normal((1, 32), dtype=np.float32)
    latents = rng.standard_normal((1, 4, H // 4, W // 4), dtype=np.float32)
    pipe = kandinsky.combined
    image, mask = sample_image(W, H), sample_mask(W, H)
    ddpm = pipe.decoder_pipe.scheduler
    pipe.decoder_pipe.scheduler = DDIMScheduler.from_config(ddpm.config)
    try:
        with numpy_randn(2), torch.no_grad():
            embeds, negative = pipe.prior_pipe("a kite", num_inference_steps=3, latents=torch.from_numpy(prior_latents),
                                               return_dict=False)
            expected = pipe.decoder_pipe(image=image, mask_image=mask, image_embeds=embeds, negative_image_embeds=negative,
                                         latents=torch.from_numpy(latents), num_inference_steps=3, height=H, width=W,
                                         output_type="latent").images.numpy()
    finally:
        pipe.decoder_pipe.scheduler = ddpm
    got = engines[0].inpaint(image, mask, prompt="a kite", prior_latents=prior_latents, latents=latents,
                             scheduler="ddim", generator=2, height=H, width=W, output_type="latent", progress=False,
                             **FAST).images
    assert relative(got, expected) <= 1e-3


def test_defaults_are_diffusers(engines):
    """512x512, 100 decoder steps, 25 prior steps at guidance 4: the signature's defaults."""
    import inspect

    params = inspect.signature(type(engines[0]).inpaint).parameters
    assert params["num_inference_steps"].default == 100 and params["guidance_scale"].default == 4.0
    assert engines[0].model["default_height"] == engines[0].model["default_width"] == 512
    prior = inspect.signature(type(engines[0]).prior).parameters
    assert prior["num_inference_steps"].default == 25 and prior["guidance_scale"].default == 4.0
