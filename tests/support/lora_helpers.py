"""Tiny LoRA files made with peft on the tiny checkpoints, in diffusers' and kohya's formats, and diffusers'
own LoRA loading as the reference (load_lora_weights + set_adapters + fuse_lora)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.2"]
CONV_TARGETS = ["conv1", "conv2"]  # LoCon: the resnets' 3x3 convolutions
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1"]


def make_lora(checkpoint: Path, path: Path, seed: int, text: bool = True, conv: bool = False, rank: int = 4,
              alpha: float = 8.0) -> Path:
    """A diffusers-format LoRA (pipe.save_lora_weights) with random non-zero up (B) weights; peft
    initialises B to zero, which would make the LoRA do nothing."""
    import torch
    from peft import LoraConfig, inject_adapter_in_model

    from inpaintrt.export.loading import load_pipeline

    pipe = load_pipeline(str(checkpoint))
    torch.manual_seed(seed)
    layers, metadata = {}, {}
    parts = [("unet", pipe.unet, UNET_TARGETS + (CONV_TARGETS if conv else []))]
    if text:
        parts += [(name, getattr(pipe, name), TEXT_TARGETS) for name in ("text_encoder", "text_encoder_2")
                  if getattr(pipe, name, None) is not None]
    for name, module, targets in parts:
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets)
        inject_adapter_in_model(config, module)  # peft itself: transformers' wrapper wants a newer peft
        state = {}
        with torch.no_grad():
            for key, p in module.named_parameters():
                if ".lora_" in key:
                    p.copy_(torch.randn_like(p) * 0.1)  # a clear change that keeps the model tame
                    state[key.replace(".default.", ".")] = p.detach().clone()
        layers[f"{name}_lora_layers"] = state
        metadata[f"{name}_lora_adapter_metadata"] = config.to_dict()
    type(pipe).save_lora_weights(path.parent, weight_name=path.name, **layers, **metadata)
    return path


def to_kohya(source: Path, path: Path, alpha: float = 2.0, ldm: bool = False, per_block: int = 1) -> Path:
    """The same LoRA in kohya's key layout (`lora_unet_…` / `lora_te…_`, `.alpha`); `ldm`: the UNet's
    blocks in LDM names, as kohya writes SDXL files (per_block: the UNet's layers_per_block)."""
    from safetensors.numpy import load_file, save_file

    from inpaintrt.engine.lora_keys import ldm_name

    tensors = load_file(str(source))
    unet = sorted({k.split(".lora_")[0].removeprefix("unet.") for k in tensors if k.startswith("unet.")})
    out, sdxl = {}, any(k.startswith("text_encoder_2.") for k in tensors)
    for key, value in tensors.items():
        prefix, _, rest = key.partition(".")
        module, _, role = rest.partition(".lora_")
        if prefix == "unet":
            if ldm:
                module = ldm_name(module, unet, per_block) or module
            name = "lora_unet_" + module.replace(".", "_")
        else:
            te = {"text_encoder": "lora_te1_" if sdxl else "lora_te_", "text_encoder_2": "lora_te2_"}[prefix]
            name = te + "text_model_" + module.removeprefix("text_model.").replace(".", "_")
        out[f"{name}.{'lora_down' if role.startswith('A') else 'lora_up'}.weight"] = value
        out[f"{name}.alpha"] = np.array(alpha, np.float32)
    save_file(out, str(path))
    return path


def diffusers_with_loras(checkpoint: Path, loras: list[tuple[Path, float]]):
    """The diffusers pipeline with the LoRAs fused the way diffusers users do it."""
    from inpaintrt.export.loading import load_pipeline

    pipe = load_pipeline(str(checkpoint))
    names = []
    for i, (path, _) in enumerate(loras):
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=f"l{i}")
        names.append(f"l{i}")
    pipe.set_adapters(names, adapter_weights=[scale for _, scale in loras])
    pipe.fuse_lora(adapter_names=names)
    return pipe
