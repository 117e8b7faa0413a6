"""Tiny ControlNets for the tests (random weights, the tiny UNet's blocks) and diffusers' ControlNet inpaint
pipeline around the conftest checkpoints."""
from __future__ import annotations

import numpy as np

from pictures import sample_image, sample_mask

SIZE = dict(height=104, width=160)  # 13x20 latents: 13 is not divisible by the tiny UNet's 4x
KINDS = ("inpaint", "plain")


def build_controlnet(seed: int, conditioning_channels: int = 3, **extra):
    """A ControlNet of the tiny UNet's architecture (models.SIZES["tiny"]). Its zero-initialised output
    convolutions get random weights too, or every residual would be zero and parity would prove nothing."""
    import torch
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    net = ControlNetModel(
        in_channels=4, conditioning_channels=conditioning_channels, block_out_channels=(16, 32, 32),
        layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
        conditioning_embedding_out_channels=(8, 8, 16, 16), **extra,
    )
    return randomised_outputs(net)


def randomised_outputs(net):
    """The ControlNet with its zero-initialised output convolutions given random weights, in eval mode."""
    import torch

    zeroed = [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]
    with torch.no_grad():
        for module in zeroed:
            for p in module.parameters():
                p.normal_(0, 0.2)
    return net.eval()


def save_controlnets(root) -> dict:
    """{"inpaint": folder, "plain": folder}; the inpaint one's folder name says so (export reads the kind from it)."""
    folders = {}
    for i, kind in enumerate(KINDS):
        folders[kind] = root / f"tiny-controlnet-{kind}"
        build_controlnet(20 + i).save_pretrained(folders[kind])
    return folders


def controlnet_pipeline(pipe, nets):
    """diffusers' StableDiffusionControlNetInpaintPipeline sharing `pipe`'s components."""
    from diffusers import StableDiffusionControlNetInpaintPipeline

    control = StableDiffusionControlNetInpaintPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        controlnet=nets if len(nets) > 1 else nets[0], scheduler=pipe.scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    control.set_progress_bar_config(disable=True)
    # the checkpoint's scheduler config, not whatever scheduler an earlier test left on the shared pipe
    control.checkpoint_scheduler_config = getattr(pipe, "checkpoint_scheduler_config", pipe.scheduler.config)
    return control


def make_inpaint_condition(image, mask):
    """The inpainting guide's helper: the picture in [0, 1], masked pixels at -1, as a (1, 3, H, W) tensor."""
    import torch

    pixels = np.asarray(image.convert("RGB"), np.float32) / 255.0
    pixels[np.asarray(mask.convert("L"), np.float32) / 255.0 > 0.5] = -1.0
    return torch.from_numpy(pixels.transpose(2, 0, 1)[None].copy())


def edge_picture(width: int = 160, height: int = 104, seed: int = 3):
    """A canny-like control picture: white lines on black."""
    from PIL import ImageFilter

    return sample_image(width, height, seed).convert("L").filter(ImageFilter.FIND_EDGES).point(
        lambda v: 255 if v > 12 else 0).convert("RGB")


def inputs(width: int = 160, height: int = 104):
    return sample_image(width, height), sample_mask(width, height)


def controlnet_engines(checkpoints, root) -> dict:
    """{9: engine with [inpaint, plain] ControlNets, 4: the same, "single": 9-channel with the plain one only},
    exported into root, with the ControlNet folders under "folders"."""
    from inpaintrt.export.controlnet import load_controlnet
    from inpaintrt.export.exporter import export_engine
    from inpaintrt.export.loading import load_pipeline

    folders = save_controlnets(root)
    both = [str(folders["inpaint"]), str(folders["plain"])]
    plans = {9: both, 4: both, "single": [str(folders["plain"])]}
    engines = {key: export_engine(load_pipeline(str(checkpoints[9 if key == "single" else key])), root / f"cn-{key}",
                                  log=lambda *_: None, controlnets=[load_controlnet(s) for s in sources])
               for key, sources in plans.items()}
    return {"folders": folders, "engines": engines}


