"""big-lama's generator (LaMa, FFCResNetGenerator) in torch, its checkpoint loader and its ONNX export.

The module reproduces the generator that big-lama's config.yaml builds: reflect pad + 7x7 FFC (all local),
`n_downsampling` strided 3x3 FFCs (local; the last one splits its output 1/4 local, 3/4 global), `n_blocks`
FFC residual blocks with ratio 0.75 in and out, no local Fourier unit, transposed-conv upsampling, reflect pad
+ 7x7 conv + sigmoid. Its state-dict keys are the official checkpoint's `generator.model.*` with `generator.`
stripped (`model.1.ffc.convl2l.weight`, `model.5.conv1.ffc.convg2g.fu.conv_layer.weight`, ...).

The Fourier unit has two implementations of the same maths (`spectral=`): "fft" (torch.fft, the reference) and
"matmul" (cos/sin DFT matrices built from the input's shape, so the ONNX graph has no DFT op and keeps H and W
dynamic). The exported graph always uses "matmul".

ONNX graph (export_lama_onnx): inputs `image` (B,3,H,W) in [0,1] and `mask` (B,1,H,W), 1 = hole (binarise it
first, as LaMa does); the graph feeds the generator cat([image * (1 - mask), mask]). Output `output` (B,3,H,W) in
[0,1]: the raw prediction, not yet composited with the known pixels (LaMa's own pipeline composites
mask * output + (1 - mask) * image). H and W must be multiples of 2**n_downsampling (8 for big-lama).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn

OPSET = 17
SPECTRAL_MODES = ("fft", "matmul")
EXPECTED_LAMA = ("big-lama's best.ckpt (a Lightning checkpoint whose state_dict holds generator.model.*) "
                 "or that generator's own state dict (model.*)")


# --- the spectral transform as matmuls ---------------------------------------------------------------------

def _twiddles(rows, cols, size, like: torch.Tensor):
    """cos and sin of 2*pi*r*c/size for r < rows, c < cols. The product is reduced mod size in integers first:
    an angle of a few hundred thousand radians would lose most of its float32 digits."""
    r = torch.arange(rows, device=like.device)
    c = torch.arange(cols, device=like.device)
    angle = torch.remainder(r[:, None] * c[None, :], size).to(like.dtype) * (2 * math.pi / size)
    return torch.cos(angle), torch.sin(angle)


def rfft2_matmul(x: torch.Tensor):
    """torch.fft.rfftn(x, dim=(-2, -1), norm="ortho") as (real, imag), with matmuls only."""
    h, w = x.shape[-2], x.shape[-1]
    cos_w, sin_w = _twiddles(w, w // 2 + 1, w, x)  # (W, W//2+1): real input, half spectrum over W
    re, im = x @ cos_w, -(x @ sin_w)
    cos_h, sin_h = _twiddles(h, h, h, x)  # (H, H), symmetric: full complex transform over H
    scale = (h * w) ** -0.5
    return (cos_h @ re + sin_h @ im) * scale, (cos_h @ im - sin_h @ re) * scale


def irfft2_matmul(re: torch.Tensor, im: torch.Tensor, size):
    """torch.fft.irfftn(re + i*im, s=size, dim=(-2, -1), norm="ortho") with matmuls only.

    As torch's c2r transform: the imaginary parts of the DC bin and (even W) of the Nyquist bin are ignored, and
    the bins that stand for a conjugate pair (1..W//2-1, or 1..(W-1)//2 for odd W) count twice."""
    h, w = size
    cos_h, sin_h = _twiddles(h, h, h, re)
    zr, zi = cos_h @ re - sin_h @ im, cos_h @ im + sin_h @ re  # inverse complex transform over H
    bins = w // 2 + 1
    cos_w, sin_w = _twiddles(bins, w, w, re)  # (W//2+1, W)
    k = torch.arange(bins, device=re.device)
    edge = (k == 0).to(re.dtype) + (2 * k == w).to(re.dtype)  # DC, and the Nyquist bin of an even W
    weight_cos = 2 - edge
    weight_sin = 2 - 2 * edge
    out = (zr * weight_cos) @ cos_w - (zi * weight_sin) @ sin_w
    return out * (h * w) ** -0.5


# --- the generator's layers (attribute names are the checkpoint's) ---------------------------------------------

class FourierUnit(nn.Module):
    def __init__(self, channels: int, spectral: str = "fft"):
        super().__init__()
        self.conv_layer = nn.Conv2d(channels * 2, channels * 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels * 2)
        self.relu = nn.ReLU(inplace=True)
        self.spectral = spectral

    def forward(self, x):
        size = x.shape[-2:]
        if self.spectral == "matmul":
            re, im = rfft2_matmul(x)
        else:
            spec = torch.fft.rfftn(x, dim=(-2, -1), norm="ortho")
            re, im = spec.real, spec.imag
        # channels interleave as (c0 real, c0 imag, c1 real, ...), which the checkpoint's 1x1 conv expects
        y = self.relu(self.bn(self.conv_layer(torch.stack((re, im), dim=2).flatten(1, 2))))
        y = y.unflatten(1, (-1, 2))
        re, im = y[:, :, 0], y[:, :, 1]
        if self.spectral == "matmul":
            return irfft2_matmul(re, im, size)
        return torch.fft.irfftn(torch.complex(re, im), s=size, dim=(-2, -1), norm="ortho")


class SpectralTransform(nn.Module):
    """The global-to-global path (stride 1, no local Fourier unit: big-lama has enable_lfu false)."""

    def __init__(self, in_channels: int, out_channels: int, spectral: str = "fft"):
        super().__init__()
        half = out_channels // 2
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, half, 1, bias=False), nn.BatchNorm2d(half),
                                   nn.ReLU(inplace=True))
        self.fu = FourierUnit(half, spectral)
        self.conv2 = nn.Conv2d(half, out_channels, 1, bias=False)

    def forward(self, x):
        x = self.conv1(x)
        return self.conv2(x + self.fu(x))


