"""ControlNets at export: load them, one spec each, and the UNet variant that takes their residuals.

With `--controlnet`, the engine's "unet" component takes the ControlNets' down-block residuals and
mid-block residual as extra inputs (added to its own, as diffusers' `down_block_additional_residuals`
/ `mid_block_additional_residual` do; zeros give the plain UNet, so one graph serves calls with and
without control), and each ControlNet becomes a component "controlnet_<i>" whose outputs carry the
same names. SD 1.x/2.x and SDXL share this path: an SDXL ControlNet and the UNet also take the family's
added inputs (`text_embeds`, `time_ids`). Without `--controlnet` nothing here runs and the engine is what it
always was.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..runtime.control import residual_size
from .loading import SINGLE_FILE_SUFFIXES, CheckpointError
from .specs import ComponentSpec, TensorSpec, is_sdxl

KINDS = ("inpaint", "plain")  # inpaint: conditioned on the picture with masked pixels at -1 (control_v11p_sd15_inpaint)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class ControlNetSource:
    source: str  # hub id, diffusers folder or single file
    kind: str  # "inpaint" or "plain"
    model: object  # diffusers ControlNetModel, fp32, eval


def parse_controlnet_argument(text: str) -> tuple[str, str]:
    """`--controlnet [inpaint=|plain=]SOURCE` -> (source, kind); without a prefix the kind is "inpaint" when the
    source's name says so (lllyasviel/control_v11p_sd15_inpaint), else "plain"."""
    prefix, sep, rest = text.partition("=")
    if sep and prefix in KINDS:
        return rest, prefix
    return text, "inpaint" if "inpaint" in Path(text.rstrip("/")).name.lower() else "plain"


def load_controlnet(text: str) -> ControlNetSource:
    """A ControlNet from a hub id, a diffusers folder (config.json + weights) or a single .safetensors file."""
    from diffusers import ControlNetModel

    source, kind = parse_controlnet_argument(text)
    path = Path(source)
    try:
        if path.suffix in SINGLE_FILE_SUFFIXES:
            if not path.is_file():
                raise CheckpointError(f"--controlnet {source!r}: no such file")
            model = ControlNetModel.from_single_file(str(path), torch_dtype=torch.float32)
        elif path.is_dir():
            if not (path / "config.json").is_file():
                raise CheckpointError(f"--controlnet {source!r} is a folder without config.json; pass a ControlNet "
                                      "saved with save_pretrained, a single .safetensors file or a hub id")
            model = ControlNetModel.from_pretrained(str(path), torch_dtype=torch.float32)
        elif path.exists() or not _HUB_ID.match(source):
            raise CheckpointError(f"--controlnet {source!r} does not exist; pass a diffusers folder, a .safetensors "
                                  "file or a hub id like lllyasviel/control_v11p_sd15_inpaint")
        else:
            model = ControlNetModel.from_pretrained(source, torch_dtype=torch.float32)
    except OSError as e:
        raise CheckpointError(f"--controlnet {source!r} could not be loaded ({e})") from e
    return ControlNetSource(source, kind, model.eval())


def check_controlnet(pipe, net: ControlNetSource) -> None:
    """Refuse a ControlNet that does not fit the checkpoint, before anything is traced."""
    unet, c = pipe.unet.config, net.model.config
    name = f"--controlnet {net.source!r}"
    _check_family(pipe, c, name)
    if c.in_channels != pipe.vae.config.latent_channels:
        raise CheckpointError(f"{name} takes {c.in_channels}-channel samples; ControlNets see the "
                              f"{pipe.vae.config.latent_channels}-channel latents (also beside 9-channel UNets)")
    if c.cross_attention_dim != unet.cross_attention_dim:
        raise CheckpointError(f"{name} has cross_attention_dim {c.cross_attention_dim} but the UNet "
                              f"{unet.cross_attention_dim}: it was trained for another Stable Diffusion version")
    if tuple(c.block_out_channels) != tuple(unet.block_out_channels) or c.layers_per_block != unet.layers_per_block:
        raise CheckpointError(f"{name}'s blocks {tuple(c.block_out_channels)} x {c.layers_per_block} do not match the "
                              f"UNet's {tuple(unet.block_out_channels)} x {unet.layers_per_block}")
    embedding = 2 ** (len(c.conditioning_embedding_out_channels) - 1)
    vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    if embedding != vae_scale:
        raise CheckpointError(f"{name} downsamples its control image {embedding}x, the VAE {vae_scale}x")


