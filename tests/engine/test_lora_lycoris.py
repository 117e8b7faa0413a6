"""LoRA files as people download them: LyCORIS's LoHa, LoKr and DoRA, peft's DoRA and bias patches, full diffs,
integer alphas and fp16 / bf16 / fp32 tensors in one file, kohya and diffusers names, SD and SDXL.

For each: the weights the engine fuses in numpy equal the algorithm's own formula written in torch
(tests/support/lycoris_helpers.py), and the picture equals diffusers' pipeline run with those weights set by hand
(replayed noise, as tests/engine/test_lora.py does); each test also shows the file changes the picture. The same
formulas bake a file in at export (export/lora_map.py)."""
import json

import numpy as np
import pytest
import torch

from diffusers_runs import diffusers_inpaint
from parity import record
from pictures import sample_image, sample_mask
from inpaintrt import Engine
from inpaintrt.engine.lora import LoraError, fuse, open_loras
from inpaintrt.export.loading import load_pipeline
from lycoris_helpers import Builder, apply_deltas

SIZE = dict(height=104, width=160)
ARGS = dict(prompt="a red bench in a park", negative_prompt="blurry", num_inference_steps=3, output_type="np", **SIZE)
ATTN = "down_blocks.1.attentions.0.transformer_blocks.0"
MID = "mid_block.attentions.0.transformer_blocks.0"
TE = "encoder.layers.0"


def dtypes(b):
    """kohya LoRA / LoCon with integer, float16 and bf16 alphas, fp16 up and bf16 down weights, LoCon's Tucker core."""
    half, bf16, f32 = torch.float16, torch.bfloat16, torch.float32
    b.lora("unet", f"{ATTN}.attn1.to_q", alpha=8, alpha_dtype=torch.int64, dtypes=(half, bf16, f32))
    b.lora("unet", f"{ATTN}.ff.net.2", alpha=2, alpha_dtype=torch.int32, dtypes=(bf16, half, f32))
    b.lora("unet", "down_blocks.1.resnets.0.conv1", alpha=4.0, alpha_dtype=half, dtypes=(half, half, f32))
    b.lora("unet", "up_blocks.1.resnets.0.conv2", rank=3, alpha=6, alpha_dtype=torch.int16, mid=True,
           dtypes=(bf16, f32, half))
    b.lora("text_encoder", f"{TE}.self_attn.k_proj", alpha=16, alpha_dtype=torch.int64, dtypes=(bf16, bf16, f32))
    b.lora("text_encoder", f"{TE}.mlp.fc1", alpha=4.0, alpha_dtype=torch.float64)


def loha(b):
    b.loha("unet", f"{ATTN}.attn2.to_k")
    b.loha("unet", f"{MID}.ff.net.0.proj", rank=2, alpha=1.0)
    b.loha("unet", "down_blocks.1.resnets.0.conv2")  # a convolution, its factors flattened
    b.loha("unet", "up_blocks.1.resnets.1.conv1", tucker=True, rank=3)  # hada_t1 / hada_t2
    b.loha("text_encoder", f"{TE}.self_attn.q_proj")


def lokr(b):
    b.lokr("unet", f"{ATTN}.attn1.to_v", w1="full", w2="lowrank")
    b.lokr("unet", f"{MID}.attn1.to_out.0", w1="lowrank", w2="full", split=4)
    b.lokr("unet", "down_blocks.1.resnets.0.conv1", w1="full", w2="tucker")
    b.lokr("unet", "up_blocks.1.resnets.0.conv_shortcut", w1="lowrank", w2="lowrank", rank=1)
    b.lokr("unet", f"{MID}.ff.net.2", w1="full", w2="full", alpha=9.0)  # both full: scale 1, alpha unused
    b.lokr("text_encoder", f"{TE}.self_attn.out_proj", split=4)


def dora_lycoris(b):
    """kohya-named LoRA with LyCORIS's dora_scale, on the output axis (its default) and the input axis."""
    b.lora("unet", f"{ATTN}.attn1.to_k", dora="out")
    b.lora("unet", f"{MID}.ff.net.0.proj", dora="in")
    b.lora("unet", "down_blocks.1.resnets.0.conv2", dora="out")
    b.lora("unet", "up_blocks.1.resnets.1.conv1", dora="in")
    b.loha("unet", f"{MID}.attn2.to_q", dora="out")  # DoRA over LoHa, as LyCORIS allows
    b.lora("text_encoder", f"{TE}.mlp.fc2", dora="out")


