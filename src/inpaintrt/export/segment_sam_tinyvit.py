"""MobileSAM's TinyViT image encoder (ChaoningZhang/MobileSAM, mobile_sam/modeling/tiny_vit_sam.py) in torch.

Keys under `image_encoder.`: `patch_embed.seq.{0,2}.{c,bn}` (conv + BatchNorm pairs), `layers.0.blocks.N.conv{1,2,3}`
(MBConv), `layers.{0,1,2}.downsample.conv{1,2,3}` (patch merging), `layers.{1,2,3}.blocks.N.attn.{norm,qkv,proj,
attention_biases}`, `...mlp.{norm,fc1,fc2}`, `...local_conv`, `norm_head`, `head` (an unused ImageNet classifier the
checkpoint carries), `neck.{0,1,2,3}`. `attn.attention_bias_idxs` is derived (not saved by the current code); a
checkpoint that has it is accepted when it equals ours (see `drop_derived_keys`).

Resolutions: patch embedding /4, then stages at S/4, S/8, S/16, S/16: MobileSAM's last patch merging keeps the
resolution (its code keys the stride on the output width, 320, which is its last stage).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .segment_sam_decoder import sam_neck


class ConvBN(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1):
        super().__init__()
        self.c = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn(self.c(x))


class TinyPatchEmbed(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.seq = nn.Sequential(ConvBN(3, dim // 2, 3, 2), nn.GELU(), ConvBN(dim // 2, dim, 3, 2))

    def forward(self, x):
        return self.seq(x)


class MBConv(nn.Module):
    def __init__(self, dim: int, expand: float):
        super().__init__()
        hidden = int(dim * expand)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)

    def forward(self, x):
        y = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return F.gelu(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """NCHW or tokens at `side` -> tokens (B, L', out)."""

    def __init__(self, side: int, dim: int, out: int, stride: int):
        super().__init__()
        self.side = side
        self.conv1 = ConvBN(dim, out)
        self.conv2 = ConvBN(out, out, 3, stride, groups=out)
        self.conv3 = ConvBN(out, out)

    def forward(self, x):
        if x.ndim == 3:
            x = x.transpose(1, 2).reshape(x.shape[0], -1, self.side, self.side)
        x = self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))
        return x.flatten(2).transpose(1, 2)


def bias_index(window: int) -> torch.Tensor:
    """(w*w, w*w): TinyViT numbers the offsets (|dy|, |dx|) in the order they first appear scanning the window
    row by row from (0, 0), which is |dy| * w + |dx|."""
    y, x = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    y, x = y.flatten(), x.flatten()
    return (y[:, None] - y[None, :]).abs() * window + (x[:, None] - x[None, :]).abs()


class TinyAttention(nn.Module):
    """Window attention with a learned bias per head and offset; qkv is laid out per head as [q | k | v]."""

    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(heads, window * window))
        self.register_buffer("attention_bias_idxs", bias_index(window), persistent=False)

    def forward(self, x):
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, n, self.heads, 3 * self.head_dim).transpose(1, 2)
        q, k, v = qkv.split(self.head_dim, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.head_dim ** -0.5 + self.attention_biases[:, self.attention_bias_idxs]
        out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, -1)
        return self.proj(out)


class TinyMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    def __init__(self, dim: int, side: int, heads: int, window: int, mlp_ratio: float, local_conv: int):
        super().__init__()
        self.side, self.window = side, window
        self.attn = TinyAttention(dim, heads, window)
        self.mlp = TinyMlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, local_conv, groups=dim)

    def forward(self, x):
        b, n, c = x.shape
        s, w = self.side, self.window
        pad = (w - s % w) % w
        grid = F.pad(x.reshape(b, s, s, c), (0, 0, 0, pad, 0, pad))  # zeros, normalised inside the attention
        k = (s + pad) // w
        windows = grid.reshape(b, k, w, k, w, c).transpose(2, 3).reshape(b * k * k, w * w, c)
        y = self.attn(windows).reshape(b, k, k, w, w, c).transpose(2, 3).reshape(b, k * w, k * w, c)
        x = x + y[:, :s, :s].reshape(b, n, c)
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, s, s)).reshape(b, c, n).transpose(1, 2)
        return x + self.mlp(x)


class Stage(nn.Module):
    def __init__(self, blocks, downsample):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """(B,3,S,S) normalised and padded -> (B, out, S/16, S/16). Four stages: MBConv, then three of attention."""

    def __init__(self, img_size: int = 1024, embed_dims=(64, 128, 160, 320), depths=(2, 2, 6, 2),
                 num_heads=(2, 4, 5, 10), window_sizes=(7, 7, 14, 7), mlp_ratio: float = 4.0,
                 mbconv_expand_ratio: float = 4.0, local_conv_size: int = 3, num_classes: int = 1000,
                 out_chans: int = 256):
        super().__init__()
        if img_size % 16 or len(embed_dims) != 4 or len(depths) != 4:
            raise ValueError(f"TinyViT here is 4 stages on an image a multiple of 16 (got {img_size}, {embed_dims})")
        self.img_size = img_size
        sides = [img_size // 4, img_size // 8, img_size // 16, img_size // 16]
        strides = [2, 2, 1]
        self.patch_embed = TinyPatchEmbed(embed_dims[0])
        layers = []
        for i, (dim, depth) in enumerate(zip(embed_dims, depths)):
            down = PatchMerging(sides[i], dim, embed_dims[i + 1], strides[i]) if i < 3 else None
            if i == 0:
                blocks = [MBConv(dim, mbconv_expand_ratio) for _ in range(depth)]
            else:
                blocks = [TinyViTBlock(dim, sides[i], num_heads[i], window_sizes[i], mlp_ratio, local_conv_size)
                          for _ in range(depth)]
            layers.append(Stage(blocks, down))
        self.layers = nn.ModuleList(layers)
        self.norm_head = nn.LayerNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes)
        self.neck = sam_neck(embed_dims[-1], out_chans)

    def forward(self, x):
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        side = self.img_size // 16
        return self.neck(x.transpose(1, 2).reshape(x.shape[0], -1, side, side))


def drop_derived_keys(module: TinyViT, state_dict: dict, prefix: str = "image_encoder.") -> dict:
    """Without the `attention_bias_idxs` buffers an older TinyViT saved; one that differs from ours is kept, so
    strict loading names it."""
    own = {f"{prefix}{k}": v for k, v in module.named_buffers() if k.endswith("attention_bias_idxs")}
    return {k: v for k, v in state_dict.items()
            if not (k in own and tuple(v.shape) == tuple(own[k].shape) and torch.equal(v.long(), own[k]))}
