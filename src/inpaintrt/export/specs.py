"""One spec per exported component: its torch wrapper, tensor names, dynamic axes and sample inputs.

The spec is the single place that knows a component's interface; export, the parity check and
the manifest all read it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..engine.plans import TEXT_AXIS


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple  # ints for fixed axes, strings for dynamic ones

    def as_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass
class ComponentSpec:
    name: str
    module: torch.nn.Module
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    # (batch, height, width) -> inputs; height/width are in the component's own input units
    make_inputs: Callable[[int, int, int], tuple]
    # shapes the parity check runs: the traced one first, then others the graph must also handle
    check_shapes: list[tuple[int, int, int]]

    @property
    def dynamic_axes(self) -> dict:
        return {
            t.name: {axis: dim for axis, dim in enumerate(t.shape) if isinstance(dim, str)}
            for t in self.inputs + self.outputs
        }


class _TextEncoder(torch.nn.Module):
    def __init__(self, text_encoder):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids):
        return self.text_encoder(input_ids, return_dict=False)[0]


class _SdxlTextEncoder(torch.nn.Module):
    """SDXL reads the penultimate layer's hidden states, plus the projected pooled output of the
    encoder that has a projection (CLIPTextModelWithProjection)."""

    def __init__(self, text_encoder):
        super().__init__()
        self.text_encoder = text_encoder
        self.pooled = hasattr(text_encoder, "text_projection")

    def forward(self, input_ids):
        out = self.text_encoder(input_ids, output_hidden_states=True)
        return (out.hidden_states[-2], out[0]) if self.pooled else out.hidden_states[-2]


class _UNet(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


class _SdxlUNet(_UNet):
    def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids):
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added,
                         return_dict=False)[0]


class _VaeEncoder(torch.nn.Module):
    """Returns the latent distribution's moments; the runtime draws the sample (docs/architecture.md, "Randomness")."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, image):
        dist = self.vae.encode(image).latent_dist
        return dist.mean, dist.logvar


class _VaeDecoder(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latent):
        return self.vae.decode(latent, return_dict=False)[0]


def unet_downsampling(unet) -> int:
    return 2 ** (len(unet.config.block_out_channels) - 1)


def is_sdxl(pipe) -> bool:
    return hasattr(pipe, "text_encoder_2")


def time_ids_length(pipe) -> int:
    """SDXL's added time ids: original size, crop corner and target size (6) or aesthetic score (5)."""
    return 5 if pipe.config.requires_aesthetics_score else 6


def component_specs(pipe) -> list[ComponentSpec]:
    unet, vae = pipe.unet, pipe.vae
    in_ch = unet.config.in_channels
    lat_ch = vae.config.latent_channels
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    # A latent size not divisible by the UNet's downsampling makes diffusers pass explicit upsample
    # sizes; tracing at such a size bakes that branch in, which is also exact at divisible sizes.
    f = unet_downsampling(unet)
    odd = (f + 1, 2 * f + 3)
    gen = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    texts = _text_encoder_specs(pipe, gen)
    seq = texts[-1].outputs[0].shape[1]
    hidden = sum(t.outputs[0].shape[2] for t in texts)  # SDXL concatenates both encoders' hidden states
    # the text axis is dynamic: a long prompt is several chunks of `seq` tokens, concatenated
    unet_inputs = [
        TensorSpec("sample", "float32", ("batch", in_ch, "latent_height", "latent_width")),
        TensorSpec("timestep", "float32", ("batch",)),
        TensorSpec("encoder_hidden_states", "float32", ("batch", TEXT_AXIS, hidden)),
    ]
    if is_sdxl(pipe):
        pooled = texts[-1].outputs[1].shape[1]
        ids = time_ids_length(pipe)
        unet_inputs += [TensorSpec("text_embeds", "float32", ("batch", pooled)),
                        TensorSpec("time_ids", "float32", ("batch", ids))]

    def unet_inputs_of(b, h, w):
        tokens = text_tokens(seq, b)
        common = (randn(b, in_ch, h, w), torch.rand(b, generator=gen) * 999, randn(b, tokens, hidden))
        if not is_sdxl(pipe):
            return common
        return common + (randn(b, pooled), torch.rand(b, ids, generator=gen) * 1024)

    return texts + [
        ComponentSpec(
            "unet",
            _SdxlUNet(unet) if is_sdxl(pipe) else _UNet(unet),
            unet_inputs,
            [TensorSpec("noise_pred", "float32", ("batch", lat_ch, "latent_height", "latent_width"))],
            unet_inputs_of,
            [(2, *odd), (1, 2 * f, 3 * f)],
        ),
        ComponentSpec(
            "vae_encoder",
            _VaeEncoder(vae),
            [TensorSpec("image", "float32", ("batch", 3, "height", "width"))],
            [
                TensorSpec("latent_mean", "float32", ("batch", lat_ch, "latent_height", "latent_width")),
                TensorSpec("latent_logvar", "float32", ("batch", lat_ch, "latent_height", "latent_width")),
            ],
            lambda b, h, w: (randn(b, 3, h, w).clamp(-1, 1),),
            [(1, scale * odd[0], scale * odd[1]), (2, scale * 2, scale * 3)],
        ),
        ComponentSpec(
            "vae_decoder",
            _VaeDecoder(vae),
            [TensorSpec("latent", "float32", ("batch", lat_ch, "latent_height", "latent_width"))],
            [TensorSpec("image", "float32", ("batch", 3, "height", "width"))],
            lambda b, h, w: (randn(b, lat_ch, h, w),),
            [(1, *odd), (2, 2, 3)],
        ),
    ]


def text_tokens(seq: int, batch: int) -> int:
    """The text length of a sample UNet input: one chunk, and two for batch 1 so that the export's parity
    check also runs a long prompt through the dynamic text axis."""
    return 2 * seq if batch == 1 else seq


def text_encoders(pipe) -> list[tuple[str, object, object]]:
    """(component name, text encoder, tokenizer) in the order their hidden states are concatenated;
    an SDXL refiner has only the second."""
    pairs = [("text_encoder", pipe.text_encoder, pipe.tokenizer)]
    if is_sdxl(pipe):
        pairs.append(("text_encoder_2", pipe.text_encoder_2, pipe.tokenizer_2))
    return [p for p in pairs if p[1] is not None]


def _text_encoder_specs(pipe, gen) -> list[ComponentSpec]:
    specs = []
    for name, encoder, tokenizer in text_encoders(pipe):
        seq, vocab = tokenizer.model_max_length, encoder.config.vocab_size
        hidden = encoder.config.hidden_size
        if is_sdxl(pipe):
            module = _SdxlTextEncoder(encoder)
            outputs = [TensorSpec("hidden_states", "float32", ("batch", seq, hidden))]
            if module.pooled:
                outputs.append(TensorSpec("text_embeds", "float32", ("batch", encoder.config.projection_dim)))
        else:
            module = _TextEncoder(encoder)
            outputs = [TensorSpec("last_hidden_state", "float32", ("batch", seq, hidden))]
        specs.append(ComponentSpec(
            name, module, [TensorSpec("input_ids", "int64", ("batch", seq))], outputs,
            lambda b, h, w, seq=seq, vocab=vocab: (torch.randint(0, vocab, (b, seq), generator=gen),),
            [(1, 0, 0), (3, 0, 0)],
        ))
    return specs
