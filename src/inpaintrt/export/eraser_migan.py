"""MI-GAN's inference generator (Picsart-AI-Research/MI-GAN, lib/model_zoo/migan_inference.py) in torch, its
checkpoint loader and its ONNX export.

State-dict keys are the official `.pt` files' (migan_256_places2.pt, migan_512_places2.pt, ...):
`encoder.b{res}.fromrgb.*`, `encoder.b{r}.conv{1,2}.conv{1,2}.*`, `encoder.b{r}.conv2.downsample.filter.weight`,
`synthesis.b{r}.conv{1,2}.{noise_const,noise_strength}`, `synthesis.b{r}.conv1.upsample.{filter_const,filter.weight}`,
`synthesis.b{r}.torgb.*`, `synthesis.b{r}.upsample.*`. The resolution is the top encoder block's `r`; the
channel widths are read from the weights too (official: min(32768 // r, 512)), so a tiny copy loads the same way.
Weights from before MI-GAN's 2023-10-22 change (`upsample.insert_zeros.weight` instead of `filter_const`) are
refused: the project republished its weights in the current layout.

The generator works at its resolution only (its noise and zero-insertion constants are res x res). ONNX graph
(MiganGraph): inputs `image` (B,3,R,R) in [0,1] and `mask` (B,1,R,R), 1 = hole (binary), as every eraser's; inside,
MI-GAN's own cat([known - 0.5, picture * known]) with the picture in [-1,1]. Output `output` (B,3,R,R), nominally
[0,1] but not clamped (the engine clamps, then composites).
"""
from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .eraser_lama import OPSET, strict_load

EXPECTED_MIGAN = ("an MI-GAN inference generator state dict (migan_256_*.pt / migan_512_*.pt: encoder.b<res>.*, "
                  "synthesis.b<res>.*), as published after 2023-10-22")
_SQRT2 = math.sqrt(2.0)


def _lrelu_agc(x):
    """MI-GAN's activation: leaky relu (0.2), gain sqrt(2), clamp at +-256."""
    return (F.leaky_relu(x, 0.2) * _SQRT2).clamp(-256.0, 256.0)


def _binomial(gain: float) -> torch.Tensor:
    f = torch.tensor([1.0, 3.0, 3.0, 1.0])
    f = torch.outer(f, f)
    return f / f.sum() * gain


class Downsample2d(nn.Module):
    """Depthwise 4x4 binomial blur with stride 2 (the filter is a checkpoint weight)."""

    def __init__(self, channels: int):
        super().__init__()
        self.filter = nn.Conv2d(channels, channels, 4, stride=2, padding=1, groups=channels, bias=False)
        with torch.no_grad():
            self.filter.weight.copy_(_binomial(1.0).expand_as(self.filter.weight))

    def forward(self, x):
        return self.filter(x)


class Upsample2d(nn.Module):
    """x2 by zero insertion (nearest upsample times the 1,0/0,0 pattern `filter_const`) then a 4x4 blur."""

    def __init__(self, channels: int, resolution: int):
        super().__init__()
        self.register_buffer("filter_const", torch.tensor([[1.0, 0.0], [0.0, 0.0]]).repeat(
            1, 1, resolution // 2, resolution // 2))
        self.filter = nn.Conv2d(channels, channels, 4, groups=channels, bias=False)
        with torch.no_grad():
            self.filter.weight.copy_(_binomial(4.0).expand_as(self.filter.weight))

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2.0, mode="nearest") * self.filter_const
        return self.filter(F.pad(x, (2, 1, 2, 1)))


class SeparableConv2d(nn.Module):
    """Depthwise 3x3 (+bias) -> act -> [down] -> 1x1 -> [up] -> [+noise] -> act."""

    def __init__(self, cin, cout, resolution=None, down=False, up=False, noise=False):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cin, 3, padding=1, groups=cin)
        self.conv2 = nn.Conv2d(cin, cout, 1, bias=False)
        self.downsample = Downsample2d(cin) if down else None
        self.upsample = Upsample2d(cout, resolution) if up else None
        self.use_noise = noise
        if noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))

    def forward(self, x):
        x = _lrelu_agc(self.conv1(x))
        if self.downsample is not None:
            x = self.downsample(x)
        x = self.conv2(x)
        if self.upsample is not None:
            x = self.upsample(x)
        if self.use_noise:
            x = x + self.noise_const * self.noise_strength
        return _lrelu_agc(x)


