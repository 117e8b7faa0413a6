"""SAM's ViT image encoder (facebookresearch/segment-anything, modeling/image_encoder.py: a ViTDet backbone) in torch.

Keys under `image_encoder.`: `patch_embed.proj.{weight,bias}`, `pos_embed` (1, S/p, S/p, D), `blocks.N.norm1`,
`blocks.N.attn.qkv`, `blocks.N.attn.proj`, `blocks.N.attn.rel_pos_{h,w}` ((2 * side - 1, D / heads), side = the
window for windowed blocks, S/p for global ones), `blocks.N.norm2`, `blocks.N.mlp.lin{1,2}`, `neck.{0,1,2,3}`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .segment_sam_decoder import MLPBlock, sam_neck


def _relative_index(size: int) -> torch.Tensor:
    """(size, size) indexes into a (2*size-1, C) table: query i, key j -> i - j + size - 1."""
    r = torch.arange(size)
    return r[:, None] - r[None, :] + (size - 1)


class ViTAttention(nn.Module):
    """Global attention over a (side x side) grid with SAM's decomposed relative position terms."""

    def __init__(self, dim: int, heads: int, side: int):
        super().__init__()
        self.heads, self.side = heads, side
        head_dim = dim // heads
        self.scale = head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * side - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * side - 1, head_dim))

    def forward(self, x):
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.heads, h * w, -1).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        index = _relative_index(self.side).to(q.device)
        table_h, table_w = self.rel_pos_h[index], self.rel_pos_w[index]  # (side, side, C)
        grid = q.reshape(b * self.heads, h, w, -1)
        # the relative terms use the unscaled query, as in SAM (MViTv2's decomposition)
        by_row = torch.einsum("nyxc,ykc->nyxk", grid, table_h)
        by_col = torch.einsum("nyxc,xkc->nyxk", grid, table_w)
        attn = (attn.reshape(-1, h, w, h, w) + by_row[..., :, None] + by_col[..., None, :]).reshape(-1, h * w, h * w)
        out = attn.softmax(dim=-1) @ v
        out = out.reshape(b, self.heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        return self.proj(out)


def _to_windows(x, size: int):
    """(B,H,W,C) -> (B*nh*nw, size, size, C), zero-padded at the bottom / right to whole windows."""
    b, h, w, c = x.shape
    # no negative operands: traced, // and % become ONNX Div / Mod, which truncate toward zero
    ph, pw = (size - h % size) % size, (size - w % size) % size
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    nh, nw = (h + ph) // size, (w + pw) // size
    return x.reshape(b, nh, size, nw, size, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, size, size, c)


def _from_windows(windows, size: int, h: int, w: int):
    nh, nw = (h + size - 1) // size, (w + size - 1) // size
    c = windows.shape[-1]
    x = windows.reshape(-1, nh, nw, size, size, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, nh * size, nw * size, c)
    return x[:, :h, :w]


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, grid: int, window: int, mlp_ratio: float):
        super().__init__()
        self.window = window  # 0 = global attention over the whole grid
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ViTAttention(dim, heads, window or grid)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))

    def forward(self, x):
        y = self.norm1(x)
        if self.window:
            h, w = y.shape[1], y.shape[2]
            y = _from_windows(self.attn(_to_windows(y, self.window)), self.window, h, w)
        else:
            y = self.attn(y)
        x = x + y
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x):
        return self.proj(x).permute(0, 2, 3, 1)


class ImageEncoderViT(nn.Module):
    """(B,3,S,S) normalised and padded -> (B, out, S/p, S/p)."""

    def __init__(self, img_size: int = 1024, patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, global_attn_indexes=(2, 5, 8, 11), window_size: int = 14,
                 mlp_ratio: float = 4.0, out_chans: int = 256):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"the image size {img_size} is not a multiple of the patch size {patch_size}")
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            ViTBlock(embed_dim, num_heads, grid, 0 if i in global_attn_indexes else window_size, mlp_ratio)
            for i in range(depth))
        self.neck = sam_neck(embed_dim, out_chans)

    def forward(self, x):
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
