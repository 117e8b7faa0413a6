"""Kandinsky 2.2 decoders whose DDPM scheduler reads the UNet's predicted variance (variance_type learned /
learned_range): the exported UNet keeps its variance half and the engine matches diffusers' decoder
pipeline with every draw replayed, guided and not."""
import numpy as np
import pytest
import torch

from diffusers_runs import numpy_randn
from parity import record
from pictures import sample_image, sample_mask
from inpaintrt import Engine
from kandinsky_helpers import RecordingGenerator, relative

W, H = 80, 48


@pytest.fixture(scope="module", params=["learned_range", "learned"])
def learned(request, tmp_path_factory):
    from inpaintrt.export.kandinsky import export_kandinsky
    from inpaintrt.export.random_models_kandinsky import DECODER_SCHEDULER_CONFIG, build_decoder_pipeline

    decoder = build_decoder_pipeline("tiny", seed=5, scheduler_config=dict(DECODER_SCHEDULER_CONFIG,
                                                                           variance_type=request.param))
    if request.param == "learned":  # a variance must be positive: the random UNet's raw output is not
        with torch.no_grad():
            decoder.unet.conv_out.bias[4:] += 3.0
    root = tmp_path_factory.mktemp(f"kandinsky-{request.param}")
    engine = export_kandinsky(decoder, None, root / "engine", optimize=False, log=lambda *_: None)
    return decoder, Engine.load(engine)


@pytest.mark.parametrize("guidance_scale", [4.0, 1.0])
def test_learned_variance_matches_diffusers(learned, guidance_scale):
    decoder, engine = learned
    assert engine.manifest["components"]["unet"]["outputs"][0]["shape"][1] == 8  # the graph gives mean and variance
    embeds, negative = np.random.default_rng(2).standard_normal((2, 1, 32), dtype=np.float32)
    image, mask = sample_image(W, H), sample_mask(W, H)
    kwargs = dict(guidance_scale=guidance_scale, num_inference_steps=4, height=H, width=W, output_type="np")
    draws = []
    with numpy_randn(9, draws), torch.no_grad():
        expected = decoder(image=image, mask_image=mask, image_embeds=torch.from_numpy(embeds),
                           negative_image_embeds=torch.from_numpy(negative), **kwargs).images
    gen = RecordingGenerator(9)
    got = engine.inpaint(image, mask, image_embeds=embeds, generator=gen, progress=False,
                         negative_image_embeds=negative if guidance_scale > 1 else None, **kwargs).images
    assert gen.shapes == draws
    assert np.isfinite(got).all()
    assert record("kandinsky learned variance image, max abs diff", np.abs(got - expected).max()) <= 1e-3


def test_the_variance_changes_the_result(learned):
    """Reading the variance is not a no-op: fixed_small on the same UNet gives another picture."""
    decoder, engine = learned
    embeds = np.random.default_rng(2).standard_normal((1, 32), dtype=np.float32)
    args = dict(image_embeds=embeds, guidance_scale=1.0, num_inference_steps=4, height=H, width=W,
                output_type="latent", progress=False)
    got = engine.inpaint(sample_image(W, H), sample_mask(W, H), generator=1, **args).images
    fixed = engine.inpaint(sample_image(W, H), sample_mask(W, H), generator=1, scheduler="ddpm",
                           scheduler_options={"variance_type": "fixed_small"}, **args).images
    assert relative(fixed, got) > 1e-3