def dora_peft(b):
    """diffusers / peft names: lora_A / lora_B / lora_magnitude_vector, alpha from the adapter metadata."""
    for module in (f"{ATTN}.attn2.to_v", f"{MID}.ff.net.2", "up_blocks.1.resnets.0.conv1", "down_blocks.1.attentions.0.proj_in"):
        b.lora("unet", module, naming="diffusers", dora="peft", alpha=8.0)
    b.lora("text_encoder", f"{TE}.self_attn.v_proj", naming="diffusers", dora="peft", alpha=2.0)


def full(b):
    for module in (f"{ATTN}.attn1.to_out.0", f"{MID}.attn2.to_k", "down_blocks.1.resnets.0.conv1",
                   "up_blocks.1.attentions.0.proj_out", "mid_block.resnets.0.time_emb_proj"):
        b.full("unet", module)
    # no diff_b here: the tiny CLIP's biases are all zeros, so the export cannot tell which layer a zero bias is
    b.full("text_encoder", f"{TE}.self_attn.q_proj", with_bias=False)


def bias(b):
    """peft's lora_bias (lora_B.bias, diffusers names) and the kohya-named lora_up.bias."""
    for module in (f"{ATTN}.ff.net.0.proj", f"{MID}.attn1.to_out.0", "up_blocks.1.resnets.1.conv2"):
        b.lora("unet", module, naming="diffusers", bias=True, alpha=8.0)
    b.lora("unet", "down_blocks.1.attentions.0.proj_out", bias=True)


CASES = {"dtypes": (9, dtypes, 0.8), "loha": (9, loha, 1.0), "lokr": (4, lokr, 0.9), "dora-lycoris": (9, dora_lycoris, 0.7),
         "dora-peft": (4, dora_peft, 0.6), "full": (9, full, 0.8), "bias": (4, bias, 1.0)}


def engine_run(engine_dir, files=(), seed=7):
    engine = Engine.load(engine_dir, backend="ort-cpu", loras=[(str(f), s) for f, s in files])
    return engine.inpaint(sample_image(160, 104), sample_mask(160, 104), scheduler="euler",
                          generator=np.random.default_rng(seed), progress=False, **ARGS).images


def diffusers_run(checkpoint, deltas, seed=7):
    pipe = load_pipeline(str(checkpoint))
    apply_deltas(pipe, deltas)
    return diffusers_inpaint(pipe, seed, "euler", image=sample_image(160, 104), mask_image=sample_mask(160, 104), **ARGS)


def check_fused(engine_dir, path, scale, expected):
    """The engine's numpy deltas against the torch formulas: the same layers, the same values."""
    manifest = json.loads((engine_dir / "manifest.json").read_text())
    got = fuse(engine_dir, manifest, open_loras([(path, scale)])).deltas
    assert set(got) == set(expected)
    for target, delta in expected.items():
        delta = delta.numpy()
        error = np.abs(got[target] - delta.reshape(got[target].shape)).max() / max(1.0, np.abs(delta).max())
        assert record("LyCORIS fused weights, max rel diff", error) <= 1e-5, target


def check_picture(checkpoint, engine_dir, path, scale, expected, seed=7):
    want = diffusers_run(checkpoint, expected, seed)
    got = engine_run(engine_dir, [(path, scale)], seed)
    assert got.shape == want.shape == (1, 104, 160, 3)
    assert record("LyCORIS image (np, [0, 1]), max abs diff", np.abs(got - want).max()) <= 1e-3
    assert np.abs(engine_run(engine_dir, seed=seed) - want).max() > 5e-2  # the file matters
    return got


@pytest.mark.parametrize("case", list(CASES))
def test_fused_weights_and_picture(checkpoints, engines, tmp_path, case):
    channels, build, scale = CASES[case]
    builder = Builder(load_pipeline(str(checkpoints[channels])), seed=len(case))
    build(builder)
    path = builder.save(tmp_path / f"{case}.safetensors")
    expected = builder.deltas(scale)
    check_fused(engines[channels], path, scale, expected)
    check_picture(checkpoints[channels], engines[channels], path, scale, expected)


def sdxl_file(b):
    """kohya's SDXL names (lora_te1_ / lora_te2_, LDM UNet blocks) with LoHa, LoKr, DoRA, diffs, int alpha, bf16."""
    b.loha("text_encoder", f"{TE}.self_attn.q_proj")
    b.lokr("text_encoder_2", f"{TE}.self_attn.k_proj", split=4)
    b.lora("text_encoder_2", f"{TE}.mlp.fc1", dora="out", alpha=4, alpha_dtype=torch.int64,
           dtypes=(torch.bfloat16, torch.float16, torch.float32))
    b.loha("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", tucker=False)
    b.lokr("unet", "up_blocks.0.resnets.0.conv1", w1="full", w2="tucker")
    b.full("unet", "mid_block.attentions.0.transformer_blocks.0.ff.net.2")
    b.lora("unet", "down_blocks.1.resnets.0.conv2", dora="in")