class FFC(nn.Module):
    """Local/global split convolution; a path whose input or output has no channels has no layer (no keys)."""

    def __init__(self, in_channels, out_channels, kernel_size, ratio_gin, ratio_gout, stride=1, padding=0,
                 spectral="fft"):
        super().__init__()
        in_g, out_g = int(in_channels * ratio_gin), int(out_channels * ratio_gout)
        in_l, out_l = in_channels - in_g, out_channels - out_g

        def conv(cin, cout):
            if cin == 0 or cout == 0:
                return None
            return nn.Conv2d(cin, cout, kernel_size, stride, padding, bias=False, padding_mode="reflect")

        self.convl2l, self.convl2g, self.convg2l = conv(in_l, out_l), conv(in_l, out_g), conv(in_g, out_l)
        self.convg2g = SpectralTransform(in_g, out_g, spectral) if in_g and out_g else None
        if stride != 1 and self.convg2g is not None:
            raise ValueError("a strided global-to-global path is not part of big-lama")
        self.out_l, self.out_g = out_l, out_g

    @staticmethod
    def _sum(*terms):
        terms = [t for t in terms if t is not None]
        return sum(terms[1:], terms[0]) if terms else None

    def forward(self, x_l, x_g):
        def run(layer, x):
            return layer(x) if layer is not None and x is not None else None

        out_l = self._sum(run(self.convl2l, x_l), run(self.convg2l, x_g)) if self.out_l else None
        out_g = self._sum(run(self.convl2g, x_l), run(self.convg2g, x_g)) if self.out_g else None
        return out_l, out_g


class FFCBnAct(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, ratio_gin, ratio_gout, stride=1, padding=0,
                 spectral="fft"):
        super().__init__()
        self.ffc = FFC(in_channels, out_channels, kernel_size, ratio_gin, ratio_gout, stride, padding, spectral)
        self.bn_l = nn.BatchNorm2d(self.ffc.out_l) if self.ffc.out_l else None
        self.bn_g = nn.BatchNorm2d(self.ffc.out_g) if self.ffc.out_g else None
        self.act = nn.ReLU(inplace=True)

    def forward(self, x_l, x_g=None):
        y_l, y_g = self.ffc(x_l, x_g)
        y_l = self.act(self.bn_l(y_l)) if y_l is not None else None
        y_g = self.act(self.bn_g(y_g)) if y_g is not None else None
        return y_l, y_g