def _check_family(pipe, c, name: str) -> None:
    """An SDXL ControlNet conditions on the UNet's added text_embeds/time_ids, an SD one on nothing more."""
    sdxl = is_sdxl(pipe)
    if bool(c.addition_embed_type) != sdxl:
        raise CheckpointError(f"{name} is {'an SDXL' if c.addition_embed_type else 'an SD 1.x/2.x'} ControlNet but the "
                              f"checkpoint is {'SDXL' if sdxl else 'SD 1.x/2.x'}; pass a ControlNet trained for it")
    if not sdxl:
        return
    unet = pipe.unet.config
    ours = (c.addition_embed_type, c.addition_time_embed_dim, c.projection_class_embeddings_input_dim)
    theirs = (unet.addition_embed_type, unet.addition_time_embed_dim, unet.projection_class_embeddings_input_dim)
    if ours != theirs:
        raise CheckpointError(f"{name}'s added conditioning (type, time embedding, input width) {ours} does not match "
                              f"the UNet's {theirs}: a refiner's aesthetic-score ids or another text encoder")


ADDED = ("text_embeds", "time_ids")  # SDXL's added conditions, fed to the UNet and its ControlNets alike


def _added(values) -> dict:
    return {"added_cond_kwargs": dict(zip(ADDED, values))} if values else {}


class _ControlNet(torch.nn.Module):
    """Residuals unscaled (conditioning_scale 1, no guess mode): the runtime scales them per step.
    SDXL's take the family's added inputs (text_embeds, time_ids) after the control image."""

    def __init__(self, controlnet):
        super().__init__()
        self.controlnet = controlnet

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, *added):
        down, mid = self.controlnet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                                    controlnet_cond=controlnet_cond, return_dict=False, **_added(added))
        return (*down, mid)


class _ControlledUNet(torch.nn.Module):
    """The UNet with the residuals as inputs after its own (SDXL: after text_embeds and time_ids)."""

    def __init__(self, unet, added_inputs: int):
        super().__init__()
        self.unet = unet
        self.added_inputs = added_inputs

    def forward(self, sample, timestep, encoder_hidden_states, *rest):
        added, residuals = rest[:self.added_inputs], rest[self.added_inputs:]
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                         down_block_additional_residuals=residuals[:-1], mid_block_additional_residual=residuals[-1],
                         return_dict=False, **_added(added))[0]


