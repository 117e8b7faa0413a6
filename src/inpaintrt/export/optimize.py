"""Graph optimization at export for ONNX Runtime on the CPU.

ONNX Runtime's transformer optimizer fuses attention (MultiHeadAttention) and layer norms; the
fusions it offers only on CUDA (GroupNorm, NhwcConv, BiasSplitGelu, BiasAdd, packed QKV) are
turned off. The optimized graph is what the engine directory stores and what the parity check
runs, so loading does not redo the work.
"""
from __future__ import annotations

import contextlib
import io

# component -> onnxruntime.transformers model type
MODEL_TYPES = {"unet": "unet", "text_encoder": "clip", "text_encoder_2": "clip", "vae_encoder": "vae", "vae_decoder": "vae",
               # Kandinsky 2.2: the prior's transformer fuses as a BERT-like stack, the MoVQ as a VAE
               "prior_text_encoder": "clip", "prior": "bert", "movq_encoder": "vae", "movq_decoder": "vae",
               "prior_image_encoder": "clip",
               # erasers: convolutions only; the UNet's fusion set finds nothing to fuse there and changes nothing
               "eraser": "unet",
               # Segment Anything: the "vit" and "bert" fusion sets change its outputs (relative positions, the
               # two-way attention; the export's parity check refuses them), the UNet's set keeps them exact
               "sam_encoder": "unet", "sam_decoder": "unet",
               "clipseg": "clip"}  # CLIPSeg: CLIP's two encoders and a small post-norm decoder stack
CUDA_ONLY = ("enable_nhwc_conv", "enable_group_norm", "enable_skip_group_norm", "enable_bias_splitgelu",
             "enable_packed_qkv", "enable_packed_kv", "enable_bias_add")


def optimize_for_cpu(component: str, model):
    """The optimized ModelProto and the fused-operator counts."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_by_fusion

    kind = MODEL_TYPES["unet" if component.startswith("controlnet_") else component]  # a ControlNet is half a UNet
    options = FusionOptions(kind)
    for name in CUDA_ONLY:
        setattr(options, name, False)
    if kind == "vae":
        options.enable_attention = False  # its VAE attention fusion fails on these graphs (onnxruntime 1.31)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its progress bars
        optimized = optimize_by_fusion(model, model_type=kind, optimization_options=options)
    fused = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
    return optimized.model, fused


def classic_attention(pipe) -> None:
    """Use diffusers' plain attention processor: its exported pattern is the one ORT's fusion knows
    (the SDPA export is not fused). The arithmetic is the same; the parity check confirms it."""
    from diffusers.models.attention_processor import AttnProcessor

    pipe.unet.set_attn_processor(AttnProcessor())