class FFCResnetBlock(nn.Module):
    def __init__(self, dim, ratio, spectral="fft"):
        super().__init__()
        self.conv1 = FFCBnAct(dim, dim, 3, ratio, ratio, padding=1, spectral=spectral)
        self.conv2 = FFCBnAct(dim, dim, 3, ratio, ratio, padding=1, spectral=spectral)

    def forward(self, x_l, x_g):
        y_l, y_g = self.conv2(*self.conv1(x_l, x_g))
        return x_l + y_l, x_g + y_g


class _Concat(nn.Module):  # joins the local and global halves (a parameter-free slot of the official Sequential)
    def forward(self, x_l, x_g):
        return torch.cat((x_l, x_g), dim=1)


class LamaGenerator(nn.Module):
    """big-lama's generator with `self.model` numbered as the checkpoint's Sequential.

    big-lama: ngf 64, n_downsampling 3, n_blocks 18, ratio 0.75. Tests build tiny ones (ngf 8, 2 blocks) with the
    same key structure."""

    def __init__(self, ngf=64, n_downsampling=3, n_blocks=18, ratio=0.75, max_features=1024, spectral="fft",
                 input_nc=4, output_nc=3):
        super().__init__()
        feats = [min(max_features, ngf * 2 ** i) for i in range(n_downsampling + 1)]
        layers = [nn.ReflectionPad2d(3), FFCBnAct(input_nc, ngf, 7, 0, 0, spectral=spectral)]
        for i in range(n_downsampling):
            # only the last downsampling opens the global branch (ratio_gout = the blocks' ratio_gin)
            gout = ratio if i == n_downsampling - 1 else 0
            layers.append(FFCBnAct(feats[i], feats[i + 1], 3, 0, gout, stride=2, padding=1, spectral=spectral))
        layers += [FFCResnetBlock(feats[-1], ratio, spectral) for _ in range(n_blocks)]
        layers.append(_Concat())
        for i in range(n_downsampling, 0, -1):
            cin, cout = feats[i], min(max_features, ngf * 2 ** i // 2)
            layers += [nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1),
                       nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Sigmoid()]
        self.model = nn.Sequential(*layers)
        self.set_spectral(spectral)

    def set_spectral(self, mode: str) -> "LamaGenerator":
        if mode not in SPECTRAL_MODES:
            raise ValueError(f"spectral must be one of {SPECTRAL_MODES}, not {mode!r}")
        for m in self.modules():
            if isinstance(m, FourierUnit):
                m.spectral = mode
        self.spectral = mode
        return self

    def forward(self, x):
        """x: (B,4,H,W) = cat([image * (1 - mask), mask]); returns (B,3,H,W) in [0,1]."""
        x_l, x_g, y = x, None, None
        for layer in self.model:
            if isinstance(layer, (FFCBnAct, FFCResnetBlock)):
                x_l, x_g = layer(x_l, x_g)
            elif isinstance(layer, _Concat):
                y = layer(x_l, x_g)
            elif y is None:
                x_l = layer(x_l)  # the leading reflect pad
            else:
                y = layer(y)
        return y


# --- loading -------------------------------------------------------------------------------------------------

def _preview(keys, count=5):
    keys = sorted(keys)
    shown = ", ".join(keys[:count])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > count else ''})"


def strict_load(module: nn.Module, state_dict: Mapping, what: str, expected: str) -> nn.Module:
    """load_state_dict(strict) whose failure is a ValueError naming the missing, unexpected and misshapen keys."""
    own = module.state_dict()
    missing, unexpected = set(own) - set(state_dict), set(state_dict) - set(own)
    misshapen = [f"{k} {tuple(state_dict[k].shape)} != {tuple(own[k].shape)}"
                 for k in sorted(set(own) & set(state_dict)) if tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or misshapen:
        parts = []
        if missing:
            parts.append(f"missing keys: {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_preview(unexpected)}")
        if misshapen:
            more = "; ..." if len(misshapen) > 3 else ""
            parts.append(f"wrong shapes: {len(misshapen)} ({'; '.join(misshapen[:3])}{more})")
        raise ValueError(f"these weights do not fit {what}: {'; '.join(parts)}. Expected {expected}")
    module.load_state_dict(state_dict, strict=True)
    return module


def lama_generator_weights(state_dict: Mapping) -> dict:
    """The generator's `model.*` weights out of a Lightning checkpoint (whole, or its state_dict) or a plain dict."""
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]
    if any(k.startswith("generator.") for k in state_dict):  # discriminator, losses, evaluator: not ours
        return {k[len("generator."):]: v for k, v in state_dict.items() if k.startswith("generator.")}
    return dict(state_dict)