def residual_layout(net, added: tuple = ()) -> list[dict]:
    """[{name, channels, downsamplings}] of the ControlNet's outputs (the 12 down residuals and the mid one
    for SD 1.5), found by running it once at a 16x16 latent size; `added`: SDXL's (text_embeds, time_ids)."""
    scale = 2 ** (len(net.config.conditioning_embedding_out_channels) - 1)
    blocks = [*net.controlnet_down_blocks, net.controlnet_mid_block]
    shapes = {}  # read before global_pool_conditions averages them
    hooks = [b.register_forward_hook(lambda m, i, out, k=k: shapes.__setitem__(k, out.shape))
             for k, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            net(torch.zeros(1, net.config.in_channels, 16, 16), torch.tensor([1.0]),
                encoder_hidden_states=torch.zeros(1, 1, net.config.cross_attention_dim),
                controlnet_cond=torch.zeros(1, net.config.conditioning_channels, 16 * scale, 16 * scale),
                **_added(added))
    finally:
        for hook in hooks:
            hook.remove()
    names = [f"down_residual_{i}" for i in range(len(blocks) - 1)] + ["mid_residual"]
    return [{"name": name, "channels": int(shapes[k][1]), "downsamplings": int(round(math.log2(16 / shapes[k][2])))}
            for k, name in enumerate(names)]


def _residual_specs(layout: list[dict]) -> list[TensorSpec]:
    def axis(side: str, k: int) -> str:
        return f"latent_{side}" if k == 0 else f"latent_{side}_down{k}"

    return [TensorSpec(r["name"], "float32", ("batch", r["channels"], axis("height", r["downsamplings"]),
                                               axis("width", r["downsamplings"]))) for r in layout]


def with_controlnets(pipe, specs: list[ComponentSpec], nets: list[ControlNetSource],
                     optimize: bool) -> tuple[list[ComponentSpec], dict]:
    """The specs with the UNet replaced by its residual-input variant and one spec per ControlNet appended,
    and the manifest's `controlnets` / `controlnet_residuals` entries. The UNet's inputs after its text
    hidden states (SDXL's text_embeds and time_ids) are the family's: every ControlNet takes them too."""
    from diffusers.models.attention_processor import AttnProcessor

    for net in nets:
        check_controlnet(pipe, net)
        if optimize:
            net.model.set_attn_processor(AttnProcessor())  # the pattern ORT's fusion knows, as for the UNet
    unet = next(s for s in specs if s.name == "unet")
    family = unet.inputs[3:]
    layout = residual_layout(nets[0].model, tuple(torch.zeros(1, t.shape[1]) for t in family))
    residuals = _residual_specs(layout)
    gen = torch.Generator().manual_seed(1)

    def residual_inputs(b, h, w):
        return tuple(0.1 * torch.randn(b, r["channels"], residual_size(h, r["downsamplings"]),
                                       residual_size(w, r["downsamplings"]), generator=gen) for r in layout)

    controlled = ComponentSpec(
        "unet", _ControlledUNet(pipe.unet, len(family)), unet.inputs + residuals, unet.outputs,
        lambda b, h, w: unet.make_inputs(b, h, w) + residual_inputs(b, h, w), unet.check_shapes)
    scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    added = [_controlnet_spec(i, net, unet, family, residuals, scale, gen) for i, net in enumerate(nets)]
    entries = [{"component": f"controlnet_{i}", "source": net.source, "kind": net.kind,
                "conditioning_channels": int(net.model.config.conditioning_channels),
                "global_pool_conditions": bool(net.model.config.global_pool_conditions)}
               for i, net in enumerate(nets)]
    specs = [controlled if s.name == "unet" else s for s in specs] + added
    return specs, {"controlnets": entries, "controlnet_residuals": layout}


def _controlnet_spec(i: int, net: ControlNetSource, unet: ComponentSpec, family: list[TensorSpec],
                     residuals: list[TensorSpec], scale: int, gen) -> ComponentSpec:
    """controlnet_<i>: the UNet's sample (latent channels only), timestep, text and family inputs, plus the
    control image at pixel size; sample inputs taken from the UNet's so the text axis is exercised alike."""
    c = net.model.config
    cond = c.conditioning_channels

    def make_inputs(b, h, w):
        _, timestep, hidden, *extra = unet.make_inputs(b, h, w)
        return (torch.randn(b, c.in_channels, h, w, generator=gen), timestep, hidden,
                torch.rand(b, cond, h * scale, w * scale, generator=gen) * 2 - 1, *extra)

    return ComponentSpec(
        f"controlnet_{i}", _ControlNet(net.model),
        [TensorSpec("sample", "float32", ("batch", c.in_channels, "latent_height", "latent_width")),
         unet.inputs[1], unet.inputs[2], TensorSpec("controlnet_cond", "float32", ("batch", cond, "height", "width")),
         *family],
        _pooled(residuals) if c.global_pool_conditions else residuals, make_inputs, unet.check_shapes)


def _pooled(residuals: list[TensorSpec]) -> list[TensorSpec]:
    """global_pool_conditions ControlNets (shuffle) average their residuals over the picture."""
    return [TensorSpec(t.name, t.dtype, (*t.shape[:2], 1, 1)) for t in residuals]