def test_sdxl(sdxl_checkpoints, sdxl_engines, tmp_path):
    builder = Builder(load_pipeline(str(sdxl_checkpoints["inpaint"])), seed=11)
    sdxl_file(builder)
    path = builder.save(tmp_path / "xl.safetensors")
    expected = builder.deltas(0.8)
    check_fused(sdxl_engines["inpaint"], path, 0.8, expected)
    check_picture(sdxl_checkpoints["inpaint"], sdxl_engines["inpaint"], path, 0.8, expected, seed=5)


def mixed(b):
    dtypes(b)
    b.loha("unet", f"{MID}.attn2.to_q", tucker=False)
    b.lokr("unet", "down_blocks.1.resnets.0.conv2", w1="lowrank", w2="tucker")
    b.lora("unet", f"{MID}.ff.net.0.proj", dora="out")
    b.full("unet", "up_blocks.1.attentions.0.proj_out")
    b.lora("unet", f"{ATTN}.attn1.to_out.0", naming="diffusers", bias=True)


def test_baked_at_export(checkpoints, engines, tmp_path):
    """`inpaint-export --lora` bakes the same formulas into the torch weights: the baked engine gives the load-time
    picture and diffusers' with the file fused by hand."""
    from inpaintrt.export.exporter import export_engine

    builder = Builder(load_pipeline(str(checkpoints[9])), seed=3)
    mixed(builder)
    path = builder.save(tmp_path / "mixed.safetensors")
    baked = export_engine(load_pipeline(str(checkpoints[9])), tmp_path / "baked", loras=[f"{path}:0.7"],
                          log=lambda *_: None)
    at_load = check_picture(checkpoints[9], engines[9], path, 0.7, builder.deltas(0.7))
    assert record("LyCORIS baked vs load-time image, max abs diff", np.abs(engine_run(baked) - at_load).max()) <= 1e-4


@pytest.fixture(scope="module")
def base(checkpoints, tmp_path_factory):
    """One good kohya LoHa + LoRA file to break, and its tensors."""
    builder = Builder(load_pipeline(str(checkpoints[9])), seed=1)
    builder.loha("unet", f"{ATTN}.attn1.to_q")
    builder.lora("unet", "down_blocks.1.resnets.0.conv1")
    return builder


def test_refused_by_name(engines, base, tmp_path):
    """What cannot be applied is a LoraError naming the key and the fix, never skipped."""
    from safetensors.torch import save_file

    loha = base.name("unet", f"{ATTN}.attn1.to_q", "kohya")
    conv = base.name("unet", "down_blocks.1.resnets.0.conv1", "kohya")
    cases = {
        "oft": ({f"{loha}.oft_blocks": torch.ones(4, 4, 4)}, f"{loha}.oft_blocks.*OFT"),
        "mixed": ({f"{loha}.lora_down.weight": torch.ones(4, 32)}, "mixes LoRA and LoHa"),
        "dora-shape": ({f"{conv}.dora_scale": torch.ones(5, 1, 1, 1)}, f"{conv}.dora_scale.*neither"),
        "no-bias": ({f"{loha}.diff_b": torch.ones(32)}, f"{loha}.diff_b.*has none"),
        "alpha": ({f"{conv}.alpha": torch.ones(2)}, f"{conv}.alpha holds 2 float32 values"),
        "int-weight": ({f"{conv}.lora_up.weight": torch.ones(32, 4, 1, 1, dtype=torch.int8)}, "I8|int8.*must be float"),
        "empty": ({f"{conv}.lora_down.weight": torch.ones(0, 32, 3, 3)}, "no values"),
        "inf": ({f"{loha}.hada_w2_b": torch.full((4, 32), float("inf"))}, f"{loha}.hada_w2_b has NaN or infinite"),
        "half-tucker": ({f"{loha}.hada_t1": torch.ones(4, 4)}, "only one of hada_t1"),
    }
    for name, (change, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file({**base.tensors, **change}, str(path))
        with pytest.raises(LoraError, match=message):
            Engine.load(engines[9], backend="ort-cpu", loras=[(path, 1.0)])
    lokr = base.name("unet", "down_blocks.1.resnets.0.conv1", "kohya")
    path = tmp_path / "lokr.safetensors"
    save_file({f"{lokr}.lokr_w1": torch.ones(3, 3), f"{lokr}.lokr_w2": torch.ones(11, 11, 3, 3)}, str(path))
    with pytest.raises(LoraError, match=f"{lokr}.lokr_w1 makes kron.*another model architecture"):
        Engine.load(engines[9], backend="ort-cpu", loras=[(path, 1.0)])