class EncoderBlock(nn.Module):
    def __init__(self, cin, cout, rgb_in=None, down=True):
        super().__init__()
        self.fromrgb = nn.Conv2d(rgb_in, cin, 1) if rgb_in else None
        self.conv1 = SeparableConv2d(cin, cin)
        self.conv2 = SeparableConv2d(cin, cout, down=down)

    def forward(self, x, img):
        if self.fromrgb is not None:
            y = _lrelu_agc(self.fromrgb(img))
            x = y if x is None else x + y
        feat = self.conv1(x)
        return self.conv2(feat), feat


class SynthesisBlockFirst(nn.Module):
    def __init__(self, ch, rgb_out=3):
        super().__init__()
        self.conv1 = SeparableConv2d(ch, ch)
        self.conv2 = SeparableConv2d(ch, ch)
        self.torgb = nn.Conv2d(ch, rgb_out, 1)

    def forward(self, x, feat):
        x = self.conv2(self.conv1(x) + feat)
        return x, self.torgb(x)


class SynthesisBlock(nn.Module):
    def __init__(self, cin, cout, resolution, rgb_out=3):
        super().__init__()
        self.conv1 = SeparableConv2d(cin, cout, resolution, up=True, noise=True)
        self.conv2 = SeparableConv2d(cout, cout, resolution, noise=True)
        self.torgb = nn.Conv2d(cout, rgb_out, 1)
        self.upsample = Upsample2d(rgb_out, resolution)

    def forward(self, x, feat, img):
        x = self.conv2(self.conv1(x) + feat)
        return x, self.upsample(img) + self.torgb(x)


