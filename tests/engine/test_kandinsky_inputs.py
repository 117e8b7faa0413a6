"""Kandinsky 2.2: the numpy schedulers and mask preparation against diffusers', bad input with
clear errors, the family's arguments refused on the other families' engines, and the runtime without torch."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from diffusers_runs import numpy_randn
from pictures import sample_image, sample_mask
from inpaintrt import Engine
from inpaintrt.cli import export_main
from inpaintrt.export.random_models_kandinsky import DECODER_SCHEDULER_CONFIG, PRIOR_SCHEDULER_CONFIG
from inpaintrt.runtime.kandinsky import prepare_mask
from inpaintrt.runtime.schedulers import DDPM, UnCLIP

W, H = 80, 48


@pytest.fixture(scope="module")
def engines(kandinsky):
    return Engine.load(kandinsky.engine), Engine.load(kandinsky.decoder_engine)


def trajectory(ours, theirs, steps, shape, seed, prior=False):
    """Both schedulers stepped on the same made-up model outputs, noise replayed: final samples."""
    rng = np.random.default_rng(seed)
    outputs = [rng.standard_normal(shape, dtype=np.float32) for _ in range(steps)]
    start = rng.standard_normal(shape, dtype=np.float32)
    theirs.set_timesteps(steps)
    ours.set_timesteps(steps)
    assert np.array_equal(ours.timesteps, theirs.timesteps.numpy())
    sample = torch.from_numpy(start)
    with numpy_randn(seed + 1):
        for i, t in enumerate(theirs.timesteps):
            extra = {"prev_timestep": theirs.timesteps[i + 1] if i + 1 < steps else None} if prior else {}
            sample = theirs.step(torch.from_numpy(outputs[i]), t, sample, **extra).prev_sample
    gen = np.random.default_rng(seed + 1)
    ours_sample = start
    for i in range(steps):
        ours_sample = ours.step(outputs[i], i, ours_sample, gen)
    return ours_sample, sample.numpy()


@pytest.mark.parametrize("config", [{}, {"variance_type": "fixed_small_log"}, {"variance_type": "fixed_large"},
                                    {"timestep_spacing": "trailing", "steps_offset": 0},
                                    {"prediction_type": "v_prediction", "clip_sample": True}])
def test_ddpm_matches_diffusers(config):
    from diffusers import DDPMScheduler

    full = dict(DECODER_SCHEDULER_CONFIG, **config)
    ours, theirs = trajectory(DDPM(full), DDPMScheduler.from_config(full), 7, (2, 4, 3, 5), 0)
    assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()


@pytest.mark.parametrize("steps", [2, 5, 25])
@pytest.mark.parametrize("prediction_type", ["sample", "epsilon"])
def test_unclip_matches_diffusers(steps, prediction_type):
    from diffusers import UnCLIPScheduler

    config = dict(PRIOR_SCHEDULER_CONFIG, prediction_type=prediction_type)
    ours, theirs = trajectory(UnCLIP(config), UnCLIPScheduler.from_config(config), steps, (3, 8), steps, prior=True)
    assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()


def test_prepare_mask_is_diffusers():
    from diffusers.pipelines.kandinsky2_2.pipeline_kandinsky2_2_inpainting import prepare_mask as theirs

    rng = np.random.default_rng(0)
    for density in (0.05, 0.3, 0.9):
        keep = (rng.random((1, 1, 9, 13)) > density).astype(np.float32)
        expected = theirs(torch.from_numpy(keep.copy())).numpy()
        assert np.array_equal(prepare_mask(keep), expected)


def call(engine, **kwargs):
    args = dict(prompt="a cat", num_inference_steps=1, prior_num_inference_steps=2, height=H, width=W,
                output_type="latent", progress=False)
    args.update(kwargs)
    return engine.inpaint(sample_image(W, H), sample_mask(W, H), **{k: v for k, v in args.items() if v is not None})


BAD = [
    (dict(prompt=None, image_embeds=np.zeros((1, 48), np.float32), negative_image_embeds=np.zeros((1, 48), np.float32),
          prior_num_inference_steps=None), "image_embeds has shape \\(1, 48\\).*32-wide"),
    (dict(prompt=None, image_embeds=np.zeros((1, 32), np.float32), prior_num_inference_steps=None),
     "negative_image_embeds"),
    (dict(image_embeds=np.zeros((1, 32), np.float32), negative_image_embeds=np.zeros((1, 32), np.float32)),
     "prompt, prior_num_inference_steps are for the prior, which image_embeds replaces"),
    (dict(prompt=None, prior_num_inference_steps=None, image_embeds=np.zeros((2, 32), np.int64)), "float array"),
    (dict(height=40), "height=40 must be a positive multiple of 16"),
    (dict(width=96 + 8), "width=104 must be a positive multiple of 16"),
    (dict(scheduler="euler"), "scheduler='euler' does not fit"),
    (dict(negative_prompt="x", negative_prior_prompt="y"), "name the same thing"),
    (dict(prior_num_inference_steps=1), "prior_num_inference_steps=1 must be a whole number >= 2"),
    (dict(strength=0.5), "strength is an argument of the Stable Diffusion engines"),
    (dict(prompt_2="x", control_image=None, padding_mask_crop=8), "padding_mask_crop, prompt_2 are arguments"),
    (dict(guidance_scale=float("nan")), "guidance_scale=nan"),
    (dict(output_type="pt"), "output_type='pt' is unknown"),
]


@pytest.mark.parametrize("kwargs,message", BAD, ids=[m.split()[0] for _, m in BAD])
def test_bad_input(engines, kwargs, message):
    with pytest.raises(ValueError, match=message):
        call(engines[0], **kwargs)


def test_unknown_argument_is_a_type_error(engines):
    with pytest.raises(TypeError, match="unexpected keyword argument 'steps'"):
        call(engines[0], steps=3)


def test_stable_diffusion_arguments_at_their_defaults_pass(engines):
    """The inpaint CLI passes every argument; at its default a Stable Diffusion one changes nothing."""
    out = call(engines[0], blur_factor=0, mask_mode="binary", keep_unmasked=False, guess_mode=False).images
    assert out.shape == (1, 4, H // 4, W // 4)


def test_prior_on_an_engine_without_one(engines):
    for kwargs in (dict(), dict(prompt=None, prior_guidance_scale=3.0, prior_num_inference_steps=None)):
        with pytest.raises(ValueError, match="exported without a prior.*image_embeds.*--prior"):
            call(engines[1], **kwargs)
    with pytest.raises(ValueError, match="exported without a prior"):
        engines[1].prior("a cat")


def test_kandinsky_arguments_refused_on_stable_diffusion():
    """An SD/SDXL engine names the Kandinsky arguments it was given (checked before any work: no engine needed)."""
    from inpaintrt.engine.engine import Engine as SdEngine
    from inpaintrt.engine.argument_specs import needing
    from inpaintrt.engine.families import FAMILIES

    assert {"image_embeds", "prior_guidance_scale", "negative_prior_prompt"} <= set(needing("prior"))
    sd = SdEngine.__new__(SdEngine)
    sd.family, sd.record = "sd1", FAMILIES["sd1"]
    with pytest.raises(ValueError, match="image_embeds, prior_guidance_scale are for Kandinsky 2.2 engines; this "
                                         "engine is sd1"):
        sd.inpaint(None, None, prior_guidance_scale=4.0, image_embeds=np.zeros((1, 32)))
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        sd.inpaint(None, None, bogus=1)


def test_engines_are_siblings_and_missing_methods_say_so(engines):
    """Engine.load picks the class by family; a method only the Stable Diffusion engine has is absent here,
    and calling it names the family and what to do instead."""
    from inpaintrt.engine.base import EngineBase, MissingMethod
    from inpaintrt.engine.kandinsky import KandinskyEngine

    engine = engines[0]
    assert type(engine) is KandinskyEngine and isinstance(engine, EngineBase) and not isinstance(engine, Engine)
    assert not hasattr(engine, "outpaint") and not hasattr(engine, "encode_prompt")
    with pytest.raises(MissingMethod, match="outpaint is not available for kandinsky22 engines: grow the canvas"):
        engine.outpaint(sample_image(W, H), right=16)
    with pytest.raises(AttributeError, match="encode_prompt is not available .* use engine.prior"):
        engine.encode_prompt("a cat")
    with pytest.raises(AttributeError, match="'KandinskyEngine' object has no attribute 'bogus'"):
        engine.bogus


def test_export_refuses_wrong_checkpoints(kandinsky, tmp_path, capsys):
    assert export_main(["--model", str(kandinsky.prior_folder), "--output", str(tmp_path / "x")]) == 2
    assert "is a KandinskyV22PriorPipeline; pass the inpainting decoder" in capsys.readouterr().err
    assert export_main(["--model", str(kandinsky.decoder_folder), "--prior", str(kandinsky.decoder_folder),
                        "--output", str(tmp_path / "y")]) == 2
    assert "not a KandinskyV22PriorPipeline" in capsys.readouterr().err
    assert export_main(["--model", str(kandinsky.decoder_folder), "--fp16", "--output", str(tmp_path / "z")]) == 2
    assert "--fp16 is not available for Kandinsky 2.2 engines" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_manifest_records_family_schedulers_and_parity(engines):
    manifest = engines[0].manifest
    assert manifest["model"]["family"] == "kandinsky22" and manifest["model"]["prior"] is True
    assert manifest["scheduler"]["_class_name"] == "DDPMScheduler"
    assert manifest["prior"]["scheduler"]["_class_name"] == "UnCLIPScheduler"
    for name in ("prior_text_encoder", "prior", "unet", "movq_encoder", "movq_decoder"):
        assert manifest["components"][name]["parity"]["max_rel_error"] <= 1e-4
    assert set(engines[1].manifest["components"]) == {"unet", "movq_encoder", "movq_decoder"}


NO_TORCH = """
import sys
for name in ("torch", "diffusers", "transformers"):
    sys.modules[name] = None