def build_sdxl_controlnet(seed: int, conditioning_channels: int = 3):
    """An SDXL ControlNet of the tiny SDXL UNet's architecture (random_models_sdxl.SDXL_SIZES["tiny"]): it also
    conditions on text_embeds and time_ids ("text_time"). Output convolutions randomised as above."""
    import torch
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    net = ControlNetModel(
        in_channels=4, conditioning_channels=conditioning_channels, block_out_channels=(16, 32, 32),
        layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        transformer_layers_per_block=(1, 1, 2), attention_head_dim=(2, 4, 4), use_linear_projection=True,
        cross_attention_dim=80, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 48, norm_num_groups=8,
        conditioning_embedding_out_channels=(8, 8, 16, 16),
    )
    return randomised_outputs(net)


def sdxl_controlnet_pipeline(pipe, nets):
    """diffusers' StableDiffusionXLControlNetInpaintPipeline sharing the SDXL `pipe`'s components."""
    from diffusers import StableDiffusionXLControlNetInpaintPipeline

    control = StableDiffusionXLControlNetInpaintPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, text_encoder_2=pipe.text_encoder_2, tokenizer=pipe.tokenizer,
        tokenizer_2=pipe.tokenizer_2, unet=pipe.unet, controlnet=nets if len(nets) > 1 else nets[0],
        scheduler=pipe.scheduler, requires_aesthetics_score=pipe.config.requires_aesthetics_score,
        force_zeros_for_empty_prompt=pipe.config.force_zeros_for_empty_prompt, add_watermarker=False)
    control.set_progress_bar_config(disable=True)
    control.checkpoint_scheduler_config = getattr(pipe, "checkpoint_scheduler_config", pipe.scheduler.config)
    return control


def check_against_diffusers(caught: dict, got, expected, label: str) -> None:
    """Final latents (caught on both sides, relative) and the np image (absolute) within 1e-3 of diffusers'."""
    from parity import record

    assert caught["ours"].shape == caught["theirs"].shape
    latent_error = np.abs(caught["ours"] - caught["theirs"]).max() / np.abs(caught["theirs"]).max()
    assert record(f"{label} latents, max abs diff / max abs", latent_error) <= 1e-3
    assert got.shape == expected.shape and got.dtype == np.float32
    assert record(f"{label} image (np, [0, 1]), max abs diff", np.abs(got - expected).max()) <= 1e-3


def run_fake_plans_with_control(fp16_engine, tmp_path, monkeypatch, guess: bool) -> None:
    """Plans built by inpaint-build-plans' code (the fake TensorRT of tests/support/trt_fakes.py) for two ControlNets and
    the residual-input UNet run within fp16 error of ONNX Runtime's fp32 run, and the ControlNets steer."""
    import shutil

    from inpaintrt import Engine
    from inpaintrt.engine.manifest import read_manifest
    from inpaintrt.export.trt_build import rebuild_plans
    from trt_fakes import install

    root = tmp_path / "engine"
    shutil.copytree(fp16_engine, root)
    install(monkeypatch, "11.x")
    rebuild_plans(root, ((64, 96),), 2, timing_cache=tmp_path / "cache", log=lambda *_: None)
    manifest = read_manifest(root)
    assert sorted(manifest["tensorrt"]["plans"]) == sorted(manifest["components"])
    picture, mask = sample_image(96, 64), sample_mask(96, 64)
    args = dict(prompt="a bench", num_inference_steps=3, height=64, width=96, output_type="np", progress=False,
                generator=2, control_image=[None, edge_picture(96, 64)], controlnet_conditioning_scale=[1.0, 0.7],
                guess_mode=guess)
    reference = Engine.load(root, backend="ort-cpu").inpaint(picture, mask, **args).images
    engine = Engine.load(root)
    assert engine.backend == "tensorrt"
    got = engine.inpaint(picture, mask, **args).images
    assert 0 < np.abs(got - reference).max() < 0.02
    free = engine.inpaint(picture, mask, **dict(args, control_image=None, controlnet_conditioning_scale=0.0)).images
    assert np.abs(free - got).max() > 0.01  # the ControlNets' plans did steer
