"""One spec per exported component: its torch wrapper, tensor names, dynamic axes and sample inputs.

The spec is the single place that knows a component's interface; export, the parity check and
the manifest all read it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


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


class _UNet(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


class _VaeEncoder(torch.nn.Module):
    """Returns the latent distribution's moments; the runtime draws the sample (DESIGN.md §4)."""

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


def component_specs(pipe) -> list[ComponentSpec]:
    unet, vae, text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
    seq = pipe.tokenizer.model_max_length
    hidden = text_encoder.config.hidden_size
    vocab = text_encoder.config.vocab_size
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

    return [
        ComponentSpec(
            "text_encoder",
            _TextEncoder(text_encoder),
            [TensorSpec("input_ids", "int64", ("batch", seq))],
            [TensorSpec("last_hidden_state", "float32", ("batch", seq, hidden))],
            lambda b, h, w: (torch.randint(0, vocab, (b, seq), generator=gen),),
            [(1, 0, 0), (3, 0, 0)],
        ),
        ComponentSpec(
            "unet",
            _UNet(unet),
            [
                TensorSpec("sample", "float32", ("batch", in_ch, "latent_height", "latent_width")),
                TensorSpec("timestep", "float32", ("batch",)),
                TensorSpec("encoder_hidden_states", "float32", ("batch", seq, hidden)),
            ],
            [TensorSpec("noise_pred", "float32", ("batch", lat_ch, "latent_height", "latent_width"))],
            lambda b, h, w: (randn(b, in_ch, h, w), torch.rand(b, generator=gen) * 999, randn(b, seq, hidden)),
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