import numpy as np
from PIL import Image
from inpaintrt import Engine
engine = Engine.load(sys.argv[1])
out = engine.inpaint(Image.new("RGB", (80, 48), (120, 80, 40)), Image.new("L", (80, 48), 255), prompt="a cat",
                     num_inference_steps=2, prior_num_inference_steps=2, height=48, width=80, generator=0,
                     output_type="np", progress=False)
assert out.images.shape == (1, 48, 80, 3) and np.isfinite(out.images).all()
print("heavy modules:", sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers")
                               and sys.modules[m] is not None))
"""


def test_runs_without_torch(kandinsky):
    result = subprocess.run([sys.executable, "-c", NO_TORCH, str(kandinsky.engine)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "heavy modules: []" in result.stdout


def test_cli_takes_the_family_defaults(kandinsky, engines, tmp_path):
    """`inpaint` without --guidance runs Kandinsky's guidance 4 (not Stable Diffusion's 7.5)."""
    from PIL import Image

    from inpaintrt.cli import inpaint_main

    sample_image(W, H).save(tmp_path / "in.png")
    sample_mask(W, H).save(tmp_path / "mask.png")
    args = ["--engine", str(kandinsky.engine), "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"),
            "--prompt", "a cat", "--steps", "2", "--seed", "3", "--height", str(H), "--width", str(W)]
    assert inpaint_main(args + ["--output", str(tmp_path / "cli.png")]) == 0
    api = engines[0].inpaint(sample_image(W, H), sample_mask(W, H), prompt="a cat", num_inference_steps=2,
                             generator=3, height=H, width=W, progress=False).images[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "cli.png")), np.asarray(api))