def official_channels(resolution: int, ch_base: int = 32768, ch_max: int = 512) -> dict[int, int]:
    return {2 ** i: min(ch_base // 2 ** i, ch_max) for i in range(2, int(math.log2(resolution)) + 1)}


class Encoder(nn.Module):
    def __init__(self, resolution: int, channels: Mapping[int, int], ic_n: int = 4):
        super().__init__()
        self.levels = [2 ** i for i in range(int(math.log2(resolution)), 2, -1)]  # res, res/2, ..., 8
        for i, r in enumerate(self.levels):
            setattr(self, f"b{r}", EncoderBlock(channels[r], channels[r // 2], ic_n if i == 0 else None))
        self.b4 = EncoderBlock(channels[4], channels[4], down=False)

    def forward(self, img):
        x, feats = None, {}
        for r in self.levels + [4]:
            x, feats[r] = getattr(self, f"b{r}")(x, img)
        return x, feats


class Synthesis(nn.Module):
    def __init__(self, resolution: int, channels: Mapping[int, int], rgb_n: int = 3):
        super().__init__()
        self.levels = [2 ** i for i in range(3, int(math.log2(resolution)) + 1)]  # 8, 16, ..., res
        self.b4 = SynthesisBlockFirst(channels[4], rgb_n)
        for r in self.levels:
            setattr(self, f"b{r}", SynthesisBlock(channels[r // 2], channels[r], r, rgb_n))

    def forward(self, x, feats):
        x, img = self.b4(x, feats[4])
        for r in self.levels:
            x, img = getattr(self, f"b{r}")(x, feats[r], img)
        return img


class MiganGenerator(nn.Module):
    """MI-GAN's generator. `channels` maps each resolution 4..R to its width (default: the official widths)."""

    def __init__(self, resolution: int = 256, channels: Mapping[int, int] | None = None):
        super().__init__()
        if resolution < 8 or 2 ** int(math.log2(resolution)) != resolution:
            raise ValueError(f"MI-GAN's resolution is a power of two >= 8, not {resolution}")
        channels = dict(channels or official_channels(resolution))
        self.resolution = resolution
        self.synthesis = Synthesis(resolution, channels)
        self.encoder = Encoder(resolution, channels)

    def forward(self, x):
        """x: (B,4,R,R) = cat([mask - 0.5, image * mask]), image in [-1,1], mask 1 = known."""
        x, feats = self.encoder(x)
        return self.synthesis(x, feats)


# --- loading -------------------------------------------------------------------------------------------------

def migan_layout(state_dict: Mapping) -> tuple[int, dict[int, int]]:
    """(resolution, widths) read from the keys: the top encoder block carries `fromrgb`; each encoder block's
    depthwise conv is as wide as its level."""
    tops = [int(m.group(1)) for k in state_dict if (m := re.fullmatch(r"encoder\.b(\d+)\.fromrgb\.weight", k))]
    if len(tops) != 1:
        found = sorted({k.split(".")[1] for k in state_dict if k.startswith(("encoder.", "synthesis."))})
        raise ValueError(f"cannot tell the MI-GAN resolution: {len(tops)} encoder.b<res>.fromrgb.weight keys "
                         f"(blocks seen: {found[:8]}). Expected {EXPECTED_MIGAN}")
    resolution = tops[0]
    channels = {}
    for i in range(2, int(math.log2(resolution)) + 1):
        key = f"encoder.b{2 ** i}.conv1.conv1.weight"
        if key not in state_dict:
            raise ValueError(f"these weights do not fit MI-GAN's generator at {resolution}: missing keys: 1 ({key}). "
                             f"Expected {EXPECTED_MIGAN}")
        channels[2 ** i] = int(state_dict[key].shape[0])
    return resolution, channels


def load_migan_state_dict(state_dict: Mapping) -> MiganGenerator:
    """A MiganGenerator built at the checkpoint's resolution and widths, loaded strictly, in eval mode."""
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]
    resolution, channels = migan_layout(state_dict)
    module = MiganGenerator(resolution, channels)
    return strict_load(module, state_dict, f"MI-GAN's generator at {resolution}", EXPECTED_MIGAN).eval()


# --- export --------------------------------------------------------------------------------------------------

class MiganGraph(nn.Module):
    """What the engine directory stores, in every eraser's terms: image (B,3,R,R) in [0,1] and mask (B,1,R,R),
    1 = hole -> (B,3,R,R) in [0,1]. Inside, MI-GAN's own: cat([known - 0.5, picture * known]) with the picture
    in [-1,1] and known = 1 - mask, its output mapped back from [-1,1]."""

    def __init__(self, generator: MiganGenerator):
        super().__init__()
        self.generator = generator

    def forward(self, image, mask):
        known = 1 - mask
        return self.generator(torch.cat([known - 0.5, (image * 2 - 1) * known], dim=1)) * 0.5 + 0.5


def export_migan_onnx(module: MiganGenerator, path, opset: int = OPSET) -> Path:
    """Write the generator as ONNX (inputs image, mask; output output; batch dynamic, R x R fixed)."""
    path = Path(path)
    r = module.resolution
    image, mask = torch.rand(1, 3, r, r), (torch.rand(1, 1, r, r) > 0.5).float()
    axes = {0: "batch"}
    was_training = module.training
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings
        torch.onnx.export(MiganGraph(module.eval()), (image, mask), str(path), input_names=["image", "mask"],
                          output_names=["output"], dynamic_axes={"image": axes, "mask": axes, "output": axes},
                          opset_version=opset, dynamo=False, do_constant_folding=True)
    module.train(was_training)
    return path
