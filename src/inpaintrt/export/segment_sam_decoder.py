"""Segment Anything's prompt encoder and mask decoder (facebookresearch/segment-anything, modeling/prompt_encoder.py,
mask_decoder.py, transformer.py) in torch, shared by SAM ViT-B/L/H and MobileSAM.

Attribute names are the checkpoint's, under `prompt_encoder.` and `mask_decoder.`: `pe_layer.positional_encoding_
gaussian_matrix`, `point_embeddings.{0..3}.weight` (negative, positive, box corner 1, box corner 2),
`not_a_point_embed.weight`, `mask_downscaling.{0,1,3,4,6}.*`, `no_mask_embed.weight`; `transformer.layers.N.
{self_attn,cross_attn_token_to_image,cross_attn_image_to_token}.{q,k,v,out}_proj.*`, `norm1..4`, `mlp.lin1/lin2`,
`transformer.final_attn_token_to_image.*`, `transformer.norm_final_attn.*`, `iou_token`, `mask_tokens`,
`output_upscaling.{0,1,3}.*`, `output_hypernetworks_mlps.N.layers.{0,1,2}.*`, `iou_prediction_head.layers.{0,1,2}.*`.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an NCHW tensor (SAM's, eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight[:, None, None] + self.bias[:, None, None]


class MLPBlock(nn.Module):
    def __init__(self, dim: int, hidden: int, act=nn.GELU):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.act = act()

    def forward(self, x):
        return self.lin2(self.act(self.lin1(x)))


def sam_neck(cin: int, cout: int) -> nn.Sequential:
    """The encoders' common output head: 1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d (`neck.{0,1,2,3}`)."""
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), LayerNorm2d(cout),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), LayerNorm2d(cout))


# --- prompt encoder ------------------------------------------------------------------------------------------

class RandomFourierPE(nn.Module):
    """Positional encoding by a fixed random (2, C/2) projection of coordinates in [0,1]: [sin, cos]."""

    def __init__(self, half_dim: int):
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, half_dim))

    def encode(self, unit_xy):
        angles = (2 * unit_xy - 1) @ self.positional_encoding_gaussian_matrix * (2 * math.pi)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)

    def grid(self, h: int, w: int):
        """(C, h, w): the encoding of every embedding cell's centre."""
        ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
        xy = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1)
        table = self.positional_encoding_gaussian_matrix
        return self.encode(xy.to(table.device, table.dtype)).permute(2, 0, 1)


class PromptEncoder(nn.Module):
    def __init__(self, embed_dim: int, embedding_size: int, image_size: int, mask_in_chans: int):
        super().__init__()
        self.embed_dim, self.embedding_size, self.image_size = embed_dim, embedding_size, image_size
        self.pe_layer = RandomFourierPE(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, 2, stride=2), LayerNorm2d(mask_in_chans // 4), nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, 2, stride=2), LayerNorm2d(mask_in_chans), nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, 1))
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    @property
    def mask_input_size(self) -> int:
        return 4 * self.embedding_size

    def dense_pe(self):
        return self.pe_layer.grid(self.embedding_size, self.embedding_size)[None]

    def _point_pe(self, coords):
        # +0.5: SAM encodes a pixel's centre; the image frame is square (image_size on both sides)
        return self.pe_layer.encode((coords + 0.5) / self.image_size)

    def embed_labelled(self, coords, labels):
        """SAM's ONNX form: every token is a point with a float label, -1 = padding (no position), 0 negative,
        1 positive, 2 / 3 the box's top-left / bottom-right corner; any other label adds no learned embedding."""
        labels = labels.unsqueeze(-1)
        pad = (labels == -1).to(coords.dtype)
        out = self._point_pe(coords) * (1 - pad) + self.not_a_point_embed.weight * pad
        for i, table in enumerate(self.point_embeddings):
            out = out + table.weight * (labels == i).to(coords.dtype)
        return out

    def forward(self, points=None, boxes=None, masks=None):
        """SamPredictor's path: (sparse (B,T,C), dense (B,C,E,E)). Points without a box get one padding token."""
        batch = (points[0] if points is not None else boxes if boxes is not None else
                 masks if masks is not None else torch.zeros(1)).shape[0]
        sparse = [torch.zeros(batch, 0, self.embed_dim, device=self.no_mask_embed.weight.device)]
        if points is not None:
            coords, labels = points
            labels = labels.unsqueeze(-1)
            tokens = torch.where(labels == -1, self.not_a_point_embed.weight, self._point_pe(coords))
            for i in (0, 1):  # the predictor's points are negative or positive; other labels add nothing
                tokens = torch.where(labels == i, tokens + self.point_embeddings[i].weight, tokens)
            sparse.append(tokens)
            if boxes is None:
                sparse.append(self.not_a_point_embed.weight.expand(batch, 1, -1))
        if boxes is not None:
            corners = self._point_pe(boxes.reshape(-1, 2, 2))
            sparse.append(corners + torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight]))
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            e = self.embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, e, e)
        return torch.cat(sparse, dim=1), dense