def load_lama_state_dict(module: LamaGenerator, state_dict: Mapping) -> LamaGenerator:
    return strict_load(module, lama_generator_weights(state_dict), "LaMa's generator", EXPECTED_LAMA)


def lama_layout(state_dict: Mapping) -> dict:
    """LamaGenerator's arguments read from a generator state dict (model.*): ngf from the first conv, the
    downsamplings and residual blocks counted, the global ratio from a block's split."""
    def has(i, part):
        return f"model.{i}.{part}.convl2l.weight" in state_dict

    if not has(1, "ffc"):
        raise ValueError(f"these weights do not fit LaMa's generator: missing keys: 1 (model.1.ffc.convl2l.weight). "
                         f"Expected {EXPECTED_LAMA}")
    downs = sum(1 for i in range(2, 64) if has(i, "ffc"))
    blocks = [i for i in range(2, 256) if has(i, "conv1.ffc")]
    layout = dict(ngf=int(state_dict["model.1.ffc.convl2l.weight"].shape[0]), n_downsampling=downs,
                  n_blocks=len(blocks))
    if blocks:
        local = int(state_dict[f"model.{blocks[0]}.conv1.ffc.convl2l.weight"].shape[1])
        glob = state_dict.get(f"model.{blocks[0]}.conv1.ffc.convg2l.weight")
        width = local + (int(glob.shape[1]) if glob is not None else 0)
        layout["ratio"] = 1 - local / width
        if width < layout["ngf"] * 2 ** downs:
            layout["max_features"] = width
    return layout


def lama_from_state_dict(state_dict: Mapping) -> LamaGenerator:
    """A LamaGenerator shaped as the checkpoint, its weights loaded strictly, in eval mode."""
    weights = lama_generator_weights(state_dict)
    return load_lama_state_dict(LamaGenerator(**lama_layout(weights)), weights).eval()


# --- export --------------------------------------------------------------------------------------------------

class LamaGraph(nn.Module):
    """What the engine directory stores: image (B,3,H,W) in [0,1] and mask (B,1,H,W), 1 = hole, -> the generator's
    (B,3,H,W) in [0,1]. Traced, the Fourier units take the matmul path; run in torch, torch's FFT: the export's
    parity check then compares the stored graph with the reference maths, not with itself."""

    def __init__(self, generator: LamaGenerator):
        super().__init__()
        self.generator = generator

    def forward(self, image, mask):
        self.generator.set_spectral("matmul" if torch.jit.is_tracing() else "fft")
        return self.generator(torch.cat([image * (1 - mask), mask], dim=1))


def dft_ops(model) -> list[str]:
    """The DFT / STFT nodes of an onnx.ModelProto, subgraphs and functions included."""
    found = []

    def walk(graph):
        for node in graph.node:
            if node.op_type in ("DFT", "STFT"):
                found.append(node.op_type)
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    walk(sub)

    walk(model.graph)
    for function in model.functions:
        walk(function)
    return found


def export_lama_onnx(module: LamaGenerator, path, opset: int = OPSET, trace_size=(64, 96)) -> Path:
    """Write the generator as ONNX (inputs image, mask; output output; batch, height, width dynamic)."""
    import onnx

    path = Path(path)
    h, w = trace_size  # distinct H and W: a mixed-up axis would show at the parity check
    image, mask = torch.rand(1, 3, h, w), (torch.rand(1, 1, h, w) > 0.5).float()
    axes = {0: "batch", 2: "height", 3: "width"}
    was_training, before = module.training, module.spectral
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow on shapes
        torch.onnx.export(LamaGraph(module.eval()), (image, mask), str(path), input_names=["image", "mask"],
                          output_names=["output"], dynamic_axes={"image": axes, "mask": axes, "output": axes},
                          opset_version=opset, dynamo=False, do_constant_folding=True)
    module.train(was_training).set_spectral(before)
    bad = dft_ops(onnx.load(str(path)))
    if bad:
        raise RuntimeError(f"the LaMa graph at {path} holds {sorted(set(bad))} ops; the matmul path should avoid them")
    return path
