"""Write a diffusers pipeline as an original (CompVis/ldm) single-file checkpoint, for testing the
single-file loading path on weights we made ourselves. The inverse of diffusers' conversion."""
from __future__ import annotations

from pathlib import Path

RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
          ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]
VAE_ATTENTION = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def _unet_prefixes(config) -> list[tuple[str, str, list]]:
    """(diffusers prefix, ldm prefix, inner renames) for every UNet module."""
    lpb, n = config.layers_per_block, len(config.block_out_channels)
    out = [("time_embedding.linear_1", "time_embed.0", []), ("time_embedding.linear_2", "time_embed.2", []),
           ("conv_in", "input_blocks.0.0", []), ("conv_norm_out", "out.0", []), ("conv_out", "out.2", []),
           ("mid_block.resnets.0", "middle_block.0", RESNET), ("mid_block.attentions.0", "middle_block.1", []),
           ("mid_block.resnets.1", "middle_block.2", RESNET)]
    for i in range(n):
        for j in range(lpb):
            block = 1 + i * (lpb + 1) + j
            out += [(f"down_blocks.{i}.resnets.{j}", f"input_blocks.{block}.0", RESNET),
                    (f"down_blocks.{i}.attentions.{j}", f"input_blocks.{block}.1", [])]
        if i < n - 1:
            out.append((f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{(i + 1) * (lpb + 1)}.0.op", []))
        has_attention = config.up_block_types[i].startswith("CrossAttn")
        for j in range(lpb + 1):
            block = i * (lpb + 1) + j
            out += [(f"up_blocks.{i}.resnets.{j}", f"output_blocks.{block}.0", RESNET),
                    (f"up_blocks.{i}.attentions.{j}", f"output_blocks.{block}.1", [])]
        if i < n - 1:
            out.append((f"up_blocks.{i}.upsamplers.0", f"output_blocks.{i * (lpb + 1) + lpb}.{2 if has_attention else 1}", []))
    return out


def _vae_prefixes(config) -> list[tuple[str, str, list]]:
    n, lpb = len(config.block_out_channels), config.layers_per_block
    resnet = [("conv_shortcut", "nin_shortcut")]
    out = []
    for part in ("encoder", "decoder"):
        out += [(f"{part}.mid_block.resnets.0", f"{part}.mid.block_1", resnet),
                (f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1", VAE_ATTENTION),
                (f"{part}.mid_block.resnets.1", f"{part}.mid.block_2", resnet),
                (f"{part}.conv_norm_out", f"{part}.norm_out", [])]
    for i in range(n):
        for j in range(lpb):
            out.append((f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", resnet))
        out.append((f"encoder.down_blocks.{i}.downsamplers.0", f"encoder.down.{i}.downsample", []))
        for j in range(lpb + 1):
            out.append((f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{n - 1 - i}.block.{j}", resnet))
        out.append((f"decoder.up_blocks.{i}.upsamplers.0", f"decoder.up.{n - 1 - i}.upsample", []))
    return out


def _rename(state: dict, prefixes, ldm_root: str, reshape_attention: bool = False) -> dict:
    converted = {}
    for key, value in state.items():
        new = key
        for diff, ldm, inner in sorted(prefixes, key=lambda p: -len(p[0])):
            if key.startswith(diff + "."):
                rest = key[len(diff) + 1:]
                for a, b in inner:
                    if rest.startswith(a + "."):
                        rest = b + rest[len(a):]
                        if reshape_attention and value.ndim == 2:
                            value = value[:, :, None, None]  # ldm's VAE attention uses 1x1 convolutions
                        break
                new = f"{ldm}.{rest}"
                break
        converted[ldm_root + new] = value.contiguous()
    return converted


def save_single_file(pipe, path: Path) -> Path:
    from safetensors.torch import save_file

    state = {}
    state.update(_rename(pipe.unet.state_dict(), _unet_prefixes(pipe.unet.config), "model.diffusion_model."))
    state.update(_rename(pipe.vae.state_dict(), _vae_prefixes(pipe.vae.config), "first_stage_model.", True))
    for key, value in pipe.text_encoder.state_dict().items():  # transformers >= 5.6 drops the text_model level
        key = key if key.startswith("text_model.") else f"text_model.{key}"
        state[f"cond_stage_model.transformer.{key}"] = value.contiguous()
    save_file(state, str(path))
    return path


SDXL_ADDED = [("add_embedding.linear_1", "label_emb.0.0", []), ("add_embedding.linear_2", "label_emb.0.2", [])]
OPEN_CLIP_LAYER = [("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"),
                   ("self_attn.out_proj", "attn.out_proj")]


def _open_clip(encoder, prefix: str) -> dict:
    """A CLIPTextModelWithProjection in OpenCLIP's layout (SDXL's second encoder): fused q/k/v
    in_proj, resblocks, a transposed text_projection."""
    import torch

    state = {k.removeprefix("text_model."): v for k, v in encoder.state_dict().items()}
    out = {prefix + "positional_embedding": state.pop("embeddings.position_embedding.weight"),
           prefix + "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
           prefix + "text_projection": state.pop("text_projection.weight").T.contiguous()}
    for key in [k for k in state if k.startswith("final_layer_norm.")]:
        out[prefix + "ln_final." + key.split(".")[-1]] = state.pop(key)
    for i in range(encoder.config.num_hidden_layers):
        layer, block = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{block}attn.in_proj_{kind}"] = torch.cat(
                [state.pop(f"{layer}self_attn.{p}_proj.{kind}") for p in "qkv"]).contiguous()
            for diff, ldm in OPEN_CLIP_LAYER:
                out[f"{block}{ldm}.{kind}"] = state.pop(f"{layer}{diff}.{kind}").contiguous()
    state.pop("embeddings.position_ids", None)
    assert not state, f"unconverted text encoder weights: {sorted(state)}"
    return out


def save_single_file_sdxl(pipe, path: Path) -> Path:
    """SDXL's original single-file layout ("conditioner.embedders.*"); a refiner's only encoder is embedder 0."""
    from safetensors.torch import save_file

    state = {}
    state.update(_rename(pipe.unet.state_dict(), _unet_prefixes(pipe.unet.config) + SDXL_ADDED,
                         "model.diffusion_model."))
    state.update(_rename(pipe.vae.state_dict(), _vae_prefixes(pipe.vae.config), "first_stage_model.", True))
    second = 0
    if pipe.text_encoder is not None:
        for key, value in pipe.text_encoder.state_dict().items():
            key = key if key.startswith("text_model.") else f"text_model.{key}"
            state[f"conditioner.embedders.0.transformer.{key}"] = value.contiguous()
        second = 1
    state.update(_open_clip(pipe.text_encoder_2, f"conditioner.embedders.{second}.model."))
    save_file(state, str(path))
    return path