# --- two-way transformer -------------------------------------------------------------------------------------

class Attention(nn.Module):
    """Multi-head attention whose projections may narrow the width (`downsample`), as SAM's decoder does."""

    def __init__(self, dim: int, heads: int, downsample: int = 1):
        super().__init__()
        inner = dim // downsample
        if inner % heads:
            raise ValueError(f"{heads} heads do not divide the attention width {inner}")
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, inner) for _ in range(3))
        self.out_proj = nn.Linear(inner, dim)

    def _split(self, x):
        b, n, c = x.shape
        return x.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, q, k, v):
        q, k, v = self._split(self.q_proj(q)), self._split(self.k_proj(k)), self._split(self.v_proj(v))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        out = (weights @ v).transpose(1, 2)
        return self.out_proj(out.reshape(out.shape[0], out.shape[1], -1))


class TwoWayBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int, skip_first_pe: bool):
        super().__init__()
        self.self_attn = Attention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, heads, 2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, heads, 2)
        self.skip_first_pe = skip_first_pe

    def forward(self, queries, keys, query_pe, key_pe):
        if self.skip_first_pe:  # the first block replaces the tokens by their self-attention (no residual)
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, keys + key_pe, keys))
        queries = self.norm3(queries + self.mlp(queries))
        keys = self.norm4(keys + self.cross_attn_image_to_token(keys + key_pe, queries + query_pe, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(self, depth: int, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.layers = nn.ModuleList(TwoWayBlock(dim, heads, mlp_dim, i == 0) for i in range(depth))
        self.final_attn_token_to_image = Attention(dim, heads, 2)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image, image_pe, tokens):
        keys = image.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        queries = queries + self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys)
        return self.norm_final_attn(queries), keys


# --- mask decoder --------------------------------------------------------------------------------------------

class MLP(nn.Module):
    def __init__(self, cin: int, hidden: int, cout: int, depth: int):
        super().__init__()
        widths = [cin] + [hidden] * (depth - 1) + [cout]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskDecoder(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int, iou_hidden: int, num_multimask: int = 3):
        super().__init__()
        self.num_mask_tokens = num_multimask + 1  # token 0: the single-mask answer; 1..: the multimask ones
        self.transformer = TwoWayTransformer(depth, dim, heads, mlp_dim)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, 2, stride=2), LayerNorm2d(dim // 4), nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, 2, stride=2), nn.GELU())
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(dim, iou_hidden, self.num_mask_tokens, 3)

    def predict_all(self, image_embeddings, image_pe, sparse, dense):
        """Every mask token's low-resolution logits (B, 4, 4E, 4E) and predicted IoU (B, 4)."""
        batch = sparse.shape[0]
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight]).unsqueeze(0)
        tokens = torch.cat([out_tokens.expand(batch, -1, -1), sparse], dim=1)
        src = torch.repeat_interleave(image_embeddings, batch, dim=0) + dense
        pos = torch.repeat_interleave(image_pe, batch, dim=0)
        b, c, h, w = src.shape
        hs, src = self.transformer(src, pos, tokens)
        up = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = torch.stack([mlp(hs[:, 1 + i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        b, c, h, w = up.shape
        masks = (hyper @ up.reshape(b, c, h * w)).reshape(b, -1, h, w)
        return masks, self.iou_prediction_head(hs[:, 0])

    def forward(self, image_embeddings, image_pe, sparse, dense, multimask_output: bool):
        masks, iou = self.predict_all(image_embeddings, image_pe, sparse, dense)
        keep = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, keep], iou[:, keep]
